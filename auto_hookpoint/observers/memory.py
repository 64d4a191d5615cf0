"""Memory: where the memory goes, module by module.

    with memory_profile(model) as mem:
        model(**inputs)
    print(mem.table())              # top modules by bytes they output, and the peak
    mem.records                     # one MemoryRecord per module call (as data)
    mem.save_bar_chart("mem.png")   # needs matplotlib (pip install auto_hookpoint[plot])

Per call it records the bytes of the tensors the module returned (each storage counted
once) and, around the call, the allocator's allocated and peak bytes on CUDA, or the
process's resident memory on CPU.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.devices import execution_device
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import tensors_with_paths
from auto_hookpoint.observers.common import module_sites, observing


@dataclass
class MemoryRecord:
    module: str
    module_type: str
    call: int  # the n-th call of this module in the context
    output_bytes: int
    device: str  # "cuda:0", or "cpu" (process memory)
    before_bytes: int  # allocated (CUDA) / resident (CPU) when the module started
    after_bytes: int  # ... when it returned
    peak_bytes: int  # CUDA: the allocator's peak during the call; CPU: max(before, after)


@dataclass
class ModuleMemory:
    module: str
    module_type: str
    calls: int
    output_bytes: int
    peak_bytes: int


class _ResidentMemory:
    """The process's resident bytes, read from one open /proc/self/statm (Linux)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        try:
            self.fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.fd = None

    def __call__(self) -> int:
        if self.fd is None:
            return 0
        return int(os.pread(self.fd, 128, 0).split()[1]) * self.page

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class MemoryProfile(Observer):
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.records: list[MemoryRecord] = []
        self._calls: dict[str, int] = {}
        self._stack: list[tuple[int, int]] = []  # (before, peak so far among children)
        self._lock = threading.Lock()
        self._resident = _ResidentMemory()

    def _now(self) -> int:
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        return self._resident()

    def on_enter(self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.cuda:  # peak per call: reset here, fold children's peaks back into the parent
            torch.cuda.reset_peak_memory_stats(self.device)
        now = self._now()
        self._stack.append((now, now))

    def on_exit(self, site: Site, output: Any) -> None:
        if not self._stack:
            return
        before, children_peak = self._stack.pop()
        after = self._now()
        peak = max(children_peak, after, before)
        if self.cuda:
            peak = max(peak, int(torch.cuda.max_memory_allocated(self.device)))
        if self._stack:
            parent_before, parent_peak = self._stack[-1]
            self._stack[-1] = (parent_before, max(parent_peak, peak))
        seen: set[int] = set()
        output_bytes = 0
        for _, tensor in tensors_with_paths(output):
            key = (
                tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
            )
            if key not in seen:
                seen.add(key)
                output_bytes += tensor.numel() * tensor.element_size()
        with self._lock:
            call = self._calls[site.name] = self._calls.get(site.name, 0) + 1
            self.records.append(
                MemoryRecord(
                    site.module_path,
                    site.module_type,
                    call,
                    output_bytes,
                    str(self.device),
                    before,
                    after,
                    peak,
                )  # fmt: skip
            )

    # ---------------------------------------------------------------- results
    @property
    def peak_bytes(self) -> int:
        return max((r.peak_bytes for r in self.records), default=0)

    @property
    def total_output_bytes(self) -> int:
        return sum(r.output_bytes for r in self.records)

    def summary(self) -> list[ModuleMemory]:
        """Per module, most output bytes first."""
        rows: dict[str, ModuleMemory] = {}
        for r in self.records:
            row = rows.setdefault(r.module, ModuleMemory(r.module, r.module_type, 0, 0, 0))
            row.calls += 1
            row.output_bytes += r.output_bytes
            row.peak_bytes = max(row.peak_bytes, r.peak_bytes)
        return sorted(rows.values(), key=lambda r: r.output_bytes, reverse=True)

    def to_records(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]

    def table(self, top: int = 15) -> str:
        kind = "allocated" if self.cuda else "resident"
        rows = self.summary()[:top]
        width = max([len(r.module or "<root>") for r in rows] + [6])
        lines = [
            f"{len(self.records)} calls; outputs {_mib(self.total_output_bytes)} in all; "
            f"peak {kind} {_mib(self.peak_bytes)} ({self.device})",
            f"{'module'.ljust(width)}  {'type':22s} {'calls':>5s} {'output':>11s}",
        ]
        for r in rows:
            lines.append(
                f"{(r.module or '<root>').ljust(width)}  {r.module_type[:22]:22s} {r.calls:5d} "
                f"{_mib(r.output_bytes):>11s}"
            )
        return "\n".join(lines)

    def save_bar_chart(self, path: str | os.PathLike[str], top: int = 15) -> None:
        """A PNG bar chart of the modules with the most output bytes."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError(
                "save_bar_chart needs matplotlib: pip install 'auto_hookpoint[plot]'"
            ) from error
        rows = self.summary()[:top][::-1]
        figure, axes = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
        axes.barh([r.module or "<root>" for r in rows], [r.output_bytes / 2**20 for r in rows])
        axes.set_xlabel("MiB of output tensors (all calls)")
        axes.set_title(f"Top {len(rows)} modules by output memory")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


def _mib(n: int) -> str:
    return f"{n / 2**20:.3f} MiB"


@contextlib.contextmanager
def memory_profile(
    model: nn.Module, names: Iterable[str] | Callable[[str], bool] | None = None
) -> Iterator[MemoryProfile]:
    """Record the memory of every call of the watched modules (all, by default)."""
    # Where the model computes (on a model dispatched by accelerate, not where its
    # offloaded weights rest, which is `meta`).
    device = execution_device(model) or torch.device("cpu")
    profile = MemoryProfile(device)
    try:
        with observing(model, profile, module_sites(model, names)):
            yield profile
    finally:
        profile._resident.close()
