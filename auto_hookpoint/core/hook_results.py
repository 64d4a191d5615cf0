"""What a hook may return at a site: ``None``, or a tensor like the one it was given.

A forward hook is given the site's tensor and a backward hook the gradient there. What
it returns replaces that value inside the model, so anything else (a tuple, a number,
a tensor of another shape, dtype or device) would fail deep inside the model's own
code, or compute on silently. It is refused at the site instead, with a
:class:`HookResultError` that names the hook, the site, what came back and what was
expected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from auto_hookpoint.errors import HookResultError


def check_hook_result(
    result: Any, given: Any, hook: Callable[..., Any], site: str | None, direction: str = "fwd"
) -> None:
    """Raise HookResultError unless ``result`` is None or a tensor matching ``given``."""
    if result is None or result is given:
        return
    if (
        isinstance(result, torch.Tensor)
        and isinstance(given, torch.Tensor)
        and result.shape == given.shape
        and result.dtype == given.dtype
        and result.device == given.device
    ):
        return
    kind, value = ("forward", "value") if direction == "fwd" else ("backward", "gradient")
    hint = ""
    if isinstance(result, (tuple, list, Mapping)):
        hint = (
            " Return the tensor alone: the site puts it back into the module's output "
            "structure itself."
        )
    elif isinstance(result, torch.Tensor) and isinstance(given, torch.Tensor):
        if result.shape != given.shape:
            hint = " The model's next operations expect the shape it had."
        else:
            hint = (
                f" Convert it back with .to({given.dtype}, {str(given.device)!r}) if the hook "
                "computes in another dtype or on another device."
            )
    raise HookResultError(
        f"{kind} hook {describe_hook(hook)} at {site!r} returned {describe_value(result)}; "
        f"it must return None (keep the {value}) or a tensor like the one it was given: "
        f"{describe_value(given)}.{hint}"
    )


def describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"a tensor of shape {list(value.shape)}, {dtype}, on {value.device}"
    return f"a value of type {type(value).__qualname__}"


def describe_hook(hook: Callable[..., Any]) -> str:
    """The hook's qualified name (the function inside a ``functools.partial``)."""
    func = hook.func if isinstance(hook, functools.partial) else hook
    return getattr(func, "__qualname__", None) or type(func).__name__
