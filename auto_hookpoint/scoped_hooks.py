"""``hooks()``: temporary hooks that belong to the thread or task that added them.

TransformerLens' ``hooks()`` tags hooks with a model-wide ``context_level`` counter and,
on exit, removes every hook at that level: two threads using one model share the
counter, so one thread's exit can remove the other's hooks or leave its own behind.
Here each ``hooks()`` scope records exactly the handles it added and removes those.
Its forward hooks run only in the context that entered the scope (a ``ContextVar``
holds the active scopes): another thread or asyncio task running the same model at
the same time does not see them. Hooks added with ``add_hook``/``add_perma_hook``
outside a scope stay global, as in TransformerLens.

Backward hooks stay visible to every thread while the scope lasts: the autograd engine
may run them on threads of its own, which do not carry the caller's context.
Parameter-site hooks that replace a parameter lend it to the module for the duration of
the call, which every thread running that module at that moment sees.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from transformer_lens.hook_points import HookPoint, LensHandle

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.context import ACTIVE_SCOPES, HookScope

HookSpec = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]


def _only_in_scope(hook: Callable[..., Any], scope: HookScope) -> Callable[..., Any]:
    @functools.wraps(hook)
    def scoped_hook(tensor: Any, *, hook: HookPoint) -> Any:
        if not scope.visible():
            return None  # another thread's or task's hook: leave the tensor as it is
        return user_hook(tensor, hook=hook)

    user_hook = hook
    return scoped_hook


@contextlib.contextmanager
def scoped_hooks(
    model: Any,
    fwd_hooks: HookSpec = (),
    bwd_hooks: HookSpec = (),
    reset_hooks_end: bool = True,
    clear_contexts: bool = False,
) -> Iterator[Any]:
    """The body of ``HookedModule.hooks``; see the module docstring."""
    scope = HookScope()
    token = ACTIVE_SCOPES.set(ACTIVE_SCOPES.get() | {scope})
    added: list[tuple[HookPoint, LensHandle, Literal["fwd", "bwd"]]] = []
    model.context_level += 1  # kept for TransformerLens code that reads it
    try:
        scope.open()
        directions: tuple[tuple[Literal["fwd", "bwd"], HookSpec], ...] = (
            ("fwd", fwd_hooks),
            ("bwd", bwd_hooks),
        )
        for direction, specs in directions:
            for name, hook in specs:
                for hook_point in _hook_points(model, name):
                    # Hooks kept past the scope (reset_hooks_end=False) are global, as
                    # in TransformerLens; temporary forward hooks are the scope's own.
                    added_hook = hook
                    if direction == "fwd" and reset_hooks_end:
                        added_hook = _only_in_scope(hook, scope)
                    hook_point.add_hook(added_hook, dir=direction, level=model.context_level)
                    handles = hook_point.fwd_hooks if direction == "fwd" else hook_point.bwd_hooks
                    added.append((hook_point, handles[-1], direction))
        yield model
    finally:
        scope.close()
        ACTIVE_SCOPES.reset(token)
        model.context_level -= 1
        if reset_hooks_end:
            for hook_point, handle, direction in added:
                handles = hook_point.fwd_hooks if direction == "fwd" else hook_point.bwd_hooks
                if handle in handles:
                    handles.remove(handle)
                # Last: the core, told of the removal, sees whether the site still holds any.
                handle.hook.remove()
        if clear_contexts:
            for hook_point in {id(h): h for h, _, _ in added}.values():
                hook_point.clear_context()


def _hook_points(model: Any, name: str | Callable[[str], bool]) -> list[HookPoint]:
    if isinstance(name, str):
        return [model.mod_dict[name]]  # an unknown name raises, naming the closest
    core_of(model, "hooks")  # the sites are current (the model may have changed since)
    return [hp for site_name, hp in model.hook_dict.items() if name(site_name)]
