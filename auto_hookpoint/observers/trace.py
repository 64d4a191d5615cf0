"""Trace: where the time goes, module by module, as a table or a Chrome trace.

    with trace(model) as tr:
        model(**inputs)                       # or model.generate(...), run_with_hooks, ...
    print(tr.table())                         # total and self time, calls, per module
    tr.save_chrome_trace("trace.json")        # open in Perfetto or chrome://tracing

Each module call is recorded with its start and end (``perf_counter_ns``), nesting
depth, thread, and the shapes and dtypes of its inputs and output. Self time is the
call's time minus that of the module calls directly inside it. With
``record_function=True`` each call is also a ``torch.profiler.record_function`` range,
so a ``torch.profiler`` run shows module names.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.observers.common import describe, module_sites, observing


@dataclass
class CallEvent:
    module: str  # module path ('' for the root)
    module_type: str
    start_ns: int
    end_ns: int
    depth: int
    thread: int
    inputs: list[str]
    outputs: list[str]
    children_ns: int = 0
    raised: bool = False  # the module raised; end_ns is when the trace closed

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def self_ns(self) -> int:
        return self.duration_ns - self.children_ns


@dataclass
class ModuleTime:
    module: str
    module_type: str
    calls: int
    total_ns: int
    self_ns: int


@dataclass
class _Open:
    site: Site
    start_ns: int
    inputs: list[str]
    children_ns: int = 0
    label: Any = None


class Trace(Observer):
    """The trace being recorded (while the ``with`` block runs) and its results."""

    def __init__(self, record_function: bool = False):
        self.events: list[CallEvent] = []
        self.record_function = record_function
        self._stacks: dict[int, list[_Open]] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- recording
    def on_enter(self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        label = None
        if self.record_function:
            label = torch.profiler.record_function(site.module_path or type(site.module).__name__)
            label.__enter__()
        stack = self._stacks.setdefault(threading.get_ident(), [])
        stack.append(_Open(site, time.perf_counter_ns(), describe((args, kwargs)), label=label))

    def on_exit(self, site: Site, output: Any) -> None:
        end = time.perf_counter_ns()
        stack = self._stacks.get(threading.get_ident(), [])
        while stack:  # calls that raised inside this one never reached on_exit
            frame = stack.pop()
            self._close(
                frame,
                stack,
                end,
                describe(output) if frame.site is site else [],
                frame.site is not site,
            )
            if frame.site is site:
                break

    def _close(
        self, frame: _Open, stack: list[_Open], end: int, outputs: list[str], raised: bool
    ) -> None:
        if frame.label is not None:
            frame.label.__exit__(None, None, None)
        event = CallEvent(
            frame.site.module_path, frame.site.module_type, frame.start_ns, end, len(stack),
            threading.get_ident(), frame.inputs, outputs, frame.children_ns, raised,
        )  # fmt: skip
        if stack:
            stack[-1].children_ns += event.duration_ns
        with self._lock:
            self.events.append(event)

    def _finish(self) -> None:
        end = time.perf_counter_ns()
        for stack in self._stacks.values():
            while stack:
                self._close(stack.pop(), stack, end, [], True)
        self.events.sort(key=lambda e: (e.start_ns, e.depth))

    # ---------------------------------------------------------------- results
    def summary(self) -> list[ModuleTime]:
        """Per module: calls, total and self time; slowest (by self time) first."""
        rows: dict[str, ModuleTime] = {}
        for e in self.events:
            row = rows.setdefault(e.module, ModuleTime(e.module, e.module_type, 0, 0, 0))
            row.calls += 1
            row.total_ns += e.duration_ns
            row.self_ns += e.self_ns
        return sorted(rows.values(), key=lambda r: r.self_ns, reverse=True)

    def table(self, top: int = 20) -> str:
        rows = self.summary()[:top]
        width = max([len(r.module or "<root>") for r in rows] + [6])
        lines = [
            f"{'module'.ljust(width)}  {'type':22s} {'calls':>5s} {'total ms':>9s} {'self ms':>9s}"
        ]
        for r in rows:
            lines.append(
                f"{(r.module or '<root>').ljust(width)}  {r.module_type[:22]:22s} {r.calls:5d} "
                f"{r.total_ns / 1e6:9.3f} {r.self_ns / 1e6:9.3f}"
            )
        return "\n".join(lines)

    def chrome_trace(self) -> dict[str, Any]:
        """The Chrome trace-event format ("X" complete events, times in microseconds)."""
        origin = min((e.start_ns for e in self.events), default=0)
        pid = os.getpid()
        return {
            "displayTimeUnit": "ms",
            "traceEvents": [
                {
                    "name": e.module or "<root>",
                    "cat": e.module_type,
                    "ph": "X",
                    "ts": (e.start_ns - origin) / 1e3,
                    "dur": e.duration_ns / 1e3,
                    "pid": pid,
                    "tid": e.thread,
                    "args": {
                        "inputs": e.inputs,
                        "outputs": e.outputs,
                        "depth": e.depth,
                        "raised": e.raised,
                    },
                }
                for e in self.events
            ],
        }

    def save_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as file:
            json.dump(self.chrome_trace(), file)


@contextlib.contextmanager
def trace(
    model: nn.Module,
    names: Iterable[str] | Callable[[str], bool] | None = None,
    record_function: bool = False,
) -> Iterator[Trace]:
    """Record every call of the watched modules (all, by default) in this context."""
    recorder = Trace(record_function)
    with observing(model, recorder, module_sites(model, names)):
        try:
            yield recorder
        finally:
            recorder._finish()
