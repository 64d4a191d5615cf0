"""Every feature works with every output structure, and keeps integer and boolean tensors.

A submodule returns its activation as a tensor, inside a tuple, list, dict,
``ModelOutput`` or dataclass, next to ``None``, strings, numbers and a boolean mask.
Each feature (hooks that keep or replace, run_with_cache, capture with its options,
leaf sites, run_until, describe_sites, trace, memory_profile, find_nonfinite, backward
hooks) must see the activation, leave the rest of the structure as it was, and keep
integer and boolean tensors in their dtype. And every name that is not a site is an
error wherever a name is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
from battery import torch_hook_count
from torch import nn
from transformers.utils import ModelOutput
from witness import first_tensor, witness

from auto_hookpoint import (
    UnknownHookNameError,
    auto_hook,
    capture,
    describe_sites,
    find_nonfinite,
    memory_profile,
    trace,
)
from auto_hookpoint.site_report import SiteStatus


@dataclass
class Plain:
    label: str
    missing: Any
    hidden: torch.Tensor
    mask: torch.Tensor


@dataclass
class Out(ModelOutput):
    loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class Pair(NamedTuple):
    hidden: torch.Tensor
    mask: torch.Tensor


# name: (build the output from (hidden, mask), leaf path of the mask)
STRUCTURES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], Any], str | None]] = {
    "tensor": (lambda h, m: h, None),
    "tuple": (lambda h, m: (None, h, 3, m), "3"),
    "namedtuple": (lambda h, m: Pair(h, m), "1"),
    "list": (lambda h, m: [h, "text", m], "2"),
    "dict": (lambda h, m: {"note": "x", "none": None, "hidden": h, "mask": m}, "mask"),
    "model_output": (lambda h, m: Out(hidden=h, mask=m), "mask"),
    "dataclass": (lambda h, m: Plain("x", None, h, m), "mask"),
}


class Producer(nn.Module):
    def __init__(self, structure: str) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.build = STRUCTURES[structure][0]
        self.poison = False

    def forward(self, x: torch.Tensor) -> Any:
        h = self.lin(x)
        if self.poison:
            h = h * torch.tensor(math.nan)
        return self.build(h, h > 0)


class Model(nn.Module):
    def __init__(self, structure: str) -> None:
        super().__init__()
        self.producer = Producer(structure)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.producer(x)
        hidden = first_tensor(out)
        mask = [t for t in _tensors(out) if t.dtype == torch.bool]
        assert hidden is not None
        return self.head(hidden) * (mask[0].float().mean() if mask else 1.0)


def _members(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (tuple, list)):
        return list(value)
    if isinstance(value, Plain):
        return list(vars(value).values())
    return [value]


def _tensors(value: Any) -> list[torch.Tensor]:
    from auto_hookpoint.core.structure import tensors_with_paths

    return [t for _, t in tensors_with_paths(value)]


SITE = "producer.hook_point"


def build(structure: str, **options: Any) -> tuple[Any, torch.Tensor, Any]:
    torch.manual_seed(0)
    plain = Model(structure)
    x = torch.randn(2, 5, 8)
    import copy

    seen = witness(copy.deepcopy(plain), x)
    return auto_hook(plain, **options), x, seen


@pytest.mark.parametrize("structure", STRUCTURES)
def test_hooks_keep_or_replace_the_activation_and_nothing_else(structure: str) -> None:
    model, x, seen = build(structure)
    hidden = seen.values["producer"][0]
    assert torch.equal(model(x), seen.output)
    kept = model.run_with_hooks(x, fwd_hooks=[(lambda n: True, lambda t, hook: t)])
    assert torch.equal(kept, seen.output)
    outputs: list[Any] = []
    heads: list[torch.Tensor] = []
    with model.hooks(fwd_hooks=[(SITE, lambda t, hook: t * 2)]):
        # Plain torch hooks placed after ours: what the model got back from the producer.
        handles = [
            model.producer.register_forward_hook(lambda m, a, out: outputs.append(out)),
            model.head.register_forward_pre_hook(lambda m, args: heads.append(args[0])),
        ]
        doubled = model(x)
    for handle in handles:
        handle.remove()
    (out,), (into_head,) = outputs, heads
    assert torch.equal(into_head, hidden * 2)
    rebuilt = STRUCTURES[structure][0](hidden * 2, hidden > 0)
    assert type(out) is type(rebuilt)
    assert [type(v) for v in _members(out)] == [type(v) for v in _members(rebuilt)]
    masks = [t for t in _tensors(out) if t.dtype == torch.bool]
    assert all(torch.equal(m, hidden > 0) for m in masks)  # untouched
    assert not torch.equal(doubled, seen.output)
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("structure", STRUCTURES)
def test_caching_capturing_banking_and_describing_see_the_activation(structure: str) -> None:
    model, x, seen = build(structure, leaves=True)
    hidden = seen.values["producer"][0]
    leaf = STRUCTURES[structure][1]
    mask_site = f"{SITE}.{leaf}" if leaf else None
    _, cache = model.run_with_cache(x, names_filter=[SITE, *([mask_site] if mask_site else [])])
    assert torch.equal(cache[SITE], hidden)
    names = [SITE, *([mask_site] if mask_site else [])]
    with capture(model, names, dtype=torch.float16, positions=slice(1, 3)) as acts:
        model(x)
    assert torch.equal(acts[SITE], hidden[:, 1:3].half())
    if mask_site:
        assert cache[mask_site].dtype == acts[mask_site].dtype == torch.bool
        assert torch.equal(acts[mask_site], (hidden > 0)[:, 1:3])
    early = model.run_until(SITE, x)
    assert torch.equal(early.activation, hidden)
    (record,) = [r for r in describe_sites(model, x) if r.name == SITE]
    assert record.status is SiteStatus.FIRED and record.shape == (2, 5, 8)
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("structure", STRUCTURES)
def test_observers_see_every_tensor_of_the_structure(structure: str) -> None:
    model, x, _ = build(structure)
    with trace(model, names=[SITE]) as tr:
        model(x)
    assert tr.events[0].outputs[0] == "float32[2, 5, 8]"
    with memory_profile(model, names=[SITE]) as mem:
        model(x)
    masks = 2 * 5 * 8 if STRUCTURES[structure][1] else 0  # one byte per bool
    assert mem.records[0].output_bytes == 2 * 5 * 8 * 4 + masks
    model.producer.poison = True
    with find_nonfinite(model) as found:
        model(x)
    assert found.first is not None and found.first.module == "producer"
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("structure", STRUCTURES)
def test_backward_hooks_see_the_activations_gradient(structure: str) -> None:
    model, x, _ = build(structure)
    grads: list[torch.Tensor] = []
    with model.hooks(bwd_hooks=[(SITE, lambda g, hook: grads.append(g))]):
        model(x).sum().backward()
    assert len(grads) == 1 and grads[0].shape == (2, 5, 8)
    assert torch_hook_count(model) == 0


class Tokens(nn.Module):
    """Returns integer ids first: the site's tensor is an integer tensor."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.argmax(-1), x


class NoTensor(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"rows": x.shape[0], "none": None}


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.count = Tokens(), NoTensor()
        self.embed = nn.Embedding(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, _ = self.tokens(x)
        return self.embed(ids) * self.count(x)["rows"]


def test_integer_sites_and_sites_without_a_tensor_work_with_every_feature() -> None:
    torch.manual_seed(0)
    model = auto_hook(Mixed())
    x = torch.randn(2, 5, 8)
    ids = x.argmax(-1)
    _, cache = model.run_with_cache(x, device="cpu")
    assert cache["tokens.hook_point"].dtype == torch.int64 and "count.hook_point" not in cache
    with capture(model, ["tokens.hook_point", "count.hook_point"], dtype=torch.float16) as acts:
        model(x)
    assert acts["tokens.hook_point"].dtype == torch.int64 and "count.hook_point" not in acts
    assert torch.equal(acts["tokens.hook_point"], ids)
    shifted = model.run_with_hooks(x, fwd_hooks=[("tokens.hook_point", lambda t, hook: t.flip(-1))])
    assert torch.equal(shifted, model.embed(ids.flip(-1)) * 2)
    with find_nonfinite(model) as found, trace(model), memory_profile(model):
        model(x)
    assert found.first is None
    statuses = {r.name: r.status for r in describe_sites(model, x)}
    assert statuses["count.hook_point"] is SiteStatus.NO_TENSOR
    assert torch_hook_count(model) == 0


BAD = "producer.hook_pont"


def _entry_points(model: Any, x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    hook = lambda t, hook: None  # noqa: E731
    return {
        "run_with_hooks fwd": lambda: model.run_with_hooks(x, fwd_hooks=[(BAD, hook)]),
        "run_with_hooks bwd": lambda: model.run_with_hooks(x, bwd_hooks=[(BAD, hook)]),
        "hooks": lambda: model.hooks(fwd_hooks=[(BAD, hook)]).__enter__(),
        "add_hook": lambda: model.add_hook(BAD, hook),
        "add_perma_hook": lambda: model.add_perma_hook(BAD, hook),
        "hook_dict": lambda: model.hook_dict[BAD],
        "mod_dict": lambda: model.mod_dict[BAD],
        "run_with_cache str": lambda: model.run_with_cache(x, names_filter=BAD),
        "run_with_cache list": lambda: model.run_with_cache(x, names_filter=[SITE, BAD]),
        "run_with_cache incl_bwd": lambda: model.run_with_cache(x, names_filter=BAD, incl_bwd=True),
        "add_caching_hooks": lambda: model.add_caching_hooks(names_filter=[BAD]),
        "capture name": lambda: capture(model, BAD).__enter__(),
        "capture glob": lambda: capture(model, "producer.*.nothing").__enter__(),
        "run_until site": lambda: model.run_until(BAD, x),
        "run_until bank": lambda: model.run_until(SITE, x, bank=[BAD]),
        "resume_from": lambda: model.resume_from(BAD, torch.zeros(2, 5, 8), x),
        "trace": lambda: trace(model, names=[BAD]).__enter__(),
        "memory_profile": lambda: memory_profile(model, names=[BAD]).__enter__(),
        "find_nonfinite": lambda: find_nonfinite(model, names=[BAD]).__enter__(),
    }


def test_every_name_that_is_not_a_site_is_an_error_wherever_a_name_is_accepted() -> None:
    model, x, _ = build("tuple")
    entry_points = _entry_points(model, x)
    for where, call in entry_points.items():
        with pytest.raises(UnknownHookNameError) as raised:
            call()
        message = str(raised.value)
        assert repr(BAD) in message or "producer.*.nothing" in message, where
        assert "producer.hook_point" in message, f"{where}: no closest name in {message}"
        assert torch_hook_count(model) == 0, where
        assert not model.hook_dict[SITE].fwd_hooks, where
    assert len(entry_points) == 19  # (one name instead of a list: test_bad_input's row)
