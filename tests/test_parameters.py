"""Parameter sites: seen each time the owner runs, editable, gradients reach the real one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from battery import torch_hook_count
from plain_models import AutoEncoder
from torch import nn

from auto_hookpoint import HookFunctionError, auto_hook


class FunctionalLinear(nn.Module):
    """Uses its parameters through F.linear, not an operator."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8))
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class CallsTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = FunctionalLinear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.inner(x)


def test_parameter_sites_exist_only_for_non_builtin_owners() -> None:
    model = auto_hook(nn.Sequential(nn.Linear(8, 8), FunctionalLinear()))
    assert "1.weight.hook_point" in model.hook_dict and "1.bias.hook_point" in model.hook_dict
    assert "0.weight.hook_point" not in model.hook_dict  # nn.Linear is torch's own


@pytest.mark.parametrize(
    ("owner", "name"), [(AutoEncoder, "W_enc.hook_point"), (FunctionalLinear, "weight.hook_point")]
)
def test_parameter_hook_sees_and_replaces_the_parameter(owner: type[nn.Module], name: str) -> None:
    torch.manual_seed(0)
    model = auto_hook(owner())
    param = model.get_parameter(name.removesuffix(".hook_point"))
    x = torch.randn(3, 8)
    seen: list[torch.Tensor] = []

    def zero(p: torch.Tensor, hook: object) -> torch.Tensor:
        seen.append(p)
        return torch.zeros_like(p)

    ablated = model.run_with_hooks(x, fwd_hooks=[(name, zero)])
    assert seen and seen[0] is param
    expected = owner.forward(_with_zeroed(model, name), x)
    torch.testing.assert_close(ablated, expected)
    # The model's real parameter is untouched and back in place.
    assert model.get_parameter(name.removesuffix(".hook_point")) is param
    assert isinstance(param, nn.Parameter) and param.abs().sum() > 0


def _with_zeroed(model: nn.Module, site: str) -> nn.Module:
    import copy

    clone = copy.deepcopy(model).unwrap()
    with torch.no_grad():
        clone.get_parameter(site.removesuffix(".hook_point")).zero_()
    return clone


def test_parameter_hook_fires_each_time_the_owner_runs() -> None:
    model = auto_hook(CallsTwice())
    seen: list[torch.Tensor] = []
    model.run_with_hooks(
        torch.randn(2, 8), fwd_hooks=[("inner.weight.hook_point", lambda p, hook: seen.append(p))]
    )
    assert len(seen) == 2


def test_gradients_reach_the_real_parameter_through_a_hook() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    x = torch.randn(4, 8)
    with model.hooks(fwd_hooks=[("W_enc.hook_point", lambda p, hook: p * 2.0)]):
        model(x).pow(2).sum().backward()
    assert model.W_enc.grad is not None and model.W_enc.grad.abs().sum() > 0

    plain = AutoEncoder()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.W_enc.mul_(2.0)
    plain(x).pow(2).sum().backward()
    # d/dW of f(2W) is 2 f'(2W)
    torch.testing.assert_close(model.W_enc.grad, 2.0 * plain.W_enc.grad)


def test_backward_hook_on_a_parameter_sees_its_gradient() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    grads: list[torch.Tensor] = []
    with model.hooks(bwd_hooks=[("W_dec.hook_point", lambda g, hook: grads.append(g))]):
        model(torch.randn(4, 8)).sum().backward()
    assert len(grads) == 1
    torch.testing.assert_close(grads[0], model.W_dec.grad)


def test_nn_parameter_is_never_patched() -> None:
    before = dict(vars(nn.Parameter))
    model = auto_hook(AutoEncoder())
    model.run_with_cache(torch.randn(2, 8))
    assert dict(vars(nn.Parameter)) == before
    assert all(type(p) is nn.Parameter for p in model.parameters())


def test_real_parameters_come_back_when_the_forward_raises() -> None:
    model = auto_hook(AutoEncoder())
    real = model.W_enc

    def boom(t: torch.Tensor, hook: object) -> None:
        raise RuntimeError("after the parameter was lent")

    with pytest.raises(HookFunctionError):
        model.run_with_hooks(
            torch.randn(2, 8),
            fwd_hooks=[("W_enc.hook_point", lambda p, hook: p * 0), ("hook_point", boom)],
        )
    assert model.W_enc is real and model._parameters["W_enc"] is real
    assert torch_hook_count(model) == 0


def test_real_parameters_come_back_when_the_module_itself_raises() -> None:
    model = auto_hook(FunctionalLinear())
    real = model.weight
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        model.run_with_hooks(
            torch.randn(2, 5), fwd_hooks=[("weight.hook_point", lambda p, hook: p * 0)]
        )
    assert model._parameters["weight"] is real
    assert torch_hook_count(model) == 0
    assert model(torch.randn(2, 8)).shape == (2, 4)
