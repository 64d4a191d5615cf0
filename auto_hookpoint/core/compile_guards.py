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

``torch._dynamo.reset()`` clears dynamo's callbacks; :func:`guard_hooks_when_compiling`
registers them again, and every call of a hooked model calls it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch._dynamo
from torch._dynamo.callback import CallbackArgs, CallbackTrigger, callback_handler

_live_cores: weakref.WeakSet[Any] = weakref.WeakSet()  # the hook cores of hooked models
_register_lock = threading.Lock()
_patch = threading.local()  # .held: the config patch of the compilation in this thread


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
        patch = torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)
        patch.__enter__()
        _patch.held = patch


def _compile_ended(_args: CallbackArgs) -> None:
    patch: Any = getattr(_patch, "held", None)
    if patch is not None:
        _patch.held = None
        patch.__exit__(None, None, None)
