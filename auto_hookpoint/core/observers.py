"""Observers: code that watches sites while a forward runs, scoped to one context.

An observer is active only inside the thread or asyncio task that entered it, as
transformers' ``output_capturing`` does: the active observers live in a ``ContextVar``,
so another thread running the same model sees none of them, and a site with no
observer pays one context lookup (see :mod:`auto_hookpoint.core.context` for how a
compiled forward sees them).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar

from auto_hookpoint.core.structure import Path

if TYPE_CHECKING:
    from auto_hookpoint.core.hook_core import HookCore
    from auto_hookpoint.core.sites import Site


class Observer:
    """Base class. Override the callbacks you need.

    For a module's OUTPUT sites the order of events is ``on_enter`` (before the module
    runs; the core places a pre-hook for it only if the observer overrides it), then
    ``on_output`` (after the site's hooks) or ``on_no_tensor``, then ``on_exit``. A
    module that raises gets no ``on_exit``.

    Compiled models: the callbacks of an observer whose class sets ``traced`` are traced
    into the compiled graph by dynamo, so they must be traceable without a graph break
    (tensor operations, storing into the observer's own containers, raising an
    ``Exception`` subclass that does not override ``__init__``). While any other
    observer watches a hooked model, each call of the model runs eagerly, which is
    exact whatever the callbacks do (clocks, memory counters, ``.item()``); a part of the
    model compiled on its own (a compiled ``model.forward``, a compiled submodule) then
    runs the watched modules' dispatch eagerly, a graph break at each.
    """

    traced: ClassVar[bool] = False

    def on_enter(self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """``site``'s module is about to run with these arguments."""

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        """``site`` fired with ``tensor`` (after any user hook replaced it), found at ``path``
        inside its module's output (``()``: the output is the tensor; parameters: ``()``)."""

    def on_no_tensor(self, site: Site, output: Any) -> None:
        """``site``'s module ran, but its output held no tensor, so the site did not fire."""

    def on_exit(self, site: Site, output: Any) -> None:
        """``site``'s module has returned ``output`` (with any hook's replacement in it)."""


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised by an observer's callback to end the forward early (the split exit).

    Subclasses must not override ``__init__`` (dynamo then traces the raise). Dynamo
    cannot compile an exception that leaves the compiled function, so in compiled code the
    hooked model's forward catches it and returns it, and the model's call raises it
    again, outside the compiled region (see ``auto_hookpoint.hooked``); a module that
    receives one as its "output" is being unwound, and none of its sites fire.
    """


def wants_enter(observer: Observer) -> bool:
    return type(observer).on_enter is not Observer.on_enter


# Each entry: (the core it watches, the observer, the names of the sites it watches).
ActiveObservers = tuple[tuple["HookCore", Observer, frozenset[str]], ...]
ACTIVE_OBSERVERS: ContextVar[ActiveObservers] = ContextVar(
    "auto_hookpoint_active_observers", default=()
)
