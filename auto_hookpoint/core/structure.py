"""Find and replace the *primary tensor* inside any module output.

A module may return a tensor, a tuple or list (HF decoder layers, attention modules),
a dict, a ``ModelOutput`` or a dataclass, nested arbitrarily. The primary tensor is the
first tensor met in a depth-first walk, visiting sequence items in order, mapping
values in insertion order (a ``ModelOutput`` holds only its non-None fields) and
dataclass fields in declaration order.

A location is a :data:`Path` of keys and indices from the root of the output.
``replace_at`` rebuilds only the containers along that path, so everything else in the
structure (caches, attention weights, ...) is passed through untouched.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch

Path = tuple[int | str, ...]


def find_primary(output: Any) -> Path | None:
    """Return the path to the first tensor in ``output``, or None if it holds none."""
    if isinstance(output, torch.Tensor):
        return ()
    if isinstance(output, (tuple, list)):
        children: Any = enumerate(output)
    elif isinstance(output, Mapping):
        children = output.items()
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        children = ((f.name, getattr(output, f.name)) for f in dataclasses.fields(output))
    else:
        return None
    for key, value in children:
        sub = find_primary(value)
        if sub is not None:
            return (key, *sub)
    return None


def tensors_with_paths(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a structure, depth first, with a readable path ('' for the value
    itself, then '[0]' for sequence items and '.key' for mapping values and dataclass
    fields): the same structures :func:`find_primary` looks into."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from tensors_with_paths(item, f"{path}.{key}")
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from tensors_with_paths(item, f"{path}[{index}]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from tensors_with_paths(getattr(value, f.name), f"{path}.{f.name}")


def get_at(output: Any, path: Path) -> Any:
    """Return the value at ``path`` (as found by :func:`find_primary`)."""
    for key in path:
        output = _child(output, key)
    return output


def replace_at(output: Any, path: Path, value: Any) -> Any:
    """Return ``output`` with the value at ``path`` replaced by ``value``.

    Tuples (named or not) and lists are rebuilt; mappings and dataclasses are shallow
    copied, except HF ``ModelOutput``s, which are updated in place (they are fresh
    objects returned by the module, and their item and attribute views must agree).
    """
    if not path:
        return value
    key, rest = path[0], path[1:]
    new_child = replace_at(_child(output, key), rest, value)
    if isinstance(output, tuple):
        items = list(output)
        items[key] = new_child  # type: ignore[index]
        if hasattr(type(output), "_make"):  # namedtuple
            return type(output)._make(items)  # type: ignore[attr-defined]
        return type(output)(items) if type(output) is not tuple else tuple(items)
    if isinstance(output, list):
        items = list(output)
        items[key] = new_child  # type: ignore[index]
        return items if type(output) is list else type(output)(items)
    if isinstance(output, Mapping):
        target = output if _is_model_output(output) else copy.copy(output)
        target[key] = new_child  # type: ignore[index]
        return target
    # A dataclass: copy, then set the field even if the dataclass is frozen.
    target = copy.copy(output)
    object.__setattr__(target, key, new_child)  # type: ignore[arg-type]
    return target


def _child(output: Any, key: int | str) -> Any:
    if isinstance(output, (tuple, list, Mapping)):
        return output[key]  # type: ignore[index]
    return getattr(output, key)  # type: ignore[arg-type]


def _is_model_output(output: Any) -> bool:
    # Checked by name so that this module does not import transformers.
    return any(cls.__name__ == "ModelOutput" for cls in type(output).__mro__)
