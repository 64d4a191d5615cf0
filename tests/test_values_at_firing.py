"""A kept value is what the site fired with, whatever the forward does to that tensor later.

Residual networks rewrite tensors in place after the module that made them returned
(``out += identity``, ``ReLU(inplace=True)``): every way of keeping an activation must
have copied it when the site fired. The expected values come from an independent
witness: plain torch hooks on an un-hooked copy, copying at the moment each module
returned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf
from battery import torch_hook_count
from plain_models import ResidualNet
from torch import nn
from witness import witness

from auto_hookpoint import auto_hook, capture, describe_sites

Keep = Callable[[Any, torch.Tensor], dict[str, torch.Tensor]]


def hf_resnet() -> nn.Module:
    config = tf.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    return tf.ResNetModel(config)


def tl_run_with_cache(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    # reset_hooks_end=False takes TransformerLens' own implementation (get_caching_hooks).
    _, cache = model.run_with_cache(x, reset_hooks_end=False)
    model.reset_hooks()
    return cache


def add_caching_hooks(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    cache = model.add_caching_hooks()
    model(x)
    model.reset_hooks()
    return cache


def captured(**options: Any) -> Keep:
    def keep(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with capture(model, "**", **options) as acts:
            model(x)
        return {name: value.detach() for name, value in acts.items()}

    return keep


def banked(model: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    sites = [name for name in model.hook_dict if name != "hook_point"]
    early = model.run_until("hook_point", x, bank=sites)
    return {name: t for name, t in early.activations.items() if name != "hook_point"}


KEEPERS: dict[str, Keep] = {
    "run_with_cache": lambda model, x: model.run_with_cache(x)[1],
    "transformer_lens_run_with_cache": tl_run_with_cache,
    "add_caching_hooks": add_caching_hooks,
    "capture": captured(),
    "capture_detach_false": captured(detach=False),
    "capture_positions": captured(positions=slice(0, 2), pos_dim=1),
    "run_until_bank": banked,
}
MODELS: dict[str, Callable[[], nn.Module]] = {"hf_resnet": hf_resnet, "residual_net": ResidualNet}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("keeper", KEEPERS)
def test_kept_values_are_what_each_site_fired_with(model_name: str, keeper: str) -> None:
    torch.manual_seed(0)
    plain = MODELS[model_name]().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        seen = witness(copy.deepcopy(plain), x)
        model = auto_hook(plain)
        kept = KEEPERS[keeper](model, x)
    for name, value in kept.items():
        path = name.removesuffix(".hook_point").removesuffix("hook_point")
        expected = seen.values[path][-1]  # a module called twice: its last call is kept
        if keeper == "capture_positions" and expected.dim() > 1:
            expected = expected[:, 0:2]
        assert torch.equal(value, expected), f"{name} holds a value the forward changed later"
    assert len(kept) >= 10
    assert torch_hook_count(model) == 0


def test_the_witness_sees_in_place_rewrites_that_a_view_would_have_missed() -> None:
    # Guards the test above: the models really do rewrite earlier outputs in place.
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.randn(2, 3, 8, 8)
    views: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, p=path: views.setdefault(p, out.detach()))
        for path, module in model.named_modules()
        if path
    ]
    with torch.no_grad():
        seen = witness(model, x)
    for handle in handles:
        handle.remove()
    changed = [p for p, view in views.items() if not torch.equal(view, seen.values[p][-1])]
    assert "blocks.0.bn2" in changed and "blocks.0.bn1" in changed


def test_capture_casts_floats_only_and_keeps_integer_and_boolean_tensors() -> None:
    class Tokens(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.argmax(-1), x > 0

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = Tokens()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ids, mask = self.tokens(x)
            return self.lin(x) * mask + ids.unsqueeze(-1)

    model = auto_hook(Model(), leaves=True)
    x = torch.randn(3, 4)
    names = ["tokens.hook_point", "tokens.hook_point.1", "lin.hook_point"]
    with capture(model, names, dtype=torch.float16) as acts:
        model(x)
    assert acts["tokens.hook_point"].dtype == torch.int64
    assert torch.equal(acts["tokens.hook_point"], x.argmax(-1))
    assert acts["tokens.hook_point.1"].dtype == torch.bool
    assert acts["lin.hook_point"].dtype == torch.float16
    _, cache = model.run_with_cache(x, names_filter=names, device="cpu")
    assert cache["tokens.hook_point"].dtype == torch.int64
    assert cache["tokens.hook_point.1"].dtype == torch.bool


def test_describe_sites_reports_the_shape_each_site_fired_with() -> None:
    class Grows(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.grows = Grows()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.grows(x)
            y.resize_(1)  # the tensor the site fired with changes shape afterwards
            return y

    records = {r.name: r for r in describe_sites(auto_hook(Model()), torch.randn(2, 3))}
    assert records["grows.hook_point"].shape == (2, 3)
