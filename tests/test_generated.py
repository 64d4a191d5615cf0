"""Generated tests: auto_hook on random model structures, checked against plain torch.

hypothesis builds models from ``generated_models`` (nested containers, every output
structure, modules called several times or never, re-entrant and tied modules, tied and
raw parameters, buffers, in-place ops, views) and checks, on each:

* idle, the hooked model carries no torch hook and computes bit-identical outputs;
* every module that returned a tensor has a site that fired exactly as often as an
  independent witness (a global torch hook on an un-hooked copy) counts, and each value
  kept for it equals the witness's copy taken at that moment; parameter sites fire once
  per call of their module; nothing else fires;
* identity hooks on every site, forward and backward, change neither the output nor
  any gradient;
* a fault injected at a random site while hooks, an observer and a lent parameter are
  active (a raising hook, a raising module, ``KeyboardInterrupt``, a split exit) leaves
  no torch hook, observer, hook scope or lent parameter behind, and the next forward is
  clean;
* ``unwrap()`` gives back the original class with nothing left.

The "ci" profile (conftest.py) runs hundreds of models; ``--hypothesis-profile=thorough``
runs thousands. A failure prints the seed and the spec of the model; shrinking makes it
a minimal one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from battery import torch_hook_count
from generated_models import SPECS, WIDTH, build
from hypothesis import given, note
from hypothesis import strategies as st
from torch import nn
from witness import witness

from auto_hookpoint import HookFunctionError, auto_hook, capture
from auto_hookpoint.core.context import ACTIVE_SCOPES
from auto_hookpoint.core.observers import ACTIVE_OBSERVERS
from auto_hookpoint.core.sites import SiteKind, site_name

# Counted over every run of the tests in this file, for the README's figures.
FIGURES = {"models": 0, "faults": 0}


def inputs() -> torch.Tensor:
    return torch.randn(2, 3, WIDTH, generator=torch.Generator().manual_seed(1))


def has_no_site(path: str, module: nn.Module) -> bool:
    """The documented exceptions: containers, and Sequentials below the root."""
    containers = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
    return isinstance(module, containers) or (bool(path) and type(module) is nn.Sequential)


def params(model: nn.Module) -> dict[str, Any]:
    """Every parameter slot of every module, to check none was left lent."""
    return {
        f"{path}.{name}": value
        for path, module in model.named_modules()
        for name, value in module._parameters.items()
    }


def assert_nothing_left(model: Any, real_params: dict[str, Any], x: torch.Tensor, out: Any) -> None:
    assert torch_hook_count(model) == 0, "a torch hook was left on the model"
    assert ACTIVE_OBSERVERS.get() == (), "an observer was left active"
    assert ACTIVE_SCOPES.get() == frozenset(), "a hooks() scope was left active"
    now = params(model)
    lent = [n for n, p in real_params.items() if now[n] is not p]
    assert not lent, f"parameters left lent: {lent}"
    assert not [n for n, hp in model.hook_dict.items() if hp.holds_hooks()]
    assert torch.equal(model(x), out), "the next forward is not clean"


@given(spec=SPECS)
def test_sites_fire_as_the_witness_counts_and_keep_its_values(spec: Any) -> None:
    note(f"spec: {spec!r}")
    FIGURES["models"] += 1
    plain = build(spec)
    x = inputs()
    seen = witness(copy.deepcopy(plain), x)
    model = auto_hook(copy.deepcopy(plain))
    assert torch_hook_count(model) == 0
    assert torch.equal(model(x), seen.output)

    sites = model.hook_sites
    with capture(model, list(sites), append=True) as kept:
        assert torch.equal(model(x), seen.output)
    for path, module in model.named_modules():
        values = seen.values.get(path, [])
        name = site_name(path)
        if has_no_site(path, module):
            assert name not in sites
            continue
        if not values:
            assert name not in kept, f"{name} fired, but its module returned no tensor"
            continue
        fired = kept[name]
        assert len(fired) == len(values), f"{name} fired {len(fired)}x, witness {len(values)}x"
        for got, expected in zip(fired, values, strict=True):
            assert torch.equal(got, expected), f"{name} kept a value other than it produced"
    for name, site in sites.items():
        if site.kind is SiteKind.PARAMETER:
            calls = seen.calls.get(site.module_path, 0)
            assert len(kept.get(name, [])) == calls, f"{name} fired other than once per call"
    _, cache = model.run_with_cache(x)  # the last value of each site, as capture's
    assert set(cache) == set(kept)
    assert all(torch.equal(cache[name], kept[name][-1]) for name in cache)
    extra = (
        set(kept)
        - {site_name(p) for p in seen.values}
        - {n for n, s in sites.items() if s.kind is SiteKind.PARAMETER}
    )
    assert not extra, f"sites fired that the witness never saw run: {extra}"
    assert torch_hook_count(model) == 0


@given(spec=SPECS)
def test_identity_hooks_change_no_output_and_no_gradient(spec: Any) -> None:
    note(f"spec: {spec!r}")
    FIGURES["models"] += 1
    plain = build(spec)
    x = inputs()
    reference = copy.deepcopy(plain)
    out = reference(x)
    expected_error = backward_error(lambda: out.pow(2).sum().backward())
    expected_grads = {n: p.grad for n, p in reference.named_parameters()}

    model = auto_hook(copy.deepcopy(plain))
    every = lambda name: True  # noqa: E731
    same = lambda t, hook: t  # noqa: E731
    with model.hooks(fwd_hooks=[(every, same)], bwd_hooks=[(every, lambda g, hook: None)]):
        hooked_out = model(x)
        error = backward_error(lambda: hooked_out.pow(2).sum().backward())
    assert torch.equal(hooked_out, out)
    # A model whose own backward fails (an in-place op on a value autograd saved) fails
    # the same way hooked; otherwise every gradient is the same.
    assert error == expected_error
    for name, param in model.named_parameters() if error is None else ():
        expected = expected_grads[name]
        assert (param.grad is None) == (expected is None), name
        assert expected is None or torch.equal(param.grad, expected), f"gradient of {name} differs"
    assert torch_hook_count(model) == 0


def backward_error(run: Callable[[], None]) -> str | None:
    try:
        run()
    except RuntimeError as error:
        return "modified by an inplace operation" if "inplace" in str(error) else str(error)
    return None


FAULTS = ("raising_hook", "raising_module", "keyboard_interrupt", "split_exit")
ROUTES = ("run_with_hooks", "perma_hook", "capture")


class Injected(ValueError):
    pass


def fault_hook(kind: str) -> Callable[..., Any]:
    def hook(t: torch.Tensor, hook: Any) -> None:
        if kind == "keyboard_interrupt":
            raise KeyboardInterrupt
        raise Injected("injected")

    return hook


@given(spec=SPECS, data=st.data())
def test_a_fault_anywhere_leaves_nothing_behind(spec: Any, data: st.DataObject) -> None:
    note(f"spec: {spec!r}")
    FIGURES["models"] += 1
    FIGURES["faults"] += 1
    plain = build(spec)
    x = inputs()
    seen = witness(copy.deepcopy(plain), x)
    model = auto_hook(copy.deepcopy(plain))
    real_params = params(model)
    fired = [site_name(p) for p in seen.values if site_name(p) in model.hook_sites]
    site = data.draw(st.sampled_from(sorted(fired)), label="site")
    kind = data.draw(st.sampled_from(FAULTS), label="fault")
    route = data.draw(st.sampled_from(ROUTES), label="route")
    # Active during the fault: a parameter lent to its module, and an observer.
    param_sites = [n for n, s in model.hook_sites.items() if s.kind is SiteKind.PARAMETER]
    lent = data.draw(st.sampled_from(sorted(param_sites)), label="lent") if param_sites else None
    if lent is not None:
        model.add_perma_hook(lent, lambda w, hook: w * 2)
    shown: list[torch.Tensor] = []
    at_site: list[torch.Tensor] = []

    def call() -> Any:
        with capture(model, "**", append=True) as acts:
            try:
                return call_with_fault()
            finally:
                shown.extend(acts.get(lent, []) if lent is not None else [])
                at_site.extend(acts.get(site, []))

    def call_with_fault() -> Any:
        if kind == "split_exit":
            return model.run_until(site, x)
        if kind == "raising_module":
            module = model.hook_sites[site].module
            module.forward = lambda *a, **k: (_ for _ in ()).throw(Injected("module"))
            try:
                return model(x)
            finally:
                del module.forward
        if route == "run_with_hooks":
            return model.run_with_hooks(x, fwd_hooks=[(site, fault_hook(kind))])
        if route == "perma_hook":
            model.add_perma_hook(site, fault_hook(kind))
            return model(x)
        with model.hooks(fwd_hooks=[(site, fault_hook(kind))]):
            return model(x)

    expected: type[BaseException] | None = {
        "raising_hook": HookFunctionError,
        "raising_module": Injected,
        "keyboard_interrupt": KeyboardInterrupt,
        "split_exit": None,
    }[kind]
    if expected is None:
        early = call()
        # The split site's value when it first fired (as the lent parameter made it).
        assert torch.equal(early.activation, at_site[0])
    else:
        with pytest.raises(expected):
            call()
    if lent is not None:  # each call of its module, nested ones too, saw the parameter
        real = model.get_parameter(lent.removesuffix(".hook_point")).detach()
        assert all(torch.equal(value, real * 2) for value in shown), "a hook saw a lent value"
    model.reset_hooks(including_permanent=True)
    assert_nothing_left(model, real_params, x, seen.output)

    unwrapped = model.unwrap()
    assert type(unwrapped) is type(plain) and torch_hook_count(unwrapped) == 0
    assert set(vars(unwrapped)) == set(vars(plain)), "an attribute of ours was left"
    assert torch.equal(unwrapped(x), seen.output)
