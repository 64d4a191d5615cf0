"""What one call of a hooked model sees of its caller's context, in a form compiled code reads.

Observers and ``hooks()`` scopes belong to the thread or asyncio task that entered them:
they live in ``ContextVar``s (:data:`ACTIVE_OBSERVERS`, :data:`ACTIVE_SCOPES`). Dynamo
cannot trace a ``ContextVar`` lookup (each one is a graph break), so every call of a
hooked model begins, outside any compiled frame, with :func:`enter_call`: it copies what
the caller's context holds into thread-local state, which the core's dispatch reads
while dynamo traces. Dynamo traces thread-local reads without a break and guards on the
values it read, evaluated in the calling thread, so a compiled forward is reused exactly
while the same kinds of observers watch the same sites and the same scopes are visible,
and recompiled (once per such set) otherwise.

Eager dispatch reads the ``ContextVar``s directly; the copies are read only while dynamo
traces. A compiled frame that runs outside any call of a hooked model (a submodule
compiled and called on its own) finds no copy and reads the ``ContextVar``s: a graph
break, never a wrong answer. (How compiled code notices the torch hooks the core adds and
removes: :mod:`auto_hookpoint.core.compile_guards`.)
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

import torch
from torch._dynamo.eval_frame import skip_code

from auto_hookpoint.core.observers import ACTIVE_OBSERVERS, ActiveObservers

R = TypeVar("R")
T = TypeVar("T")

not_traced = torch.compiler.disable(recursive=False)
"""Decorator for the package's entry points (``run_with_cache``, ``run_until``, a hooked
model's ``__call__``, ...): dynamo never traces their own frames, which do context
bookkeeping it cannot trace (``ContextVar``s, locks), but still compiles what they call
(the model's forward). So ``torch.compile(model.run_with_cache)`` compiles the forward,
in one graph, instead of breaking the graph inside ``run_with_cache``."""


def runs_eagerly(fn: Callable[..., R]) -> Callable[..., R]:
    """Decorator for a hooked model's ``__call__``: dynamo runs the frames of ``fn`` eagerly
    and compiles what it calls, as ``torch.compiler.disable(recursive=False)`` makes it do,
    but without that decorator's wrapper, which refuses ``torch.export`` outright. (The
    same primitive, ``skip_code``, marks the wrapper's own frame in torch.) ``fn`` itself
    decides what to do when dynamo traces a caller of it (``torch.compiler.is_dynamo_compiling()``).
    """
    skip_code(fn.__code__)
    return fn


# The hooks() scopes visible in this context.
ACTIVE_SCOPES: ContextVar[frozenset[HookScope]] = ContextVar(
    "auto_hookpoint_active_hook_scopes", default=frozenset()
)


class _ThisCall(threading.local):
    """Per thread, while a call of a hooked model runs: the caller's value of each
    CallCopied ContextVar. Outside any call, or in a thread that never made one, each
    attribute is its class default (``_NO_COPY``, set as each CallCopied is made): dynamo
    guards on these attributes and evaluates the guards in whichever thread calls the
    compiled code, so they must exist in every thread."""


_THIS_CALL = _ThisCall()


class _Seen(threading.local):
    """Per thread: whether the call running there was made from a context holding a
    given scope (True/False), or None when no call of a hooked model is running (also in
    a thread that never made one: dynamo evaluates its guards on ``visible`` there)."""

    visible: bool | None = None


_scopes_lock = threading.Lock()
_live_scopes: tuple[HookScope, ...] = ()  # replaced, never mutated: readers need no lock


class HookScope:
    """One ``hooks()`` scope. Its forward hooks run only where it is :meth:`visible`."""

    __slots__ = ("_seen", "__weakref__")

    def __init__(self) -> None:
        self._seen = _Seen()

    def visible(self) -> bool:
        """Whether this scope belongs to the context of the call now running."""
        if torch.compiler.is_dynamo_compiling():
            seen = self._seen.visible
            if seen is not None:
                return bool(seen)
        return self in ACTIVE_SCOPES.get()

    def open(self) -> None:
        """Count this scope among the live ones, whose visibility each call records."""
        global _live_scopes
        with _scopes_lock:
            _live_scopes = (*_live_scopes, self)

    def close(self) -> None:
        global _live_scopes
        with _scopes_lock:
            _live_scopes = tuple(s for s in _live_scopes if s is not self)


def carry_context(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn``, made to run with the caller's temporary hooks, caches and observers.

    Temporary hooks (``hooks()``, ``run_with_hooks``), ``run_with_cache``, ``capture`` and
    the other observers belong to the thread or asyncio task that entered them, so work
    handed to another thread does not see them: ``threading.Thread``,
    ``ThreadPoolExecutor.submit`` and ``loop.run_in_executor`` start from an empty
    context (``asyncio.to_thread`` copies it). Wrap the callable you hand over::

        with model.hooks(fwd_hooks=[("model.layers.0.hook_point", ablate)]):
            worker = Thread(target=carry_context(model.generate), kwargs=gen_kwargs)
            worker.start()                  # e.g. feeding a TextIteratorStreamer
            for text in streamer: ...
            worker.join()

    The context is captured when ``carry_context`` is called; each call of the result
    runs ``fn`` in its own copy of it (so several threads may run it at once). Hooks and
    observers that have ended by then are gone for the worker too: keep the ``with``
    block open until the work is done.
    """
    if not callable(fn):
        raise TypeError(
            f"carry_context takes the function to hand to another thread (e.g. "
            f"model.generate), not a {type(fn).__name__}"
        )
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def in_caller_context(*args: Any, **kwargs: Any) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return in_caller_context


class CallCopied(Generic[T]):
    """A ``ContextVar`` whose value every call of a hooked model copies (:func:`enter_call`),
    for the core's dispatch to read while dynamo traces; see the module docstring."""

    def __init__(self, var: ContextVar[T]):
        self.var = var
        self.attr = f"copied_{var.name}"  # its attribute of _THIS_CALL
        setattr(_ThisCall, self.attr, _NO_COPY)  # the default in every thread
        _COPIED.append(self)

    def get(self) -> T:
        """The value in the current context; while dynamo traces, the call's copy of it
        (without a copy, outside any call of a hooked model: the ContextVar, a break)."""
        if torch.compiler.is_dynamo_compiling():
            copied: Any = getattr(_THIS_CALL, self.attr)
            if copied is not _NO_COPY:
                return copied  # type: ignore[no-any-return]
        return self.var.get()


_COPIED: list[CallCopied[Any]] = []
_NO_COPY = object()
OBSERVERS = CallCopied(ACTIVE_OBSERVERS)


def enter_call() -> list[Any]:
    """Copy the caller's context (observers, muted modules, visible scopes) for the call
    of a hooked model now starting. Returns what :func:`exit_call` needs to restore the
    copy of an enclosing call. Runs eagerly, before any compiled frame of the call (see
    ``HookedModule.__call__``)."""
    here = _THIS_CALL
    enclosing = []
    for copied in _COPIED:
        enclosing.append(getattr(here, copied.attr, _NO_COPY))
        setattr(here, copied.attr, copied.var.get())
    _mark_scopes(ACTIVE_SCOPES.get())
    return enclosing


def exit_call(enclosing: list[Any]) -> None:
    here = _THIS_CALL
    for copied, value in zip(_COPIED, enclosing, strict=False):  # (registered meanwhile)
        if value is _NO_COPY:
            delattr(here, copied.attr)
        else:
            setattr(here, copied.attr, value)
    _mark_scopes(None if enclosing[0] is _NO_COPY else ACTIVE_SCOPES.get())


def _mark_scopes(active: frozenset[HookScope] | None) -> None:
    for scope in _live_scopes:
        scope._seen.visible = None if active is None else scope in active


def active_observers() -> ActiveObservers:
    """The observers of the current context: (core, observer, watched site names) each."""
    return OBSERVERS.get()


def copied_for_this_call() -> bool:
    """Whether a call of a hooked model runs in this thread, with its context copied: then
    the copy, not state other threads share, says who watches (read while dynamo traces,
    it is what dynamo guards on)."""
    return getattr(_THIS_CALL, OBSERVERS.attr) is not _NO_COPY


def watched_by_untraced_observer(core: Any) -> bool:
    """Whether an observer whose callbacks cannot be traced (``Observer.traced`` unset)
    watches a site of ``core`` in the call now running."""
    copied = getattr(_THIS_CALL, OBSERVERS.attr)
    observers: ActiveObservers = () if copied is _NO_COPY else copied
    return any(owner is core and not observer.traced for owner, observer, _ in observers)
