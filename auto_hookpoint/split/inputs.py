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


_SIGNATURES: weakref.WeakKeyDictionary[type, inspect.Signature] = weakref.WeakKeyDictionary()


def _forward_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls.forward`` without ``self`` (kept per class: it costs more than
    a small forward), the same for every instance, also when accelerate wraps an
    instance's forward (it keeps the signature)."""
    signature = _SIGNATURES.get(cls)
    if signature is None:
        full = inspect.signature(cls.forward)  # type: ignore[attr-defined]
        signature = full.replace(parameters=list(full.parameters.values())[1:])
        _SIGNATURES[cls] = signature
    return signature


def _named(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if not args:
        return dict(kwargs)
    try:
        signature = _forward_signature(type(model))
        bound = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return {**{f"args[{i}]": a for i, a in enumerate(args)}, **kwargs}
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
