"""What a hook returns is checked at its site: None, or a tensor like the one it was given.

Anything else is a HookResultError naming the hook, the site, what came back and what
was expected, raised where the hook ran (not deep inside the model), by every route a
hook can be added, forward and backward, on every kind of site; and nothing is left
installed after it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from battery import assert_bit_identical, torch_hook_count
from hf_models import ARCHS
from plain_models import AutoEncoder

from auto_hookpoint import HookResultError, auto_hook


def as_tuple(t: torch.Tensor, hook: Any) -> Any:
    return (t,)


def wrong_shape(t: torch.Tensor, hook: Any) -> Any:
    return t[..., :1]


def wrong_dtype(t: torch.Tensor, hook: Any) -> Any:
    return t.double()


def a_number(t: torch.Tensor, hook: Any) -> Any:
    return 1.0


def wrong_device(t: torch.Tensor, hook: Any) -> Any:
    return t.to("meta")  # (any other device than the one it was given)


BAD: dict[str, tuple[Callable[..., Any], str]] = {
    "tuple": (as_tuple, "a value of type tuple"),
    "shape": (wrong_shape, "shape [2, 8, 1]"),
    "dtype": (wrong_dtype, "float64"),
    "number": (a_number, "a value of type float"),
    "device": (wrong_device, "on meta"),
}


def run_with_hooks(model: Any, name: str, hook: Any, inputs: dict[str, Any]) -> None:
    model.run_with_hooks(**inputs, fwd_hooks=[(name, hook)])


def scoped(model: Any, name: str, hook: Any, inputs: dict[str, Any]) -> None:
    with model.hooks(fwd_hooks=[(name, hook)]):
        model(**inputs)


def added(model: Any, name: str, hook: Any, inputs: dict[str, Any]) -> None:
    model.add_hook(name, hook)
    model(**inputs)


def on_the_hook_point(model: Any, name: str, hook: Any, inputs: dict[str, Any]) -> None:
    model.hook_dict[name].add_perma_hook(hook)  # as TransformerLens code does
    model(**inputs)


HANDLES: list[Any] = []


def plain_torch_hook(model: Any, name: str, hook: Any, inputs: dict[str, Any]) -> None:
    torch_style = lambda module, args, output: hook(output, None)  # noqa: E731
    torch_style.__qualname__ = hook.__qualname__
    HANDLES.append(model.hook_dict[name].register_forward_hook(torch_style))
    model(**inputs)


ROUTES = {
    "run_with_hooks": run_with_hooks,
    "hooks": scoped,
    "add_hook": added,
    "add_perma_hook": on_the_hook_point,
    "register_forward_hook": plain_torch_hook,
}


@pytest.fixture(scope="module")
def llama() -> Any:
    torch.manual_seed(0)
    return ARCHS["llama"].build().eval()


# Every route, and every kind of bad result (each pair costs a forward of a small Llama).
CASES = [(route, "tuple") for route in ROUTES] + [("run_with_hooks", bad) for bad in BAD][1:]


@pytest.mark.parametrize(("route", "bad"), CASES)
def test_a_bad_result_is_named_at_its_site_by_every_route(llama: Any, route: str, bad: str) -> None:
    model = auto_hook(copy.deepcopy(llama))
    inputs = ARCHS["llama"].inputs()
    expected = model(**inputs)
    hook, returned = BAD[bad]
    # A decoder layer returns its hidden states inside a structure in transformers 4 and
    # as a tensor in 5; either way the hook sees the [2, 8, 32] tensor.
    site = "model.layers.0.hook_point"
    with pytest.raises(HookResultError) as raised:
        ROUTES[route](model, site, hook, inputs)
    message = str(raised.value)
    assert hook.__qualname__ in message and repr(site) in message
    assert returned in message and "shape [2, 8, 32], float32" in message
    # Hooks the user added to stay are theirs to remove; temporary ones are gone already.
    model.reset_hooks(including_permanent=True)
    while HANDLES:
        HANDLES.pop().remove()
    assert torch_hook_count(model) == 0
    assert_bit_identical(expected, model(**inputs))


@pytest.mark.parametrize(
    "site",
    ["W_enc.hook_point", "hook_in", "hook_point"],
    ids=["parameter", "input", "output"],
)
def test_every_kind_of_site_checks_results_and_puts_parameters_back(site: str) -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder(), inputs=True)
    x = torch.randn(2, 8)
    expected = model(x)
    with pytest.raises(HookResultError, match="wrong_shape"):
        model.run_with_hooks(x, fwd_hooks=[(site, wrong_shape)])
    assert isinstance(model.W_enc, torch.nn.Parameter)
    assert torch_hook_count(model) == 0
    assert torch.equal(model(x), expected)


def test_backward_hook_results_are_checked_too() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    x = torch.randn(2, 8)
    with pytest.raises(HookResultError, match=r"backward hook wrong_shape at 'hook_point'"):
        with model.hooks(bwd_hooks=[("hook_point", wrong_shape)]):
            model(x).sum().backward()
    assert torch_hook_count(model) == 0


def test_good_results_pass_unchanged() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    x = torch.randn(2, 8)
    same = model.run_with_hooks(x, fwd_hooks=[("hook_point", lambda t, hook: t)])
    assert torch.equal(same, model(x))
    doubled = model.run_with_hooks(x, fwd_hooks=[("hook_point", lambda t, hook: t * 2)])
    assert torch.equal(doubled, model(x) * 2)
    model.run_with_hooks(x, fwd_hooks=[("hook_point", lambda t, hook: t.mul_(1))])  # in place
