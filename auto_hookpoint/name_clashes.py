"""The names auto_hook adds to a model, and what happens when the model has its own.

A hooked model gains methods (``setup``, ``hooks``, ``run_with_cache``, ``unwrap``, ...:
those of :class:`~auto_hookpoint.hooked.HookedModule` and of TransformerLens'
``HookedRootModule``) and a few instance attributes (``hook_dict``, ``mod_dict``, ...).
A model may already use one of those names: a Lightning module's ``setup(stage)``, a
submodule called ``hooks``. The rule:

* **The model's own attribute wins**, whether its class defines it or it is a
  submodule, parameter or buffer of the instance; auto_hook warns
  (:class:`~auto_hookpoint.errors.NameClashWarning`) naming it and saying how to reach
  auto_hookpoint's own (``HookedModule.setup(model)``, ``auto_hookpoint.unwrap(model)``).
  auto_hookpoint's own code always calls its methods that way, so it keeps working.
* The attributes auto_hook *stores* on the model (``hook_dict``, ``mod_dict``,
  ``is_caching``, ``context_level`` and its private ``_auto_hook_*``) cannot give way:
  TransformerLens code reads them. A model that has one of its own is refused with
  :class:`~auto_hookpoint.errors.NameClashError` before anything is changed. (A
  TransformerLens ``HookedRootModule`` keeps those on its instances itself; that is
  not a clash.)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from torch import nn
from transformer_lens.HookedRootModule import HookedRootModule

from auto_hookpoint.errors import NameClashError

# What auto_hook stores in the instance __dict__ (TransformerLens' state, and ours).
STORED_NAMES = frozenset(
    {
        "hook_dict",
        "mod_dict",
        "is_caching",
        "context_level",
        "_auto_hook_core",
        "_auto_hook_saved",
        "_auto_hook_init_depth",
    }
)
_STORES = ("_modules", "_parameters", "_buffers")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def added_methods(hooked_module: type) -> dict[str, Any]:
    """Every non-dunder class attribute a hooked model gains: ``hooked_module``'s own and
    ``HookedRootModule``'s (not ``nn.Module``'s), as raw descriptors, ours first."""
    found: dict[str, Any] = {}
    for cls in (hooked_module, *HookedRootModule.__mro__):
        if cls in nn.Module.__mro__:
            continue
        for name, value in vars(cls).items():
            if not _is_dunder(name) and name not in STORED_NAMES:
                found.setdefault(name, value)
    return found


def how_to_reach(name: str, owner: str) -> str:
    """The expression that calls auto_hookpoint's ``name`` when the model's own wins."""
    if name == "unwrap":
        return "auto_hookpoint.unwrap(model)"
    if name == "hook_sites":
        return "HookedModule.hook_sites.fget(model)"
    return f"{owner}.{name}(model, ...)"


def class_clashes(original: type, names: Iterable[str]) -> dict[str, type]:
    """Of ``names``, those a class of the model's own defines (not nn.Module, not
    TransformerLens' HookedRootModule, not auto_hookpoint's): name -> that class."""
    theirs: dict[str, type] = {}
    for cls in original.__mro__:
        if (
            cls in HookedRootModule.__mro__
            or cls.__dict__.get("__auto_hook_composed__")
            or cls.__module__ == "auto_hookpoint.hooked"
        ):
            continue
        for name in vars(cls):
            theirs.setdefault(name, cls)
    return {name: theirs[name] for name in names if name in theirs}


def refuse_stored_name_clashes(original: type, model: nn.Module | None = None) -> None:
    """Raise NameClashError if the model's class (or the instance, where given) has an
    attribute of its own under a name auto_hook stores; change nothing."""
    clashes = {
        name: f"{cls.__qualname__} defines it"
        for name, cls in class_clashes(original, STORED_NAMES).items()
    }
    if model is not None:
        own_state = issubclass(original, HookedRootModule)  # TL keeps these itself
        state = model.__dict__
        for name in STORED_NAMES:
            if name in state and not (own_state and not name.startswith("_auto_hook")):
                clashes.setdefault(name, "the instance has it")
            for store in _STORES:
                if name in state.get(store, {}):
                    clashes.setdefault(name, f"it is one of the model's {store[1:]}")
    if clashes:
        listed = "; ".join(f"{name!r} ({why})" for name, why in clashes.items())
        raise NameClashError(
            f"{original.__qualname__} has attributes of its own under names auto_hook needs "
            f"to store on a hooked model: {listed}. TransformerLens code reads these names, "
            "so auto_hook cannot give way: rename yours. Nothing was changed."
        )


def instance_clashes(model: nn.Module, ours: Iterable[str]) -> list[str]:
    """Names in ``ours`` that are submodules, parameters, buffers or instance
    attributes of ``model`` itself."""
    state = model.__dict__
    return [
        name
        for name in ours
        if name in state or any(name in state.get(store, {}) for store in _STORES)
    ]


class ModelFirst:
    """Stands in the hooked class for one of our methods: a submodule, parameter or
    buffer of the instance under that name wins, as a plain attribute of the instance
    already does (this descriptor has no ``__set__``); otherwise it is ours."""

    def __init__(self, name: str, ours: Any):
        self.name = name
        self.ours = ours

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is not None:
            state = obj.__dict__
            for store in _STORES:
                found = state.get(store)
                if found and self.name in found:
                    return found[self.name]
        return self.ours.__get__(obj, owner)


def raw_attribute(cls: type, name: str) -> Any:
    """The attribute as its class stores it (a function, property, descriptor)."""
    return inspect.getattr_static(cls, name)
