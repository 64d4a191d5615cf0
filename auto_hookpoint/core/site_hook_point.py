"""The HookPoint behind each auto_hookpoint site.

It is a TransformerLens ``HookPoint`` in every respect (``add_hook``, ``remove_hooks``,
``fwd_hooks``/``bwd_hooks``, ``ctx``, ``name``), with two additions:

* every torch hook registered on it, by whatever route (``run_with_hooks``, ``hooks()``,
  ``add_hook``, TransformerLens code calling ``hook_dict[name].add_hook``, or a plain
  ``register_forward_hook``), tells the hook core, and so does the removal of its
  handle. The core then puts or takes away the one torch hook on the owning module
  that makes this HookPoint fire. That is how an idle model carries no torch hooks;
* an exception raised by a user hook is re-raised as :class:`HookFunctionError`
  naming the hook and the site.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch.utils.hooks import RemovableHandle
from transformer_lens.hook_points import HookPoint

from auto_hookpoint.core.compile_guards import changing_hooks
from auto_hookpoint.errors import HookFunctionError

_PLAIN_STATE = frozenset({"fwd_hooks", "bwd_hooks", "ctx"})


class SiteHookPoint(HookPoint):
    def __init__(self, name: str, on_change: Callable[[SiteHookPoint], None]):
        super().__init__()
        self.name = name
        self._on_change = on_change

    def has_torch_hooks(self) -> bool:
        return bool(self._forward_hooks or self._backward_hooks or self._forward_pre_hooks)

    def holds_hooks(self) -> bool:
        """Torch hooks, or TransformerLens handles not yet cleared by remove_hooks."""
        return bool(self.has_torch_hooks() or self.fwd_hooks or self.bwd_hooks)

    # TransformerLens reassigns these on every add/remove; they are plain values, so
    # skip nn.Module.__setattr__'s parameter/module/buffer checks.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_STATE:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def add_hook(self, hook: Any, dir: Any = "fwd", *args: Any, **kwargs: Any) -> None:  # noqa: A002
        named = _name_errors(hook, self)
        super().add_hook(named, dir, *args, **kwargs)
        # TransformerLens records the hook it was given; record the user's own.
        for handle in self.fwd_hooks if dir == "fwd" else self.bwd_hooks:
            if handle.user_hook is named:
                handle.user_hook = hook

    # TransformerLens' reset_hooks() visits every HookPoint of the model. On a site with
    # nothing to remove or clear these return at once instead of reassigning lists
    # through nn.Module.__setattr__: same result, and reset costs O(hooked sites).
    def remove_hooks(self, dir: Any = "fwd", *args: Any, **kwargs: Any) -> None:  # noqa: A002
        if self.fwd_hooks or self.bwd_hooks or dir not in ("fwd", "bwd", "both"):
            super().remove_hooks(dir, *args, **kwargs)
            self._on_change(self)

    def clear_context(self) -> None:
        if self.ctx:
            super().clear_context()

    # Compiled code is traced from and guards on these hook dicts: they change only
    # while no other thread compiles (see compile_guards.changing_hooks).
    def register_forward_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        with changing_hooks():
            return self._notifying(super().register_forward_hook(*args, **kwargs))

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        with changing_hooks():
            return self._notifying(super().register_forward_pre_hook(*args, **kwargs))

    def register_full_backward_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        with changing_hooks():
            return self._notifying(super().register_full_backward_hook(*args, **kwargs))

    def _notifying(self, handle: RemovableHandle) -> RemovableHandle:
        self._on_change(self)
        return _NotifyingHandle(handle, self)


class _NotifyingHandle(RemovableHandle):
    """A torch handle whose ``remove()`` also tells the hook core."""

    def __init__(self, inner: RemovableHandle, hook_point: SiteHookPoint):
        # Deliberately not calling RemovableHandle.__init__: this handle only forwards.
        self.inner = inner
        self.id = inner.id
        self.hook_point = hook_point

    def remove(self) -> None:
        with changing_hooks():
            self.inner.remove()
            self.hook_point._on_change(self.hook_point)

    # RemovableHandle's own pickling keeps only its fields; keep ours (for deepcopy).
    def __getstate__(self) -> Any:
        return dict(self.__dict__)

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state)


def _name_errors(hook: Callable[..., Any], hook_point: HookPoint) -> Callable[..., Any]:
    """Wrap ``hook`` so that an exception it raises names the hook and its site."""

    @functools.wraps(hook)
    def named_hook(tensor: Any, *, hook: HookPoint) -> Any:
        try:
            return user_hook(tensor, hook=hook)
        except HookFunctionError:
            raise
        except Exception as error:
            raise HookFunctionError(
                f"hook {_describe(user_hook)} at {hook_point.name!r} raised "
                f"{type(error).__name__}: {error}"
            ) from error

    user_hook = hook
    return named_hook


def _describe(hook: Callable[..., Any]) -> str:
    func = hook.func if isinstance(hook, functools.partial) else hook
    return getattr(func, "__qualname__", None) or type(func).__name__
