"""Backward hooks on any site: the forward runs, and the hook sees (and may replace) the
gradient with respect to the value the site fired with.

torch's module backward hooks (what TransformerLens' HookPoint uses) hand the model a
view that any later in-place op refuses (``out += identity`` in every residual
network), so the forward itself crashed. The oracle for "the gradient at a site" is
independent of hooks: on an un-hooked copy, a zero *probe* leaf is added to the
module's output; the probe's gradient is the gradient with respect to that output.
For the replacement semantics the oracle is TransformerLens' own HookPoint. (A module
that returns its input as it is makes no tensor of its own to probe; its hook sees
that tensor's whole gradient, as documented.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf
from battery import torch_hook_count
from plain_models import AutoEncoder, ResidualNet
from torch import nn
from transformer_lens.hook_points import HookPoint

from auto_hookpoint import BackwardHookLostError, auto_hook


class ViewRewritten(nn.Module):
    """A submodule returns a view of its input, which the parent then rewrites in place."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.first_half = FirstHalf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        half = self.first_half(h)
        half.mul_(2)  # rewrites the view, and so h
        return h.relu_().sum(-1, keepdim=True) + half.sum(-1, keepdim=True)


class FirstHalf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., :3]


def hf_resnet() -> nn.Module:
    config = tf.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    return tf.ResNetModel(config)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "residual_net": (ResidualNet, lambda: torch.randn(2, 3, 8, 8)),
    "hf_resnet": (hf_resnet, lambda: torch.randn(2, 3, 16, 16)),
}


def loss_of(output: Any) -> torch.Tensor:
    tensor = output if isinstance(output, torch.Tensor) else output[0]
    return tensor.pow(2).sum()


def probe_gradients(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """d loss / d (each tensor-returning module's output), by zero probes added to them."""
    probes: dict[str, torch.Tensor] = {}
    handles = []
    for path, module in model.named_modules():
        if not path or isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue

        def add_probe(_m: nn.Module, args: Any, out: Any, path: str = path) -> Any:
            if not isinstance(out, torch.Tensor) or path in probes:
                return None  # first call only (a ReLU used twice gets one probe)
            if any(out is a for a in args):
                return None  # a module returning its input (Identity): no tensor of its own
            probe = probes[path] = torch.zeros_like(out, requires_grad=True)
            return out + probe

        handles.append(module.register_forward_hook(add_probe))
    loss_of(model(x)).backward()
    for handle in handles:
        handle.remove()
    return {path: probe.grad for path, probe in probes.items() if probe.grad is not None}


@pytest.mark.parametrize("name", MODELS)
def test_backward_hooks_on_every_site_see_the_gradient_there(name: str) -> None:
    build, make_input = MODELS[name]
    torch.manual_seed(0)
    plain = build().eval()
    x = make_input()
    expected = probe_gradients(copy.deepcopy(plain), x)
    model = auto_hook(plain)
    seen: dict[str, list[torch.Tensor]] = {}

    def record(grad: torch.Tensor, hook: Any) -> None:
        seen.setdefault(hook.name, []).append(grad.clone())

    out_sites = [
        n for n, s in model.hook_sites.items() if s.kind.value == "output" and n != "hook_point"
    ]
    with model.hooks(bwd_hooks=[(lambda n: n in out_sites, record)]):
        loss_of(model(x)).backward()  # the forward used to crash here
    assert torch_hook_count(model) == 0
    for path, gradient in expected.items():
        grads = seen[f"{path}.hook_point"]
        assert torch.allclose(grads[-1], gradient), path  # the first call, seen last
    assert len(expected) >= 3


class Aligned(nn.Module):
    """A TransformerLens HookPoint placed on ``up``'s output: both sites see one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(4, 8)
        self.hook_up = HookPoint()
        self.down = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.hook_up(self.up(x))))


def test_a_view_changed_in_place_later_is_an_error_in_backward_not_a_silent_miss() -> None:
    torch.manual_seed(0)
    model = auto_hook(ViewRewritten())
    x = torch.randn(4, 6)
    seen: dict[str, torch.Tensor] = {}
    record = lambda g, hook: seen.__setitem__(hook.name, g.clone())  # noqa: E731
    with model.hooks(bwd_hooks=[("lin.hook_point", record)]):
        model(x).sum().backward()

    def rest_of_forward(h: torch.Tensor) -> torch.Tensor:  # the same, without in-place ops
        h = torch.cat([h[..., :3] * 2, h[..., 3:]], -1).relu()  # relu_ rewrote the view too
        return (h.sum(-1, keepdim=True) + h[..., :3].sum(-1, keepdim=True)).sum()

    h = model.lin(x).detach().requires_grad_()
    (expected,) = torch.autograd.grad(rest_of_forward(h), h)
    assert torch.allclose(seen["lin.hook_point"], expected)  # the value before the in-place op

    with pytest.raises(BackwardHookLostError, match="'first_half.hook_point'.*view"):
        with model.hooks(bwd_hooks=[("first_half.hook_point", record)]):
            model(x).sum().backward()
    assert torch_hook_count(model) == 0


def test_replacing_gradients_follows_transformer_lens_hook_point_semantics() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    results = {}
    for site in ("hook_up", "up.hook_point"):  # TransformerLens' own, then ours
        model = auto_hook(Aligned())
        torch.manual_seed(0)
        model.load_state_dict(Aligned().state_dict())
        seen: list[torch.Tensor] = []

        def triple(grad: torch.Tensor, hook: Any) -> torch.Tensor:
            return grad * 3

        def record(grad: torch.Tensor, hook: Any, seen: list[torch.Tensor] = seen) -> None:
            seen.append(grad.clone())  # the gradient as it arrived, before triple's

        with model.hooks(bwd_hooks=[(site, triple), (site, record)]):
            model(x).sum().backward()
        results[site] = (model.up.weight.grad.clone(), seen)
    (ours, our_seen), (theirs, their_seen) = results["up.hook_point"], results["hook_up"]
    assert torch.equal(ours, theirs) and len(our_seen) == len(their_seen) == 1
    assert torch.equal(our_seen[0], their_seen[0])


def test_a_parameter_sites_backward_hook_fires_once_per_backward_and_does_not_pile_up() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    x = torch.randn(2, 8)
    calls: list[int] = []
    model.add_hook("W_enc.hook_point", lambda g, hook: calls.append(1), dir="bwd")
    for _ in range(3):
        model(x).sum().backward()
    assert calls == [1, 1, 1]
    assert not model.W_enc._backward_hooks  # nothing was left on the real parameter
    model.reset_hooks()
    model(x).sum().backward()
    assert calls == [1, 1, 1]
    assert torch_hook_count(model) == 0
