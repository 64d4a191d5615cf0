"""The checks of check_auto_hook. Each takes the Subject and the Baseline and returns a
CheckResult; an exception inside a check is reported as that check's failure."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens.HookedRootModule import HookedRootModule

from auto_hookpoint.check.compare import first_difference, outputs_equal
from auto_hookpoint.check.report import CheckResult, Status
from auto_hookpoint.check.subject import Subject, Witness
from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import Path
from auto_hookpoint.hooked import HookedModule, auto_hook, unwrap
from auto_hookpoint.site_report import SiteRecord, SiteStatus, describe_sites


@dataclass
class Baseline:
    expected: Any  # the un-hooked output
    deterministic: bool  # a second un-hooked run gave the same output
    witness: Witness
    records: dict[str, SiteRecord]  # from describe_sites on a hooked copy
    # By autograd (see _reach): sites whose tensor, as passed on downstream, the loss
    # depends on; of those, the ones whose gradient is not all zero (a zero-initialised
    # gate makes a site reach the loss with no effect on it yet); the sites the loss
    # does not depend on. Every site is in none of them when no loss can be formed
    # (an output without float tensors): then autograd cannot tell.
    reaching: set[str] = field(default_factory=set)
    sensitive: set[str] = field(default_factory=set)
    unreached: set[str] = field(default_factory=set)

    def fired(self) -> dict[str, SiteRecord]:
        return {n: r for n, r in self.records.items() if r.status is SiteStatus.FIRED}

    def float_sites(self) -> list[str]:
        return [
            n for n, r in self.fired().items() if r.dtype is not None and r.dtype.is_floating_point
        ]


class ModelRaises(Exception):
    """The un-hooked model itself raises on the given inputs: nothing can be checked."""


def make_baseline(subject: Subject) -> Baseline:
    try:
        expected = subject.run(subject.plain())
    except Exception as error:
        raise ModelRaises(error) from error
    again = subject.run(subject.plain())
    hooked = subject.hooked()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(subject.seed)
        records = describe_sites(hooked, *subject.args, **subject.kwargs)
    base = Baseline(
        expected,
        outputs_equal(expected, again),
        subject.witness(),
        {r.name: r for r in records},
    )
    _reach(subject, base)
    return base


def _reach(subject: Subject, base: Baseline) -> None:
    """Autograd's answer to "does the loss depend on what this site passes on?".

    Each site's tensor is re-emitted as a fresh autograd node (``t * 1``) so that only
    uses *after* the site count: an MoE router whose logits were already turned into
    routing weights inside the module, and are then only returned, does not reach. A
    tensor that needs no grad (frozen parameters, a rotary table, a mask) is re-emitted
    from a fresh leaf that does, so that the question has an answer for it too.
    """
    model = subject.hooked()
    keep = _Keep()
    names = set(base.float_sites())

    def re_emit(tensor: torch.Tensor, hook: Any) -> torch.Tensor:
        if tensor.requires_grad:
            return tensor * 1
        return tensor.detach().requires_grad_() * 1

    with HookedModule.hooks(model, fwd_hooks=[(lambda n: n in names, re_emit)]):
        with core_of(model).observing(keep, names):
            output = subject.run(model, grad=True)
    loss = subject.loss(output)
    if loss is None or not keep.tensors:
        return
    kept = list(keep.tensors)
    grads = torch.autograd.grad(loss, [keep.tensors[n] for n in kept], allow_unused=True)
    base.reaching = {n for n, g in zip(kept, grads, strict=True) if g is not None}
    base.unreached = set(kept) - base.reaching
    base.sensitive = {n for n, g in zip(kept, grads, strict=True) if g is not None and g.any()}


def _method(model: Any, name: str) -> Callable[..., Any]:
    """auto_hookpoint's own ``name`` bound to ``model``, whatever the model's class
    defines under that name (a Lightning module has its own ``setup``, ...)."""
    return functools.partial(getattr(HookedModule, name), model)


def _result(name: str, failures: dict[str, Any], notes: dict[str, Any], ok: str) -> CheckResult:
    """FAIL naming the first failure, else NOTE listing the first notes, else PASS."""
    if failures:
        return CheckResult(name, Status.FAIL, _first(failures), {**failures, **notes})
    if notes:
        return CheckResult(name, Status.NOTE, f"{ok}; {_first(notes, shown=3)}", notes)
    return CheckResult(name, Status.PASS, ok)


def _first(items: dict[str, Any], shown: int = 1) -> str:
    listed = "; ".join(f"{k}: {v}" for k, v in list(items.items())[:shown])
    more = len(items) - shown
    return f"{listed} (+{more} more)" if more > 0 else listed


# --------------------------------------------------------------------------- checks
def output_identical(subject: Subject, base: Baseline) -> CheckResult:
    name = "output_identical"
    if not base.deterministic:
        return CheckResult(
            name,
            Status.FAIL,
            "the forward is not deterministic: two un-hooked runs with the same seed differ, "
            "so nothing can be compared; make the forward repeatable (eval(), no state "
            "that the forward itself changes)",
        )
    difference = first_difference(base.expected, subject.run(subject.hooked()))
    if difference is None:
        return CheckResult(name, Status.PASS, "bit-identical to the un-hooked model")
    return CheckResult(
        name, Status.FAIL, f"the hooked model's output differs from the un-hooked one: {difference}"
    )


def identity_hooks_identical(subject: Subject, base: Baseline) -> CheckResult:
    """A hook returning a copy of its tensor on every site exercises the replace path."""
    model = subject.hooked()
    out = subject.call(
        _method(model, "run_with_hooks"), fwd_hooks=[(lambda n: True, lambda t, hook: t.clone())]
    )
    difference = first_difference(base.expected, out)
    if difference is None:
        return CheckResult(
            "identity_hooks_identical", Status.PASS,
            f"a copying hook on all {len(model.hook_dict)} sites leaves the output bit-identical",
        )  # fmt: skip
    return CheckResult(
        "identity_hooks_identical", Status.FAIL,
        f"replacing every site's tensor by an equal copy changed the output: {difference}",
    )  # fmt: skip


def sites_fire(subject: Subject, base: Baseline) -> CheckResult:
    failures: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name, record in base.records.items():
        path = record.module_path
        ran = base.witness.calls.get(path, 0)
        if ran == 0:
            notes[name] = "its module is never called by this forward"
        elif not base.witness.tensor_output.get(path, False) and record.kind != "parameter":
            notes[name] = "cannot fire: its module's output holds no tensor"
        elif record.calls != ran:
            failures[name] = f"its module ran {ran} time(s) but the site fired {record.calls}"
        elif ran > 1:
            notes[name] = f"fires {ran} times (its module is called {ran} times)"
    fired = len(base.fired())
    return _result("sites_fire", failures, notes, f"{fired} of {len(base.records)} sites fire")


def cache_complete(subject: Subject, base: Baseline) -> CheckResult:
    fired = base.fired()
    _, cache = subject.call(_method(subject.hooked(), "run_with_cache"))
    failures: dict[str, str] = {}
    for name, record in fired.items():
        if name not in cache:
            failures[name] = "fired but missing from run_with_cache"
        elif tuple(cache[name].shape) != record.shapes[-1]:
            failures[name] = f"cached shape {list(cache[name].shape)} != {list(record.shapes[-1])}"
    for name in set(cache) - set(fired):
        failures[name] = "cached although it did not fire"
    return _result("cache_complete", failures, {}, f"all {len(fired)} firing sites cached")


def edits_change_output(subject: Subject, base: Baseline, sample: int) -> CheckResult:
    notes = {
        name: "what it passes on does not reach the output, so edits do nothing"
        for name in base.unreached
    }
    candidates = [n for n in base.float_sites() if n not in base.unreached]
    if not candidates:
        return CheckResult(
            "edits_change_output", Status.SKIP, "no site's float tensor reaches the output"
        )
    step = max(1, len(candidates) // sample)
    chosen = candidates[::step][:sample]
    model = subject.hooked()
    generator = torch.Generator().manual_seed(subject.seed)

    def perturb(t: torch.Tensor, hook: Any) -> torch.Tensor:
        noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
        return t + noise.to(t.device, t.dtype) * (t.detach().abs().mean() + 1)

    run_with_hooks = _method(model, "run_with_hooks")
    unchanged = [
        name
        for name in chosen
        if outputs_equal(base.expected, subject.call(run_with_hooks, fwd_hooks=[(name, perturb)]))
    ]
    # Only where autograd shows that the output depends on the site is an edit without
    # effect a failure (its hook's result was not used); elsewhere it is worth a note.
    failures = {
        name: "adding noise here left the output unchanged, although the loss depends on it"
        for name in unchanged
        if name in base.sensitive
    }
    for name in unchanged:
        if name not in base.sensitive:
            notes[name] = (
                "adding noise here left the output unchanged; autograd cannot tell whether "
                "it should (its tensor needs no grad, or its gradient is zero)"
            )
    return _result(
        "edits_change_output",
        failures,
        notes,
        f"an edit at each of {len(chosen)} sampled sites changes the output",
    )


class _Keep(Observer):
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            self.tensors.setdefault(site.name, tensor)


def backward_hooks_fire(subject: Subject, base: Baseline) -> CheckResult:
    """Sites whose tensor requires grad and that the loss depends on (by autograd) must
    see a gradient."""
    model = subject.hooked()
    seen: set[str] = set()
    with_grad = _Keep()  # the sites whose tensor requires grad in the model as it is
    record: Callable[[torch.Tensor, Any], None] = lambda g, hook: seen.add(hook.name)  # noqa: E731
    with HookedModule.hooks(model, bwd_hooks=[(lambda n: n in base.reaching, record)]):
        with core_of(model).observing(with_grad, base.reaching):
            loss = subject.loss(subject.run(model, grad=True))
        in_loss = base.reaching & set(with_grad.tensors)
        if loss is None or not in_loss:
            return CheckResult(
                "backward_hooks_fire", Status.SKIP,
                "no site's tensor both requires grad and reaches the loss (frozen parameters, "
                "or an output without float tensors; pass loss_fn= to choose the loss)",
            )  # fmt: skip
        loss.backward()
    failures = {
        n: "takes part in the loss but its backward hook never fired" for n in in_loss - seen
    }
    return _result(
        "backward_hooks_fire",
        failures,
        {},
        f"backward hooks fire on all {len(in_loss)} sites in the loss",
    )


def unwrap_restores(subject: Subject, base: Baseline) -> CheckResult:
    plain = subject.plain()
    model = subject.hooked()
    first = next(iter(base.fired()), "hook_point")
    HookedRootModule.add_perma_hook(model, first, lambda t, hook: t)
    HookedRootModule.add_hook(model, first, lambda t, hook: t, dir="bwd")
    subject.call(_method(model, "run_with_cache"))
    restored = unwrap(model)
    failures: dict[str, str] = {}
    if type(restored) is not type(plain):
        failures["class"] = f"{type(restored).__qualname__} is not the original class"
    leftover = [
        p or "<root>"
        for p, m in restored.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
    ]  # noqa: E501
    if leftover:
        failures["hooks"] = f"torch hooks left on {leftover[:5]}"
    ours = [
        k for k in vars(restored) if k.startswith("_auto_hook") or k in ("hook_dict", "mod_dict")
    ]
    if ours:
        failures["attributes"] = f"attributes left: {ours}"
    if [n for n, _ in restored.named_parameters()] != [n for n, _ in plain.named_parameters()]:
        failures["parameters"] = "parameter names changed"
    if list(restored.state_dict()) != list(plain.state_dict()):
        failures["state_dict"] = "state_dict keys changed"
    # The plain copy gets the same history (one forward) so that state a forward
    # changes (counters, running statistics) is compared like for like.
    subject.run(plain)
    if base.deterministic:
        difference = first_difference(subject.run(plain), subject.run(restored))
        if difference is not None:
            failures["output"] = f"the unwrapped model's output differs: {difference}"
    return _result(
        "unwrap_restores", failures, {}, "original class, no hooks, same names and output"
    )


def to_dtype(subject: Subject, base: Baseline) -> CheckResult:
    dtype = torch.float64
    convert = lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
    wide = copy.copy(subject)
    wide.args = tuple(convert(a) for a in subject.args)
    wide.kwargs = {k: convert(v) for k, v in subject.kwargs.items()}
    try:
        # What the un-hooked model computes in float64, and the dtype each of its
        # modules really produced: a model may compute some things in another dtype on
        # purpose (transformers computes the loss in float32).
        plain = wide.witness(subject.plain().to(dtype))
    except Exception as error:  # the model itself does not run in float64
        return CheckResult(
            "to_dtype", Status.SKIP, f"the un-hooked model fails in float64: {error}"
        )
    model = subject.hooked().to(dtype)
    failures: dict[str, str] = {}
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        failures["parameters"] = "not all floating parameters converted"
    out, cache = wide.call(_method(model, "run_with_cache"))
    difference = first_difference(plain.output, out)
    if difference is not None:
        failures["output"] = f"hooked float64 output differs from the un-hooked one: {difference}"
    wrong = []
    for name, tensor in cache.items():
        record = base.records.get(name)
        if record is None or record.kind == "parameter":
            want = {dtype} if tensor.is_floating_point() else {tensor.dtype}
        else:
            want = plain.dtypes.get(record.module_path, {tensor.dtype})
        if tensor.dtype not in want:
            wrong.append(f"{name} ({tensor.dtype}, the module produced {sorted(map(str, want))})")
    if wrong:
        failures["cache"] = f"cached in another dtype than the module produced: {wrong[:3]}"
    return _result(
        "to_dtype", failures, {}, ".to(float64) converts the model; hooks and cache still work"
    )


def deepcopy_independent(subject: Subject, base: Baseline) -> CheckResult:
    model = subject.hooked()
    clone = copy.deepcopy(model)
    failures: dict[str, str] = {}
    difference = first_difference(base.expected, subject.run(clone))
    if base.deterministic and difference is not None:
        failures["output"] = f"the copy's output differs: {difference}"
    notes: dict[str, str] = {}
    site = next(iter(base.fired()), None)
    if site is None:
        notes["hooks"] = "no site fires on these inputs, so no hook on the copy can be tried"
    else:
        fired: list[str] = []
        HookedRootModule.add_hook(clone, site, lambda t, hook: fired.append("copy"))
        subject.run(model)
        if fired:
            failures["independence"] = "a hook added to the copy fired on the original"
        subject.run(clone)
        if not fired:
            failures["hooks"] = f"a hook on the copy's {site!r} did not fire"
    return _result(
        "deepcopy", failures, notes, "the copy computes the same and has hooks of its own"
    )


def class_and_instance_agree(subject: Subject, base: Baseline) -> CheckResult:
    name = "class_and_instance_agree"
    if subject.original_class is None:
        return CheckResult(
            name,
            Status.SKIP,
            "given an instance; pass the class and init_kwargs to check @auto_hook",
        )
    decorated = auto_hook(subject.original_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(subject.seed)
        from_class: Any = decorated(**subject.init_kwargs)
    from_instance = subject.hooked()
    failures: dict[str, str] = {}
    if list(from_class.hook_dict) != list(from_instance.hook_dict):
        failures["sites"] = "@auto_hook and auto_hook(instance) give different sites"
    else:
        difference = first_difference(subject.run(from_class), subject.run(from_instance))
        if difference is not None:
            failures["output"] = (
                f"@auto_hook and auto_hook(instance) compute different outputs: {difference}"
            )
    return _result(
        name, failures, {}, "@auto_hook and auto_hook(instance) agree on sites and output"
    )


def all_checks(edit_sample: int) -> list[Callable[[Subject, Baseline], CheckResult]]:
    return [
        output_identical,
        identity_hooks_identical,
        sites_fire,
        cache_complete,
        lambda s, b: edits_change_output(s, b, edit_sample),
        backward_hooks_fire,
        unwrap_restores,
        to_dtype,
        deepcopy_independent,
        class_and_instance_agree,
    ]


CHECK_NAMES = [
    "output_identical",
    "identity_hooks_identical",
    "sites_fire",
    "cache_complete",
    "edits_change_output",
    "backward_hooks_fire",
    "unwrap_restores",
    "to_dtype",
    "deepcopy",
    "class_and_instance_agree",
]
