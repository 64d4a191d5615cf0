"""Notice when a hooked model's modules or parameters change after its sites were found.

``resize_token_embeddings()`` puts a new ``lm_head`` in place, ``torch.nn.utils.prune``
swaps a parameter for ``<name>_orig`` and a mask, ``parametrize`` moves a parameter
under a new ``parametrizations`` submodule: the sites found before no longer describe
the model, and a hook on a replaced module would silently never fire.

torch calls global *registration hooks* whenever a module or parameter is registered on
any module (``setattr``, ``add_module``, ``register_parameter``, ``ModuleList.append``,
...). One pair of them, placed when the first model is hooked, marks the hook core of
every hooked model owning that module as *stale*; the core then finds its sites again
before its next use (see ``HookCore.sync``). This costs nothing per forward: only a
dictionary lookup per registration anywhere in the process. Registrations made while
dynamo traces a compiled forward are not looked at (see ``_cores_of``): the structure of
a hooked model is changed by the user between calls, not inside a compiled forward.

Deleting an item of a ``ModuleList``, ``Sequential`` or ``ModuleDict`` registers
nothing and renumbers the rest; the core compares those containers' children at each
use instead (``HookCore.sync``). A module deleted with ``del model.attribute`` is simply
no longer called; its site stays until the next change or ``setup()``.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from auto_hookpoint.core.sites import is_torch_builtin

if TYPE_CHECKING:
    from auto_hookpoint.core.hook_core import HookCore

# Module -> the hook cores of the hooked models it belongs to.
_OWNERS: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[HookCore]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()
_installed = False


def watch(core: HookCore, modules: list[nn.Module]) -> None:
    """Mark ``core`` stale when a module or parameter is registered on any of ``modules``."""
    global _installed
    with _LOCK:
        if not _installed:
            register_module_module_registration_hook(_module_registered)
            register_module_parameter_registration_hook(_parameter_registered)
            _installed = True
        for module in modules:
            _OWNERS.setdefault(module, weakref.WeakSet()).add(core)


def unwatch(core: HookCore, modules: list[nn.Module]) -> None:
    with _LOCK:
        for module in modules:
            owners = _OWNERS.get(module)
            if owners is not None:
                owners.discard(core)
                if not owners:
                    del _OWNERS[module]


def _cores_of(module: nn.Module) -> list[HookCore]:
    if torch.compiler.is_dynamo_compiling():
        # A registration while dynamo traces is a model's forward building a temporary
        # container (``self.layers[:n]`` makes a new ModuleList on every call), not a
        # change of the hooked model. Looking it up in _OWNERS there would let dynamo
        # find the model's modules through _OWNERS, and guard on the first compiled
        # instance's modules for every instance.
        return []
    owners = _OWNERS.get(module)
    return list(owners) if owners else []


def _module_registered(module: nn.Module, name: str, submodule: Any) -> None:
    if module._modules.get(name) is submodule:
        return  # the same module again: nothing changes
    for core in _cores_of(module):
        core.mark_stale()


def _parameter_registered(module: nn.Module, name: str, param: Any) -> None:
    # Parameter sites are named after parameters of non-torch modules: only a new name
    # there changes the sites (a new value under an old name is seen as it runs).
    if is_torch_builtin(module) or name in module._parameters:
        return
    for core in _cores_of(module):
        core.mark_stale()
