"""Where a module computes, also on a model dispatched by accelerate.

accelerate's ``dispatch_model`` / ``from_pretrained(device_map=...)`` wraps a module's
instance ``forward``: its ``AlignDevicesHook`` moves the inputs to the module's
*execution device* and, for weights offloaded to CPU or disk, loads them there for the
call (between calls they are ``meta`` tensors). This module reads that state without
importing accelerate, so the core stays free of the dependency:

* :func:`accelerate_forward` tells whether a module's forward is wrapped that way;
* :func:`execution_device` says on which device a module's forward runs;
* :func:`resting_tensor` gives a module's parameter where it rests between calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# accelerate's add_hook_to_module keeps the wrapped forward here and calls it by name.
WRAPPED_FORWARD = "_old_forward"
_HOOK = "_hf_hook"


def accelerate_forward(module: nn.Module) -> bool:
    """True while accelerate has wrapped ``module``'s forward with one of its ModelHooks."""
    state = module.__dict__
    return _HOOK in state and WRAPPED_FORWARD in state


def _hooks(hook: Any) -> Iterator[Any]:
    """A ModelHook, or each hook of a SequentialHook."""
    inner = getattr(hook, "hooks", None)
    if isinstance(inner, (tuple, list)):
        for item in inner:
            yield from _hooks(item)
    elif hook is not None:
        yield hook


def _hook_device(module: nn.Module) -> torch.device | None:
    for hook in _hooks(module.__dict__.get(_HOOK)):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


def tensors_of(module: nn.Module, buffers: bool = True) -> Iterator[torch.Tensor]:
    """The parameters (and buffers) of ``module`` and its submodules, module by module,
    lazily: far cheaper than ``parameters()`` when only the first few are wanted."""
    pending = [module]
    while pending:
        current = pending.pop()
        yield from (t for t in current._parameters.values() if t is not None)
        if buffers:
            yield from (t for t in current._buffers.values() if t is not None)
        pending.extend(m for m in reversed(current._modules.values()) if m is not None)


def execution_device(module: nn.Module) -> torch.device | None:
    """The device ``module``'s forward computes on, or None if it has no tensors to say.

    In order: accelerate's execution device for the module; the device of its first
    parameter or buffer that is not ``meta``; the execution device of the first of its
    submodules that accelerate dispatched (a block whose weights all live offloaded).
    """
    device = _hook_device(module)
    if device is not None:
        return device
    for tensor in tensors_of(module):
        if tensor.device.type != "meta":
            return tensor.device
    for sub in module.modules():
        device = _hook_device(sub)
        if device is not None:
            return device
    return None


def resting_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module``'s parameter or buffer ``name`` with its values: itself, or, while
    accelerate keeps it offloaded (``meta`` on the module), the copy accelerate loads it
    from at each call: in CPU memory, or read from the offload folder (a disk read, as
    accelerate's own). Never moved to the execution device."""
    tensor: torch.Tensor = getattr(module, name)
    if tensor.device.type != "meta":
        return tensor
    for hook in _hooks(module.__dict__.get(_HOOK)):
        weights = getattr(hook, "weights_map", None)
        if getattr(hook, "offload", False) and weights is not None:
            try:
                return weights[name]  # type: ignore[no-any-return]
            except KeyError:
                continue
    return tensor
