"""Muted modules: modules whose sites stay silent in one context.

``resume_from`` makes the blocks before the split return banked activations instead of
computing; those blocks are called, but nothing of them is computed, so none of their
sites may fire (a cache of layer 0 must not report layer 2's activation). The core asks
:func:`is_muted` before firing a module's sites. Like observers, muting is scoped with a
``ContextVar``: another thread running the same model is not muted. While no context
mutes anything (the usual case) the check is one read of a counter.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from torch import nn

from auto_hookpoint.core.context import CallCopied

_MUTED: ContextVar[frozenset[int]] = ContextVar("auto_hookpoint_muted", default=frozenset())
_MUTED_IN_CALL = CallCopied(_MUTED)  # what compiled code reads (core/context.py)


class _Scopes:
    """How many muting scopes are open in any context (so idle checks skip the ContextVar)."""

    def __init__(self) -> None:
        self.open = 0
        self.lock = threading.Lock()


_SCOPES = _Scopes()


def is_muted(module: nn.Module) -> bool:
    """True if ``module``'s sites must stay silent in the current context."""
    return _SCOPES.open > 0 and id(module) in _MUTED_IN_CALL.get()


@contextlib.contextmanager
def muted(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Silence every site of ``modules`` (not of their submodules) in this context, until exit."""
    held = list(modules)  # keeps the modules (and so their ids) alive for the scope
    token = _MUTED.set(_MUTED.get() | {id(module) for module in held})
    with _SCOPES.lock:
        _SCOPES.open += 1
    try:
        yield
    finally:
        with _SCOPES.lock:
            _SCOPES.open -= 1
        _MUTED.reset(token)
