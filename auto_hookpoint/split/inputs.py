"""The shapes of a forward's tensor inputs, by name: what an EarlyOutput was banked for.

``run_until`` records them and ``resume_from`` compares them with its own inputs, so an
activation banked for a batch of 2 is refused when resuming a batch of 1 (attention
masks and position tables would broadcast against it and give a plausible wrong
answer). Inputs are named by the model's forward signature (``input_ids``,
``attention_mask``, ...), so passing one positionally in one call and by keyword in the
other still matches; values are not compared.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

from auto_hookpoint.core.structure import tensors_with_paths

Shapes = dict[str, list[int]]


class _Forward:
    """What naming a forward's inputs needs of its signature, kept per class (asking
    ``inspect`` costs more than a small forward)."""

    def __init__(self, cls: type):
        full = inspect.signature(cls.forward)  # type: ignore[attr-defined]
        self.signature = full.replace(parameters=list(full.parameters.values())[1:])
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.positional: list[str] = []
        for name, parameter in self.signature.parameters.items():
            if parameter.kind not in kinds:
                break
            self.positional.append(name)


_FORWARDS: weakref.WeakKeyDictionary[type, _Forward] = weakref.WeakKeyDictionary()


def _named(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Inputs by the name of the forward's parameter they bind to (the signature of the
    model's class: accelerate's wrapped forward keeps it)."""
    if not args:
        return dict(kwargs)
    try:
        forward = _FORWARDS.get(type(model)) or _FORWARDS.setdefault(
            type(model), _Forward(type(model))
        )
    except (TypeError, ValueError):  # no signature to read
        forward = None
    if forward is not None and len(args) <= len(forward.positional):
        named = dict(zip(forward.positional, args, strict=False))
        if not named.keys() & kwargs.keys():
            return {**named, **kwargs}
    if forward is not None:
        try:
            bound = forward.signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            bound = None
        if bound is not None:
            return _flatten(forward.signature, bound)
    return {**{f"args[{i}]": a for i, a in enumerate(args)}, **kwargs}


def _flatten(signature: inspect.Signature, bound: dict[str, Any]) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for name, value in bound.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        else:
            named[name] = value
    return named


def input_shapes(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Shapes:
    """``{input name (with the path inside it, if nested): shape}`` of every tensor input."""
    return {
        path: list(tensor.shape)
        for name, value in _named(model, args, kwargs).items()
        for path, tensor in tensors_with_paths(value, name)
    }


def input_mismatch(banked: Shapes, now: Shapes) -> str | None:
    """Why inputs of shapes ``now`` are not those an activation was banked for, or None.

    Inputs given now but not then (``labels``, to get a loss) are fine.
    """
    for name, shape in banked.items():
        if name not in now:
            return f"{name} was given when the activation was banked, but not now"
        if now[name] != shape:
            batch = bool(shape) and bool(now[name]) and shape[0] != now[name][0]
            what = "the batch size differs" if batch else "the shape differs"
            return (
                f"{name} is {now[name]} here but was {shape} when the activation was banked "
                f"({what})"
            )
    return None
