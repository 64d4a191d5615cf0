"""Stand-in blocks: blocks that answer a call with a given value instead of computing.

``resume_from`` makes blocks 0..k of a stack answer from banked activations. Each block
gets a stand-in forward in its instance ``__dict__`` for the duration, where accelerate
keeps its own wrapped forward on a dispatched model: the stand-in calls that (or the
class's forward) in every other context, and the very object that was there is put back
afterwards. The stand-in answers only in the context (thread or asyncio task) that set
it up, as observers do; another thread running the same model meanwhile computes as
usual, and concurrent resumes share one installed stand-in per block.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from torch import nn

from auto_hookpoint.core.context import CallCopied

Answer = Callable[[tuple[Any, ...], dict[str, Any]], Any]

_ANSWERS: ContextVar[Mapping[int, Answer] | None] = ContextVar(
    "auto_hookpoint_stand_ins", default=None
)
_ANSWERS_IN_CALL = CallCopied(_ANSWERS)  # what compiled code reads (core/context.py)
_MISSING = object()


class _StandInForward:
    """Put in a block's ``__dict__["forward"]``: answers in the contexts that ask it to."""

    def __init__(self, block: nn.Module, previous: Any):
        self.block = block
        self.previous = previous  # what was in __dict__["forward"], or _MISSING
        self.users = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        answer = (_ANSWERS_IN_CALL.get() or {}).get(id(self.block))
        if answer is not None:
            return answer(args, kwargs)
        if self.previous is not _MISSING:
            return self.previous(*args, **kwargs)
        return type(self.block).forward(self.block, *args, **kwargs)


_INSTALLED: dict[int, _StandInForward] = {}
_LOCK = threading.Lock()


def _install(block: nn.Module) -> None:
    with _LOCK:
        stand_in = _INSTALLED.get(id(block))
        if stand_in is None:
            stand_in = _StandInForward(block, block.__dict__.get("forward", _MISSING))
            block.__dict__["forward"] = _INSTALLED[id(block)] = stand_in
        stand_in.users += 1


def _uninstall(block: nn.Module) -> None:
    with _LOCK:
        stand_in = _INSTALLED[id(block)]
        stand_in.users -= 1
        if stand_in.users:
            return
        del _INSTALLED[id(block)]
        if block.__dict__.get("forward") is stand_in:
            if stand_in.previous is _MISSING:
                del block.__dict__["forward"]
            else:
                block.__dict__["forward"] = stand_in.previous


@contextlib.contextmanager
def standing_in(answers: Mapping[nn.Module, Answer]) -> Iterator[None]:
    """In this context, until exit, calling each block in ``answers`` returns
    ``answer(args, kwargs)`` instead of running its forward (its hooks still run)."""
    installed: list[nn.Module] = []
    token = _ANSWERS.set({**(_ANSWERS.get() or {}), **{id(b): a for b, a in answers.items()}})
    try:
        for block in answers:
            _install(block)
            installed.append(block)
        yield
    finally:
        for block in installed:
            _uninstall(block)
        _ANSWERS.reset(token)
