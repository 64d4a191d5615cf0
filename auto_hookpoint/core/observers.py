"""Observers: code that watches sites while a forward runs, scoped to one context.

An observer is active only inside the thread or asyncio task that entered it, as
transformers' ``output_capturing`` does: the active observers live in a ``ContextVar``,
so another thread running the same model sees none of them, and a site with no
observer pays one context lookup.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from auto_hookpoint.core.structure import Path

if TYPE_CHECKING:
    from auto_hookpoint.core.hook_core import HookCore
    from auto_hookpoint.core.sites import Site


class Observer:
    """Base class. Override the callbacks you need; each runs after the site's hooks."""

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        """``site`` fired with ``tensor`` (after any user hook replaced it), found at ``path``
        inside its module's output (``()``: the output is the tensor; parameters: ``()``)."""

    def on_no_tensor(self, site: Site, output: Any) -> None:
        """``site``'s module ran, but its output held no tensor, so the site did not fire."""


# Each entry: (the core it watches, the observer, the names of the sites it watches).
ActiveObservers = tuple[tuple["HookCore", Observer, frozenset[str]], ...]
ACTIVE_OBSERVERS: ContextVar[ActiveObservers] = ContextVar(
    "auto_hookpoint_active_observers", default=()
)
