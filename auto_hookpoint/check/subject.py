"""The model under check: fresh copies, seeded runs, and an independent witness."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from auto_hookpoint.core.sites import Site, SiteKind
from auto_hookpoint.core.structure import find_primary, get_at, tensors_with_paths
from auto_hookpoint.hooked import HookedModule, auto_hook, original_class, unwrap


@dataclass
class Witness:
    """What really ran in an un-hooked forward, seen by a *global* torch hook, so that a
    model removing hooks from its own modules cannot hide a call from it."""

    calls: dict[str, int] = field(default_factory=dict)  # module path -> calls
    tensor_output: dict[str, bool] = field(default_factory=dict)  # module path -> any tensor
    # module path -> the dtypes of its primary tensor, over its calls
    dtypes: dict[str, set[torch.dtype]] = field(default_factory=dict)
    output: Any = None  # what the forward returned


@dataclass
class Subject:
    """Everything a check needs. Every model a check touches is a fresh deep copy."""

    label: str
    template: nn.Module  # un-hooked, never run by a check
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    seed: int
    original_class: type[nn.Module] | None  # when a class was given
    init_kwargs: dict[str, Any]
    loss_fn: Callable[[Any], torch.Tensor] | None

    def plain(self) -> nn.Module:
        return copy.deepcopy(self.template)

    def hooked(self) -> Any:
        return auto_hook(self.plain())

    def run(self, model: Any, *, grad: bool = False, **extra: Any) -> Any:
        """One forward with the RNG seeded (so dropout and sampling repeat) and restored."""
        with torch.random.fork_rng(devices=[]), torch.set_grad_enabled(grad):
            torch.manual_seed(self.seed)
            return model(*self.args, **self.kwargs, **extra)

    def call(self, fn: Callable[..., Any], **extra: Any) -> Any:
        """Like run, for a method such as ``model.run_with_hooks``."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed)
            return fn(*self.args, **self.kwargs, **extra)

    def loss(self, output: Any) -> torch.Tensor | None:
        """``loss_fn(output)``; by default the mean square of the output's floating
        tensors that require grad, or None when there is none (a frozen model, an
        integer output): then nothing can be asked of autograd."""
        if self.loss_fn is not None:
            return self.loss_fn(output)
        floats = [t for t in tensors_in(output) if t.is_floating_point() and t.requires_grad]
        if not floats:
            return None
        return sum(t.float().pow(2).mean() for t in floats)  # type: ignore[return-value]

    def witness(self, model: nn.Module | None = None) -> Witness:
        """Run ``model`` (by default a fresh un-hooked copy) once under a global torch
        hook and record what each of its modules did."""
        model = self.plain() if model is None else model
        paths = {id(m): p for p, m in model.named_modules()}
        seen = Witness()

        def record(module: nn.Module, _args: Any, output: Any) -> None:
            path = paths.get(id(module))
            if path is not None:
                seen.calls[path] = seen.calls.get(path, 0) + 1
                primary = find_primary(output)
                seen.tensor_output[path] = seen.tensor_output.get(path, False) or (
                    primary is not None
                )
                if primary is not None:
                    seen.dtypes.setdefault(path, set()).add(get_at(output, primary).dtype)

        handle = register_module_forward_hook(record)
        try:
            seen.output = self.run(model)
        finally:
            handle.remove()
        return seen


def make_subject(
    target: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    init_kwargs: Mapping[str, Any],
    seed: int,
    loss_fn: Callable[[Any], torch.Tensor] | None,
) -> Subject:
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"check_auto_hook takes an nn.Module class or instance, not {target!r}")
        original = original_class(target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            template = original(**init_kwargs)
        return Subject(
            original.__qualname__, template, args, dict(kwargs), seed, original,
            dict(init_kwargs), loss_fn,
        )  # fmt: skip
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"check_auto_hook takes an nn.Module class or instance, not {type(target).__name__}"
        )
    # Work on a copy: the user's model is never changed.
    template = copy.deepcopy(target)
    if isinstance(template, HookedModule):
        unwrap(template)
    return Subject(
        f"{type(template).__qualname__} instance", template, args, dict(kwargs), seed, None,
        dict(init_kwargs), loss_fn,
    )  # fmt: skip


def tensors_in(output: Any) -> list[torch.Tensor]:
    """Every tensor in an output structure, depth first."""
    return [tensor for _, tensor in tensors_with_paths(output)]


def output_sites(sites: Mapping[str, Site]) -> list[Site]:
    return [s for s in sites.values() if s.kind is not SiteKind.PARAMETER]
