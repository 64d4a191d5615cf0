"""find_nonfinite tells non-finite values a model is given on purpose (a -inf attention
mask, NaN marking missing data) from the ones a module produces."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import transformers as tf
from hf_models import VOCAB
from torch import nn

from auto_hookpoint import auto_hook, find_nonfinite

NEG_INF = float("-inf")


class Attention(nn.Module):
    """Scaled dot-product attention with an additive float mask."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(8) + mask
        return torch.softmax(scores, -1) @ self.v(x)


class MaskFromPadding(nn.Module):
    """Turns a boolean keep-mask into an additive one: 0 where kept, -inf elsewhere."""

    def forward(self, keep: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(keep.shape, dtype=torch.float32)
        return zeros.masked_fill(~keep, NEG_INF)[:, None, :]


class Classifier(nn.Module):
    """Attention, then a head that reads NaN-marked features through ``nan_to_num``."""

    def __init__(self) -> None:
        super().__init__()
        self.build_mask = MaskFromPadding()
        self.attn = Attention()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            mask = self.build_mask(mask)
        return self.head(self.attn(torch.nan_to_num(x), mask))


def _causal_mask(batch: int, seq: int) -> torch.Tensor:
    return torch.triu(torch.full((seq, seq), NEG_INF), 1)[None].repeat(batch, 1, 1)


def _fully_masked_row(mask: torch.Tensor) -> torch.Tensor:
    mask = mask.clone()
    mask[0, 2, :] = NEG_INF  # query 2 of sample 0 may attend to nothing: softmax gives NaN
    return mask


def _nan_marked(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[1, 0, :3] = float("nan")  # missing data, marked as NaN on purpose
    return x


X = torch.randn(2, 5, 8)
KEEP = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]) > 0
# name -> (the inputs, what find_nonfinite reports: (module, "NaN"/"Inf" produced) in order)
CASES: dict[str, tuple[Callable[[], tuple[torch.Tensor, torch.Tensor]], list[tuple[str, str]]]] = {
    "a -inf mask given, no fully masked row": (lambda: (X, _causal_mask(2, 5)), []),
    "a -inf mask given, a fully masked row": (
        lambda: (X, _fully_masked_row(_causal_mask(2, 5))),
        [("attn", "NaN")],
    ),
    "a -inf mask built inside, a fully masked row": (
        lambda: (X, torch.zeros(2, 5, dtype=torch.bool)),
        [("build_mask", "Inf"), ("attn", "NaN")],
    ),
    "NaN-marked inputs read safely, and a -inf mask": (
        lambda: (_nan_marked(X), _causal_mask(2, 5)),
        [],
    ),
    "NaN-marked inputs, and a mask built inside": (
        lambda: (_nan_marked(X), KEEP),
        [("build_mask", "Inf")],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_given_non_finite_values_are_not_blamed_on_the_modules_that_receive_them(
    case: str,
) -> None:
    inputs, expected = CASES[case]
    torch.manual_seed(0)
    model = auto_hook(Classifier())
    x, mask = inputs()
    with torch.no_grad(), find_nonfinite(model, backward=False) as found:
        out = model(x, mask)
    assert [(f.module, "NaN" if f.nan else "Inf") for f in found.findings] == expected
    assert bool(out.isnan().any()) == any(kind == "NaN" for _, kind in expected)


def test_the_producer_of_nan_is_named_although_the_given_mask_holds_inf() -> None:
    torch.manual_seed(0)
    model = auto_hook(Classifier())
    with torch.no_grad(), find_nonfinite(model) as found:
        model(X, _fully_masked_row(_causal_mask(2, 5)))
    assert found.first is not None
    assert str(found.first) == (
        "attn (Attention, call 1) produced 8 NaN and 0 Inf in its output (forward), "
        "from inputs that held 0 NaN and 23 Inf (but no NaN)"
    )  # the 8 features of the one fully masked query; 23 = the mask's -inf


def test_an_hf_model_given_a_4d_float_mask_with_a_fully_masked_row() -> None:
    """The reported bug: NaN in the logits, and find_nonfinite said nothing."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    model = auto_hook(tf.LlamaForCausalLM(config).eval())
    ids = torch.randint(0, VOCAB, (2, 6))
    mask = _fully_masked_row(_causal_mask(2, 6))[:, None]  # (batch, 1, query, key)
    with torch.no_grad(), find_nonfinite(model) as found:
        out = model(input_ids=ids, attention_mask=mask)
    assert out.logits.isnan().any()
    assert found.first is not None and found.first.module == "model.layers.0.self_attn"
    assert found.first.nan > 0 and found.first.input_inf > 0
