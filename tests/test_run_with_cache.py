"""run_with_cache stores exactly what TransformerLens' own implementation stores."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from torch import nn
from transformer_lens import HookedRootModule

from auto_hookpoint import UnknownHookNameError, auto_hook


def llama() -> nn.Module:
    torch.manual_seed(0)
    return auto_hook(ARCHS["llama"].build().eval())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"names_filter": "model.layers.1.hook_point"},
        {"names_filter": ["model.layers.0.mlp.hook_point", "model.norm.weight.hook_point"]},
        {"names_filter": lambda n: n.endswith("proj.hook_point")},
        {"remove_batch_dim": True},
        {"pos_slice": 3},
        {"pos_slice": (1, 5)},
        {"device": "cpu"},
    ],
    ids=lambda o: ",".join(o) or "defaults",
)
def test_cache_equals_transformer_lens_own_run_with_cache(options: dict[str, Any]) -> None:
    model = llama()
    ids = ARCHS["llama"].inputs(batch=1)["input_ids"]
    out, ours = model.run_with_cache(ids, **options)
    their_out, theirs = HookedRootModule.run_with_cache(model, ids, **options)
    assert torch.equal(out.logits, their_out.logits)
    assert list(ours) == list(theirs)  # same names, in the order the sites fired
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
        assert not ours[name].requires_grad
    assert torch_hook_count(model) == 0


def test_unknown_names_in_a_filter_are_an_error_not_an_empty_cache() -> None:
    model = llama()
    ids = ARCHS["llama"].inputs()["input_ids"]
    with pytest.raises(UnknownHookNameError, match="model.layers.1.hook_point"):
        model.run_with_cache(ids, names_filter="model.layers.1.hookpoint")
    with pytest.raises(ValueError, match="names_filter must be"):
        model.run_with_cache(ids, names_filter=3)
    assert torch_hook_count(model) == 0


class ScalarLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).pow(2).sum()


def test_backward_caching_and_kept_hooks_take_transformer_lens_path() -> None:
    model = auto_hook(ScalarLoss())
    _, cache = model.run_with_cache(torch.randn(2, 4), incl_bwd=True)
    assert set(cache) == {"hook_point", "hook_point_grad", "lin.hook_point", "lin.hook_point_grad"}
    assert cache["lin.hook_point_grad"].shape == (2, 4)
    model.reset_hooks()

    _, kept = model.run_with_cache(
        torch.randn(2, 4), names_filter="lin.hook_point", reset_hooks_end=False
    )
    first = kept["lin.hook_point"]
    model(torch.randn(2, 4))  # the caching hook is still there, as in TransformerLens
    assert not torch.equal(kept["lin.hook_point"], first)
    model.reset_hooks()
    assert torch_hook_count(model) == 0


def test_cache_is_left_clean_when_the_forward_raises() -> None:
    model = llama()
    with pytest.raises(IndexError):
        model.run_with_cache(torch.tensor([[10_000]]))  # token id out of the vocabulary
    assert torch_hook_count(model) == 0
    _, cache = model.run_with_cache(
        ARCHS["llama"].inputs()["input_ids"], names_filter="model.norm.hook_point"
    )
    assert list(cache) == ["model.norm.hook_point"]
