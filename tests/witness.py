"""An independent witness of what a plain model computes: plain torch hooks, no auto_hookpoint.

``witness(model, *args, **kwargs)`` runs an un-hooked model once with a *global* torch
forward hook (so nothing the model does to its own hooks can hide a call) and records,
per module path, how many times the module ran and a copy of the primary tensor of
its output taken the moment it returned. The primary tensor is found here by a walk of
its own, not by auto_hookpoint's, so that the two can disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor of a value, depth first (sequences in order, mappings in insertion
    order, dataclass fields in declaration order)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        children: list[Any] = list(value.values())
    elif isinstance(value, (tuple, list)):
        children = list(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    else:
        return None
    for child in children:
        found = first_tensor(child)
        if found is not None:
            return found
    return None


@dataclass
class Seen:
    calls: dict[str, int] = field(default_factory=dict)  # module path -> calls
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # copies, per call
    output: Any = None


def witness(model: nn.Module, *args: Any, **kwargs: Any) -> Seen:
    """Run ``model(*args, **kwargs)`` once and record every module call (see above)."""
    paths = {id(module): path for path, module in model.named_modules()}
    seen = Seen()

    def record(module: nn.Module, _args: Any, output: Any) -> None:
        path = paths.get(id(module))
        if path is None:
            return
        seen.calls[path] = seen.calls.get(path, 0) + 1
        tensor = first_tensor(output)
        if tensor is not None:
            seen.values.setdefault(path, []).append(tensor.detach().clone())

    handle = register_module_forward_hook(record)
    try:
        seen.output = model(*args, **kwargs)
    finally:
        handle.remove()
    return seen
