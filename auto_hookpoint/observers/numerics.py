"""Numerics: the first module that produced a NaN or an Inf, forward and backward.

    with find_nonfinite(model) as found:      # raise_on_first=True: stop right there
        loss = model(**inputs).loss
        loss.backward()
    found.first                               # a Finding, or None

A *producer* is a module whose output holds a NaN while its inputs held none, or an
Inf while its inputs held none; a module that merely passes one on is not reported.
The two kinds are told apart because inputs may hold one of them legitimately: an
additive attention mask holds ``-inf``, and the attention module that turns a fully
masked row into NaN is the producer of that NaN. (A module given NaN that makes more
NaN is not found: its inputs already held the kind it produced.) Modules are checked
in execution order, so the innermost producer is found first; the forward reports the
first producer of NaN and the first producer of Inf (a module building a ``-inf`` mask
from a boolean one is an Inf producer, and must not hide the NaN made later).

In the backward pass the same is asked of gradients: the first module whose input
gradient is non-finite while the gradient of its output was finite (seen through
tensor hooks on its inputs and outputs; where a tensor feeds several modules, its
gradient is their sum). Integer and non-tensor values are skipped.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import tensors_with_paths
from auto_hookpoint.errors import AutoHookError
from auto_hookpoint.observers.common import module_sites, observing


class NonFiniteError(AutoHookError, FloatingPointError):
    """A module produced a NaN or an Inf (with ``raise_on_first=True``)."""

    def __init__(self, finding: Finding):
        super().__init__(str(finding))
        self.finding = finding


@dataclass
class Finding:
    module: str
    module_type: str
    direction: str  # "forward" or "backward"
    path: str  # where inside the output (forward) or which input (backward)
    nan: int
    inf: int
    call: int
    # Forward: the NaN and Inf its inputs held (a -inf mask), none of the kind produced.
    input_nan: int = 0
    input_inf: int = 0

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        what = "output" if self.direction == "forward" else "input gradient"
        if self.direction == "backward":
            source = "from finite output gradients"
        elif self.input_nan or self.input_inf:
            source = (
                f"from inputs that held {self.input_nan} NaN and {self.input_inf} Inf "
                f"(but no {'NaN' if self.nan and not self.input_nan else 'Inf'})"
            )
        else:
            source = "from finite inputs"
        return (
            f"{self.module or '<root>'} ({self.module_type}, call {self.call}) produced "
            f"{self.nan} NaN and {self.inf} Inf in its {what}{where} ({self.direction}), "
            f"{source}"
        )


def _nonfinite(value: Any) -> list[tuple[str, int, int]]:
    found = []
    for path, tensor in tensors_with_paths(value):
        if tensor.is_floating_point() or tensor.is_complex():
            # A NaN or Inf makes the sum non-finite; a finite sum means all are finite.
            # (A sum that overflows is checked in full, so the answer is exact.)
            if bool(
                torch.isfinite(
                    tensor.sum(dtype=torch.float64 if tensor.is_floating_point() else None)
                )
            ):
                continue
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                nan = int(torch.isnan(tensor).sum())
                found.append((path, nan, int((~finite).sum()) - nan))
    return found


@dataclass
class _Frame:
    site: Site
    call: int
    input_nan: int  # NaN and Inf in the inputs, over every input tensor
    input_inf: int
    outputs_grad_finite: dict[int, bool] = field(default_factory=dict)


class NonFiniteSearch(Observer):
    def __init__(self, raise_on_first: bool, backward: bool):
        self.raise_on_first = raise_on_first
        self.backward = backward
        self.findings: list[Finding] = []
        self._stack: list[_Frame] = []
        self._calls: dict[str, int] = {}
        self._kinds_found: set[str] = set()  # "NaN", "Inf": forward producers found

    @property
    def first(self) -> Finding | None:
        """The first producer found (forward findings come before backward ones)."""
        return self.findings[0] if self.findings else None

    def _report(self, finding: Finding) -> None:
        self.findings.append(finding)
        if self.raise_on_first and len(self.findings) == 1:
            raise NonFiniteError(finding)

    def on_enter(self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = self._calls[site.name] = self._calls.get(site.name, 0) + 1
        found = _nonfinite((args, kwargs))
        frame = _Frame(site, call, sum(n for _, n, _ in found), sum(i for _, _, i in found))
        self._stack.append(frame)
        if self.backward and torch.is_grad_enabled():
            for path, tensor in tensors_with_paths((args, kwargs)):
                if tensor.requires_grad and tensor.is_floating_point():
                    tensor.register_hook(functools.partial(self._input_grad, frame, path))

    def on_exit(self, site: Site, output: Any) -> None:
        while self._stack:  # frames of calls that raised never reached on_exit
            frame = self._stack.pop()
            if frame.site is site:
                break
        else:
            return
        if self.backward and torch.is_grad_enabled():
            for _, tensor in tensors_with_paths(output):
                if tensor.requires_grad and tensor.is_floating_point():
                    tensor.register_hook(functools.partial(self._output_grad, frame))
        wanted = {"NaN", "Inf"} - self._kinds_found
        if frame.input_nan:
            wanted.discard("NaN")
        if frame.input_inf:
            wanted.discard("Inf")
        if not wanted:
            return
        # The first tensor of the output holding a kind of non-finite value that no
        # input held and no earlier module was found producing.
        for path, nan, inf in _nonfinite(output):
            new = wanted & ({"NaN"} if nan else set()) | wanted & ({"Inf"} if inf else set())
            if new:
                self._kinds_found |= new
                self._report(
                    Finding(
                        site.module_path,
                        site.module_type,
                        "forward",
                        path,
                        nan,
                        inf,
                        frame.call,
                        frame.input_nan,
                        frame.input_inf,
                    )  # fmt: skip
                )
                return

    def findings_forward(self) -> list[Finding]:
        return [f for f in self.findings if f.direction == "forward"]

    def _output_grad(self, frame: _Frame, grad: torch.Tensor) -> None:
        frame.outputs_grad_finite[id(grad)] = bool(torch.isfinite(grad).all())

    def _input_grad(self, frame: _Frame, path: str, grad: torch.Tensor) -> None:
        if any(f.direction == "backward" for f in self.findings):
            return
        # Only a module whose outputs received gradients, all finite, can have made a
        # non-finite one (a module whose outputs need no grad, like a rotary table,
        # merely shares its input with the modules that do).
        received = frame.outputs_grad_finite
        if received and all(received.values()) and not bool(torch.isfinite(grad).all()):
            nan = int(torch.isnan(grad).sum())
            inf = int((~torch.isfinite(grad)).sum()) - nan
            site = frame.site
            self._report(
                Finding(site.module_path, site.module_type, "backward", path, nan, inf, frame.call)
            )


@contextlib.contextmanager
def find_nonfinite(
    model: nn.Module,
    raise_on_first: bool = False,
    backward: bool = True,
    names: Iterable[str] | Callable[[str], bool] | None = None,
) -> Iterator[NonFiniteSearch]:
    """Watch the forward (and backward) passes run in this context for the first NaN/Inf."""
    search = NonFiniteSearch(raise_on_first, backward)
    with observing(model, search, module_sites(model, names)):
        yield search
