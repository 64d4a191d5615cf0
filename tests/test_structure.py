"""The primary tensor of any output structure, and putting a replacement back."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, namedtuple

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from auto_hookpoint.core.structure import find_primary, get_at, replace_at

A, B, C = torch.ones(1), torch.ones(2), torch.ones(3)
Pair = namedtuple("Pair", "first second")


@dataclasses.dataclass(frozen=True)
class Frozen:
    note: str
    value: torch.Tensor
    other: torch.Tensor


CASES = [
    (A, ()),
    ((None, A, B), (1,)),
    ([1, [B, A]], (1, 0)),
    ({"n": 3, "x": A}, ("x",)),
    (OrderedDict(a=B), ("a",)),
    (Pair(None, A), (1,)),
    (Frozen("n", A, B), ("value",)),
    (((A, B), C), (0, 0)),
    (CausalLMOutputWithPast(logits=A), ("logits",)),
    (CausalLMOutputWithPast(loss=C, logits=A), ("loss",)),
]


@pytest.mark.parametrize(("output", "path"), CASES)
def test_primary_tensor_is_found_and_replaced_in_the_same_structure(
    output: object, path: tuple
) -> None:
    assert find_primary(output) == path
    new = torch.zeros(7)
    replaced = replace_at(output, path, new)
    assert type(replaced) is type(output)
    assert get_at(replaced, path) is new


@pytest.mark.parametrize(
    "output", [None, 3, "text", (), [1, 2], {"a": None}, Frozen("n", None, None)]
)  # type: ignore[arg-type]
def test_outputs_without_tensors_have_no_primary(output: object) -> None:
    assert find_primary(output) is None


def test_replace_leaves_everything_else_untouched_and_the_input_unchanged() -> None:
    cache = object()
    output = (A, cache, [B])
    replaced = replace_at(output, (0,), C)
    assert replaced[0] is C and replaced[1] is cache and replaced[2] is output[2]
    assert output[0] is A  # tuples are rebuilt, not mutated
    d = {"x": A, "y": B}
    assert replace_at(d, ("x",), C)["x"] is C and d["x"] is A


def test_model_output_replacement_keeps_item_and_attribute_views_in_step() -> None:
    out = BaseModelOutputWithPast(last_hidden_state=A)
    replaced = replace_at(out, ("last_hidden_state",), C)
    assert (
        replaced.last_hidden_state is C and replaced["last_hidden_state"] is C and replaced[0] is C
    )
