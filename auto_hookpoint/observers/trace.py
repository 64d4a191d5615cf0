"""Trace: where the time goes, module by module, as a table or a Chrome trace.

    with trace(model) as tr:
        model(**inputs)                       # or model.generate(...), run_with_hooks, ...
    print(tr.key_averages().table(sort_by="self_ns", row_limit=10))  # per module
    tr.export_chrome_trace("trace.json")      # open in Perfetto or chrome://tracing

Each module call is recorded with its start and end (``perf_counter_ns``), nesting
depth, thread, and the shapes and dtypes of its inputs and output. Self time is the
call's time minus that of the module calls directly inside it. With
``record_function=True`` each call is also a ``torch.profiler.record_function`` range,
so a ``torch.profiler`` run shows module names.

The names follow ``torch.profiler``'s: ``key_averages()`` (one row per module, with a
``table(sort_by=..., row_limit=...)``), ``export_chrome_trace(path)``, and the sort
keys ``self_cpu_time_total`` / ``cpu_time_total`` (host wall-clock time, as torch's
CPU times are) for ``self_ns`` / ``total_ns``.
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
from auto_hookpoint.observers.common import KeyAverages, describe, module_sites, observing


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
    """One module's calls in a trace: how many (``count``, as torch.profiler says), their
    time in all (``total_ns``) and without the module calls inside them (``self_ns``)."""

    module: str
    module_type: str
    count: int
    total_ns: int
    self_ns: int


# sort_by: the row's column, or torch.profiler's name for the same quantity
TIME_SORT_KEYS = {
    "self_ns": "self_ns",
    "total_ns": "total_ns",
    "count": "count",
    "self_cpu_time_total": "self_ns",
    "cpu_time_total": "total_ns",
}


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
    def key_averages(self) -> KeyAverages[ModuleTime]:
        """One row per module (calls, total and self time), slowest by self time first;
        ``.table(sort_by="self_ns" | "total_ns" | "count", row_limit=100)`` prints it."""
        rows: dict[str, ModuleTime] = {}
        for e in self.events:
            row = rows.setdefault(e.module, ModuleTime(e.module, e.module_type, 0, 0, 0))
            row.count += 1
            row.total_ns += e.duration_ns
            row.self_ns += e.self_ns
        ordered = sorted(rows.values(), key=lambda r: r.self_ns, reverse=True)
        return KeyAverages(ordered, TIME_SORT_KEYS, "self_ns", _time_table)

    def table(self, row_limit: int = 20, sort_by: str = "self_ns") -> str:
        """``key_averages().table(sort_by=sort_by, row_limit=row_limit)``."""
        return self.key_averages().table(sort_by=sort_by, row_limit=row_limit)

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

    def export_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`chrome_trace` as JSON, as ``torch.profiler``'s method of this name
        does (open it in Perfetto or chrome://tracing)."""
        with open(path, "w") as file:
            json.dump(self.chrome_trace(), file)

    save_chrome_trace = export_chrome_trace  # the spelling of the first README


def _time_table(rows: list[ModuleTime]) -> str:
    width = max([len(r.module or "<root>") for r in rows] + [6])
    lines = [
        f"{'module'.ljust(width)}  {'type':22s} {'calls':>5s} {'total ms':>9s} {'self ms':>9s}"
    ]
    for r in rows:
        lines.append(
            f"{(r.module or '<root>').ljust(width)}  {r.module_type[:22]:22s} {r.count:5d} "
            f"{r.total_ns / 1e6:9.3f} {r.self_ns / 1e6:9.3f}"
        )
    return "\n".join(lines)


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
