"""Where a hooked model keeps its hook core, and how the layers above find it.

``auto_hook`` stores the model's :class:`HookCore` in the instance ``__dict__`` under
:data:`CORE_ATTRIBUTE`. Everything standing on the core (the hooked model, split,
the observers, the adapter) reaches it through :func:`core_of`, so none of them needs
to import the layer that attached it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auto_hookpoint.core.hook_core import HookCore

CORE_ATTRIBUTE = "_auto_hook_core"


def is_hooked(model: Any) -> bool:
    """True for a model that ``auto_hook`` has attached a hook core to."""
    return CORE_ATTRIBUTE in getattr(model, "__dict__", {})


def core_of(model: Any, caller: str = "this function") -> HookCore:
    """The hook core of a model returned by ``auto_hook``; a TypeError saying so otherwise.

    If the model's structure changed since its sites were found, they are found again
    first (see ``HookCore.sync``), so that every name the caller resolves is current."""
    core = getattr(model, "__dict__", {}).get(CORE_ATTRIBUTE)
    if core is None:
        raise TypeError(
            f"{caller} takes a model returned by auto_hook(...); this "
            f"{type(model).__name__} is not hooked. Call auto_hook(model) first."
        )
    core.sync(strict=False)  # a change that loses hooked sites raises when the model runs
    return core  # type: ignore[no-any-return]
