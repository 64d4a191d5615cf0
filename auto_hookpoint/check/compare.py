"""Exact comparison of two model outputs, whatever their structure.

check_auto_hook's verdicts rest on this comparison, so it sees everything a caller of
the model could see: every tensor (shape, dtype and values, NaN equal to NaN, as a
deterministic forward reproduces its NaNs), and every other value too, in tuples, lists,
dicts, ``ModelOutput``s, dataclasses and plain objects (an HF ``DynamicCache`` is
compared through its attributes). Two outputs that differ anywhere are different,
so a hooked model cannot hide a changed field from the check.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_MAX_DEPTH = 64  # deeper than any output; guards against self-referencing objects


def outputs_equal(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same output, exactly; see the module docstring."""
    return first_difference(a, b) is None


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where and how ``b`` differs from ``a`` (``".logits: values differ"``), or None."""
    return _diff(a, b, path or "<output>", 0)


def _diff(a: Any, b: Any, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None  # a cycle or an absurdly deep object: what was compared above stands
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return _tensor_diff(a, b, path)
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, float):
        return None if a == b or (math.isnan(a) and math.isnan(b)) else f"{path}: {a} != {b}"
    if isinstance(a, (*_SCALARS, enum.Enum, torch.Size, type)):
        return None if a == b else f"{path}: {a!r} != {b!r}"
    if isinstance(a, np.ndarray):
        same = a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return None if same else f"{path}: arrays differ"
    if isinstance(a, nn.Module):
        return None  # a module handed back (rare): its computation is compared elsewhere
    if isinstance(a, (tuple, list)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        pairs = enumerate(zip(a, b, strict=True))
        return _first(_diff(x, y, f"{path}[{i}]", depth + 1) for i, (x, y) in pairs)
    if isinstance(a, Mapping):
        if list(a.keys()) != list(b.keys()):
            return f"{path}: keys {list(a.keys())} != {list(b.keys())}"
        return _first(_diff(a[k], b[k], f"{path}.{k}", depth + 1) for k in a)
    if dataclasses.is_dataclass(a):
        fields = [f.name for f in dataclasses.fields(a)]
        return _first(_diff(getattr(a, f), getattr(b, f), f"{path}.{f}", depth + 1) for f in fields)
    if type(a).__eq__ is not object.__eq__:
        try:
            return None if bool(a == b) else f"{path}: {a!r} != {b!r}"
        except Exception:  # == that does not answer with a bool: compare the attributes
            pass
    state_a, state_b = _state(a), _state(b)
    if state_a is None or state_b is None:
        return None  # an opaque value (no attributes, no ==): nothing to compare
    return _diff(state_a, state_b, path, depth + 1)


def _tensor_diff(a: Any, b: Any, path: str) -> str | None:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return f"{path}: {type(a).__name__} != {type(b).__name__}"
    if a.shape != b.shape:
        return f"{path}: shape {list(a.shape)} != {list(b.shape)}"
    if a.dtype != b.dtype:
        return f"{path}: dtype {a.dtype} != {b.dtype}"
    if a.device != b.device:
        return f"{path}: device {a.device} != {b.device}"
    if torch.equal(a, b):
        return None
    if (a.is_floating_point() or a.is_complex()) and bool(
        ((a == b) | (torch.isnan(a) & torch.isnan(b))).all()
    ):
        return None  # equal, with NaNs in the same places
    return f"{path}: values differ"


def _state(value: Any) -> dict[str, Any] | None:
    if hasattr(value, "__dict__"):
        return dict(vars(value))
    slots = [s for cls in type(value).__mro__ for s in getattr(cls, "__slots__", ())]
    if slots:
        return {s: getattr(value, s, None) for s in slots}
    return None


def _first(diffs: Any) -> str | None:
    return next((d for d in diffs if d is not None), None)
