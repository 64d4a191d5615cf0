"""Which sites fire on a given input, how often, and with what shape.

``describe_sites(model, *args, **kwargs)`` runs one forward with an observer watching
every site and returns a :class:`SiteRecord` per site. A site whose module ran but
returned no tensor is reported as ``NO_TENSOR``; one whose module never ran (an MoE
expert that got no token, a head the forward does not use) as ``NOT_CALLED``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import Path


class SiteStatus(enum.Enum):
    FIRED = "fired"
    NO_TENSOR = "no tensor"
    NOT_CALLED = "not called"


@dataclass
class SiteRecord:
    name: str
    kind: str
    module_path: str
    module_type: str
    status: SiteStatus
    calls: int
    shapes: list[tuple[int, ...]]  # one per call, in order
    dtype: torch.dtype | None

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The shape at the first call (None if the site never fired)."""
        return self.shapes[0] if self.shapes else None


class _Recorder(Observer):
    def __init__(self) -> None:
        # Shape and dtype as the site fired (not the tensor, which the forward may
        # still change in place or resize).
        self.fired: dict[str, list[tuple[tuple[int, ...], torch.dtype]]] = {}
        self.silent: set[str] = set()

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        self.fired.setdefault(site.name, []).append((tuple(tensor.shape), tensor.dtype))

    def on_no_tensor(self, site: Site, output: Any) -> None:
        self.silent.add(site.name)


def describe_sites(model: nn.Module, *args: Any, **kwargs: Any) -> list[SiteRecord]:
    """Run ``model(*args, **kwargs)`` once (without gradients) and report every site."""
    core = core_of(model, "describe_sites")
    recorder = _Recorder()
    with core.observing(recorder, core.sites), torch.no_grad():
        model(*args, **kwargs)  # type: ignore[operator]
    records = []
    for name, site in core.sites.items():
        seen = recorder.fired.get(name, [])
        if seen:
            status = SiteStatus.FIRED
        elif name in recorder.silent:
            status = SiteStatus.NO_TENSOR
        else:
            status = SiteStatus.NOT_CALLED
        records.append(
            SiteRecord(
                name=name,
                kind=site.kind.value,
                module_path=site.module_path,
                module_type=site.module_type,
                status=status,
                calls=len(seen),
                shapes=[shape for shape, _ in seen],
                dtype=seen[0][1] if seen else None,
            )
        )
    return records


def format_site_table(records: Sequence[SiteRecord]) -> str:
    """A plain-text table: name, module type, kind, output shape (or why none), calls."""
    rows = [("site", "module", "kind", "shape", "calls")]
    for r in records:
        shape = str(list(r.shape)) if r.shape is not None else f"({r.status.value})"
        rows.append((r.name, r.module_type, r.kind, shape, str(r.calls)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
