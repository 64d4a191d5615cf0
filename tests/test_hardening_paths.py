"""Issue 10's guarantees on the other paths a forward takes: compiled, through a site
view, on a model dispatched by accelerate.

* kept values are copies taken when the site fired, also when the observers are traced
  into a compiled graph and when a site shows its tensor through a view;
* a hook's result is checked at a view site (against the tensor the hook was given, in
  the view's shape) and at a parameter site lent inside accelerate's forward;
* the sites follow a structure change on a compiled model, on a dispatched model whose
  parameters are being lent (accelerate's own forward is put back exactly), and on a
  HookedTransformerAdapter, whose names are views and probes outside the module tree.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from battery import torch_hook_count
from dispatched import FAMILIES, accelerate_state, dispatched, inputs
from plain_models import ResidualNet
from torch import nn
from torch._dynamo.testing import CompileCounter
from witness import witness

from auto_hookpoint import HookResultError, auto_hook, capture
from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.sites import SiteKind, SiteView

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
ROWS = "blocks.0.bn1.as_rows"  # a view site on a tensor that ReLU(inplace=True) rewrites


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Any:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def residual_net() -> tuple[nn.Module, Any]:
    """ResidualNet hooked, with a view site on bn1's output ([b, c, h*w]); and its witness."""
    torch.manual_seed(0)
    plain = ResidualNet().eval()
    with torch.no_grad():
        seen = witness(copy.deepcopy(plain), X)
    model = auto_hook(plain)
    rows = SiteView(lambda t: t.flatten(2), lambda t, new: new.reshape(t.shape))
    core_of(model).add_site(ROWS, "blocks.0.bn1", SiteKind.OUTPUT, view=rows)
    return model, seen


def kept_values(model: Any) -> dict[str, torch.Tensor]:
    names = ["blocks.0.bn1.hook_point", "blocks.0.bn2.hook_point", ROWS]
    with torch.no_grad():
        _, cache = model.run_with_cache(X, names_filter=names)
        with capture(model, names) as acts:
            model(X)
    return {
        **{f"cache {n}": v for n, v in cache.items()},
        **{f"capture {n}": acts[n] for n in names},
    }


@pytest.mark.parametrize("backend", [None, "eager", "aot_eager"])
def test_kept_values_are_copies_compiled_and_through_a_view(backend: str | None) -> None:
    model, seen = residual_net()
    if backend is not None:
        counter = CompileCounter() if backend == "eager" else backend
        model.compile(backend=counter)
    kept = kept_values(model)
    bn1, bn2 = seen.values["blocks.0.bn1"][-1], seen.values["blocks.0.bn2"][-1]
    expected = {
        "blocks.0.bn1.hook_point": bn1,
        "blocks.0.bn2.hook_point": bn2,
        ROWS: bn1.flatten(2),
    }
    for what, value in kept.items():
        name = what.split(" ", 1)[1]
        assert torch.equal(value, expected[name]), f"{what}: not the value the site fired with"
    if backend == "eager":
        assert counter.frame_count >= 1  # the forward really ran compiled
    assert torch_hook_count(model) == 0


def wrong_shape(t: torch.Tensor, hook: Any) -> torch.Tensor:
    return t.flatten()


def test_a_view_site_checks_a_result_against_the_view_it_showed() -> None:
    model, _ = residual_net()
    with pytest.raises(HookResultError) as raised:
        model.run_with_hooks(X, fwd_hooks=[(ROWS, wrong_shape)])
    message = str(raised.value)
    assert "wrong_shape" in message and repr(ROWS) in message
    assert "like the one it was given: a tensor of shape [2, 8, 64]" in message  # the view's
    assert torch_hook_count(model) == 0
    halved = model.run_with_hooks(X, fwd_hooks=[(ROWS, lambda t, hook: t * 0.5)])
    assert halved.shape == (2, 4)  # a good result passes, written back through the view


def test_an_adapter_view_site_checks_results_eager_and_compiled() -> None:
    from test_compile import tiny_llama

    from auto_hookpoint import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_tokenizer

    adapter = HookedTransformerAdapter(tiny_llama(2, vocab=1024), demo_tokenizer())
    tokens = torch.randint(0, 1024, (2, 6), generator=torch.Generator().manual_seed(3))
    for compiled in (False, True):
        if compiled:
            adapter.model.compile(backend="eager")
        with pytest.raises(
            HookResultError, match=r"wrong_shape at 'blocks\.0\.attn\.hook_q'.*\[2, 6, 2, 8\]"
        ):
            adapter.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_q", wrong_shape)])
        assert torch_hook_count(adapter.model) == 0


def without_weight_devices(state: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    # accelerate loads offloaded weights for a call and offloads them again after it; when
    # the forward raises (anything, not only a hook) it leaves them loaded until the next
    # call: its own behaviour, not something auto_hookpoint placed.
    return {path: entry[:-1] for path, entry in state.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_parameter_lent_inside_accelerates_forward_is_checked_and_given_back(
    family: str, tmp_path: Path
) -> None:
    placed, plain = dispatched(family, "disk", tmp_path)
    model = auto_hook(placed)
    site = FAMILIES[family].param_site
    before = accelerate_state(model)
    seen: list[torch.device] = []

    def to_half(w: torch.Tensor, hook: Any) -> torch.Tensor:
        seen.append(w.device)
        return w.half()

    with pytest.raises(HookResultError, match=rf"to_half at '{site}'.*float16.*float32"):
        model.run_with_hooks(inputs(), fwd_hooks=[(site, to_half)])
    assert seen == [torch.device("cpu")]  # the weight loaded for the call, not meta
    assert without_weight_devices(accelerate_state(model)) == without_weight_devices(before)
    weight = model.get_parameter(site.removesuffix(".hook_point"))
    assert type(weight) is nn.Parameter and weight.dtype == torch.float32  # not the lent one
    with torch.no_grad():
        torch.testing.assert_close(model(inputs()).logits, plain(inputs()).logits)
    assert accelerate_state(model) == before  # offloaded again by the next call


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_follow_a_change_of_a_dispatched_model_while_a_parameter_is_lent(
    family: str, tmp_path: Path
) -> None:
    from auto_hookpoint.core.lending import _LendingForward

    placed, plain = dispatched(family, "disk", tmp_path)
    model, reference = auto_hook(placed), auto_hook(plain)
    site = FAMILIES[family].param_site
    owner = model.get_submodule(site.removesuffix(".hook_point").rpartition(".")[0])
    accelerates = owner.__dict__["_old_forward"]
    untouched = accelerate_state(model)
    for hooked in (model, reference):
        hooked.add_perma_hook(site, lambda w, hook: w * 0.5)
    final_norm = "model.norm" if family == "llama" else "transformer.ln_f"
    parent, _, name = final_norm.rpartition(".")
    for hooked in (model, reference):  # the same module replaced by an equal one
        replacement = copy.deepcopy(hooked.get_submodule(final_norm))
        setattr(hooked.get_submodule(parent), name, replacement)
    with torch.no_grad():
        out, expected = model(inputs()).logits, reference(inputs()).logits
    torch.testing.assert_close(out, expected)  # the parameter hook still acts, once
    assert not core_of(model).stale  # followed
    lending = owner.__dict__["_old_forward"]
    assert type(lending) is _LendingForward and lending.inner is accelerates  # wrapped once
    model.reset_hooks(including_permanent=True)
    after = accelerate_state(model)
    assert {p: s for p, s in after.items() if p != final_norm} == {
        p: s for p, s in untouched.items() if p != final_norm
    }, "something of ours was left inside accelerate's forward"


def test_sites_follow_a_change_of_a_compiled_model() -> None:
    from test_structure_changes import HEAD, IDS, untied_llama

    model, reference = untied_llama(), untied_llama()
    counter = CompileCounter()
    model.compile(backend=counter)
    for hooked in (model, reference):
        hooked.add_perma_hook(HEAD, lambda t, hook: t * 2)
        hooked.resize_token_embeddings(100)  # new rows drawn at random, differently
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        out, expected = model(IDS).logits, reference(IDS).logits
    assert out.shape[-1] == 100
    torch.testing.assert_close(out, expected)  # the hook moved to the new lm_head, compiled
    assert counter.frame_count >= 1
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 0


def test_adapter_names_keep_their_views_and_probes_when_the_sites_follow_a_change() -> None:
    from test_compile import tiny_llama

    from auto_hookpoint import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_tokenizer

    adapter = HookedTransformerAdapter(tiny_llama(2, vocab=1024), demo_tokenizer())
    core = core_of(adapter.model)
    tokens = torch.randint(0, 1024, (1, 6), generator=torch.Generator().manual_seed(3))
    names = ["blocks.0.attn.hook_q", "blocks.1.attn.hook_pattern", "blocks.1.ln2.hook_scale"]
    placed = {name: core.sites[name].module for name in names}
    with torch.no_grad():
        _, before = adapter.run_with_cache(tokens, names_filter=names)
        adapter.model.model.extra = nn.Identity()  # a change: the sites are found again
        assert core.stale
        _, after = adapter.run_with_cache(tokens, names_filter=names)
    assert not core.stale
    for name in names:
        assert core.sites[name].module is placed[name], f"{name} moved to another module"
        assert core.sites[name].view is not None or "pattern" in name
        torch.testing.assert_close(after[name], before[name], msg=name)


def test_a_backward_hook_at_a_view_site_sees_the_gradient_there() -> None:
    model, _ = residual_net()
    x = X.clone().requires_grad_()
    at_view: list[torch.Tensor] = []
    at_module: list[torch.Tensor] = []
    model.run_with_hooks(
        x,
        bwd_hooks=[
            (ROWS, lambda g, hook: at_view.append(g.clone())),
            ("blocks.0.bn1.hook_point", lambda g, hook: at_module.append(g.clone())),
        ],
        reset_hooks_end=False,
    ).pow(2).sum().backward()
    model.reset_hooks()
    assert len(at_view) == 1 and len(at_module) == 1  # never silently skipped
    assert torch.equal(at_view[0], at_module[0].flatten(2))
    assert torch_hook_count(model) == 0


class Scaled(nn.Module):
    """A raw parameter of a module with a child: lent while the child runs."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(8))
        self.inner = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_a_lent_parameter_is_given_back_when_ctrl_c_ends_the_call(interrupt: type) -> None:
    model = auto_hook(Scaled())
    real = model.scale

    def stop(t: torch.Tensor, hook: Any) -> None:
        raise interrupt

    model.add_perma_hook("scale.hook_point", lambda w, hook: w * 2)
    with pytest.raises(interrupt):
        model.run_with_hooks(torch.randn(2, 8), fwd_hooks=[("inner.hook_point", stop)])
    assert model._parameters["scale"] is real  # torch ran no always-called hook for it
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 0
    assert torch.equal(model(torch.ones(1, 8)), model.inner(torch.ones(1, 8)))


def test_backward_hooks_in_a_compiled_model_see_the_eager_gradients() -> None:
    names = ["blocks.0.bn1.hook_point", "blocks.0.bn2.hook_point", "blocks.1.hook_point", ROWS]

    def gradients(compiled: bool) -> dict[str, torch.Tensor]:
        model, _ = residual_net()
        if compiled:
            model.compile(backend="eager")
        seen: dict[str, torch.Tensor] = {}
        hooks = [(n, lambda g, hook: seen.setdefault(hook.name, g.clone())) for n in names]
        out = model.run_with_hooks(X, bwd_hooks=hooks, reset_hooks_end=False)
        out.pow(2).sum().backward()  # (ReLU(inplace=True) and out += identity in between)
        model.reset_hooks()
        assert torch_hook_count(model) == 0
        return seen

    eager, compiled = gradients(False), gradients(True)
    assert sorted(compiled) == sorted(eager) == sorted(names)
    for name in names:
        torch.testing.assert_close(compiled[name], eager[name], msg=name)
