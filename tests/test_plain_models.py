"""Every kind of plain model is hooked completely and faithfully."""

from __future__ import annotations

import pytest
import torch
from battery import check_hooked_model
from plain_models import (
    AutoEncoder,
    LSTMTagger,
    Nested,
    SharedTwice,
    SmallCNN,
    WithHookPoint,
    WithNonTensorOutput,
    mlp,
)

from auto_hookpoint import auto_hook
from auto_hookpoint.site_report import SiteStatus, describe_sites

CASES = {
    "mlp": (mlp, {"input": torch.randn(4, 8)}, "0.hook_point", {}),
    "cnn": (SmallCNN, {"x": torch.randn(2, 3, 8, 8)}, "norm.hook_point", {}),
    "lstm": (LSTMTagger, {"tokens": torch.randint(0, 20, (2, 6))}, "lstm.hook_point", {}),
    "autoencoder": (AutoEncoder, {"x": torch.randn(4, 8)}, "W_enc.hook_point", {}),
    "nested": (Nested, {"x": torch.randn(3, 8)}, "blocks.1.attn.hook_point", {}),
    "shared_twice": (SharedTwice, {"x": torch.randn(3, 8)}, "shared.hook_point", {}),
    "hand_placed": (WithHookPoint, {"x": torch.randn(3, 8)}, "hook_mid", {}),
    "non_tensor": (
        WithNonTensorOutput,
        {"x": torch.randn(3, 8)},
        "lin.hook_point",
        {"count.hook_point": SiteStatus.NO_TENSOR},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_plain_model_is_hooked_faithfully(case: str) -> None:
    make, inputs, middle, not_fired = CASES[case]
    torch.manual_seed(0)
    check_hooked_model(make().eval(), inputs, middle, not_fired)


def test_site_names_follow_module_paths() -> None:
    model = auto_hook(Nested())
    assert list(model.hook_dict) == [
        "hook_point",
        "blocks.0.attn.hook_point",
        "blocks.0.mlp.0.hook_point",
        "blocks.0.mlp.1.hook_point",
        "blocks.0.mlp.2.hook_point",
        "blocks.1.attn.hook_point",
        "blocks.1.mlp.0.hook_point",
        "blocks.1.mlp.1.hook_point",
        "blocks.1.mlp.2.hook_point",
    ]  # no site for the ModuleList, the ModuleDicts or the inner Sequentials


def test_shared_module_fires_once_per_call() -> None:
    model = auto_hook(SharedTwice())
    record = {r.name: r for r in describe_sites(model, torch.randn(2, 8))}["shared.hook_point"]
    assert record.calls == 2
    seen: list[torch.Tensor] = []
    model.run_with_hooks(
        torch.randn(2, 8), fwd_hooks=[("shared.hook_point", lambda t, hook: seen.append(t))]
    )
    assert len(seen) == 2


def test_hand_placed_hook_point_keeps_its_name_and_gets_no_extra_site() -> None:
    model = auto_hook(WithHookPoint())
    assert "hook_mid" in model.hook_dict and "hook_mid.hook_point" not in model.hook_dict
    assert model.hook_dict["hook_mid"] is model.hook_mid
    _, cache = model.run_with_cache(torch.randn(2, 8), names_filter="hook_mid")
    assert cache["hook_mid"].shape == (2, 16)


def test_lstm_site_fires_with_the_output_sequence_and_edit_keeps_the_tuple() -> None:
    model = auto_hook(LSTMTagger().eval())
    tokens = torch.randint(0, 20, (2, 5))
    seen = {}

    def zero_and_look(t: torch.Tensor, hook: object) -> torch.Tensor:
        seen["shape"] = t.shape
        return torch.zeros_like(t)

    out = model.run_with_hooks(tokens, fwd_hooks=[("lstm.hook_point", zero_and_look)])
    assert seen["shape"] == (2, 5, 12)
    bias_only = model.head.bias.expand(2, 5, 3)
    torch.testing.assert_close(out, bias_only)
