"""Compiled code notices the torch hooks the hook core adds and removes.

An idle hooked model carries no torch hooks, and dynamo by default does not guard on a
module's hook dicts while they are empty (``torch._dynamo.config.
skip_nnmodule_hook_guards``): code compiled while a module had no hook would go on
running without the hook the core places there later, for every instance of the class.

So while a hooked model exists, every dynamo compilation is made with that option off:
dynamo's own compile-start and compile-end callbacks enter and leave
``torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)`` around it. Torch keeps
its config in ``ContextVar``s, so the patch holds in the compiling thread only, for the
duration of that compilation; the setting the user reads and sets is untouched, and so
are compilations made while no hooked model exists. Compiled code then also checks that
each module it calls still has no hooks (a few nanoseconds each per call) and is
recompiled when the core adds or removes one: once per distinct set of hooks, up to
``torch._dynamo.config.recompile_limit`` versions of each compiled function, beyond
which dynamo runs that function eagerly (still exact).

Dynamo builds a compiled frame's guards after tracing it, from the state it finds
then, not the state it traced: a hook placed or removed by another thread meanwhile
gave code traced without the hook guards that expect it (a ``run_with_cache`` in one
thread reused code traced in another with no hook on its site, and cached nothing). So
the core changes hooks and observer counts only inside :func:`changing_hooks`, which
waits while another thread compiles; a compilation starts once the changes under way
have ended. Each compilation thus traces and guards one and the same hook state.

``torch._dynamo.reset()`` clears dynamo's callbacks; :func:`guard_hooks_when_compiling`
registers them again, and every call of a hooked model calls it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch._dynamo
from torch._dynamo.callback import CallbackArgs, CallbackTrigger, callback_handler

_live_cores: weakref.WeakSet[Any] = weakref.WeakSet()  # the hook cores of hooked models
_register_lock = threading.Lock()
_patch = threading.local()  # .held: the config patch of the compilation in this thread


class _Gate:
    """Hook changes and dynamo compilations, one kind at a time (each thread's own
    changes during its own compilation excepted)."""

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.compiling: int | None = None  # the thread compiling with hook state frozen
        self.changes = 0  # hook changes under way, in all threads
        self.depth = threading.local()  # .value: this thread's nested changes


_GATE = _Gate()


@contextmanager
def changing_hooks() -> Iterator[None]:
    """Around every change of the state compiled code is traced from and guards on (a
    module's torch hooks, a site's hooks, observer counts): waits while another thread
    compiles. Reentrant."""
    gate, me = _GATE, threading.get_ident()
    outermost = getattr(gate.depth, "value", 0) == 0
    if outermost:
        with gate.condition:
            while gate.compiling is not None and gate.compiling != me:
                gate.condition.wait()
            gate.changes += 1
    gate.depth.value = getattr(gate.depth, "value", 0) + 1
    try:
        yield
    finally:
        gate.depth.value -= 1
        if outermost:
            with gate.condition:
                gate.changes -= 1
                gate.condition.notify_all()


def track(core: Any) -> None:
    """``core`` belongs to a hooked model: compile with hook guards while it lives."""
    _live_cores.add(core)
    guard_hooks_when_compiling()


def untrack(core: Any) -> None:
    _live_cores.discard(core)


def guard_hooks_when_compiling() -> None:
    """Make sure dynamo's compile callbacks include ours (cheap when they do)."""
    if _compile_started not in callback_handler.start_callbacks:
        with _register_lock:
            if _compile_started not in callback_handler.start_callbacks:
                callback_handler.register_start_callback(_compile_started)
                callback_handler.register_end_callback(_compile_ended)


def _compile_started(args: CallbackArgs) -> None:
    if (
        args.callback_trigger is CallbackTrigger.DYNAMO
        and len(_live_cores) > 0
        and getattr(_patch, "held", None) is None
    ):
        _freeze_hooks()
        patch = torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)
        patch.__enter__()
        _patch.held = patch


def _compile_ended(_args: CallbackArgs) -> None:
    patch: Any = getattr(_patch, "held", None)
    if patch is not None:
        _patch.held = None
        patch.__exit__(None, None, None)
    _thaw_hooks()


def _freeze_hooks() -> None:
    """Wait for the hook changes under way in other threads; hold new ones back."""
    gate = _GATE
    mine = 1 if getattr(gate.depth, "value", 0) > 0 else 0  # a change that compiles
    with gate.condition:
        while gate.changes > mine:
            gate.condition.wait()
        gate.compiling = threading.get_ident()


def _thaw_hooks() -> None:
    # Not necessarily in the thread that froze them: dynamo runs the end callbacks in
    # the thread whose compilation ends last when two overlap (a lazy backward's).
    gate = _GATE
    with gate.condition:
        if gate.compiling is not None:
            gate.compiling = None
            gate.condition.notify_all()
