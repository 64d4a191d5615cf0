"""The HookPoint behind each auto_hookpoint site.

It is a TransformerLens ``HookPoint`` in every respect (``add_hook``, ``remove_hooks``,
``fwd_hooks``/``bwd_hooks``, ``ctx``, ``name``), with these additions:

* every torch hook registered on it, by whatever route (``run_with_hooks``, ``hooks()``,
  ``add_hook``, TransformerLens code calling ``hook_dict[name].add_hook``, or a plain
  ``register_forward_hook``), tells the hook core, and so does the removal of its
  handle. The core then puts or takes away the one torch hook on the owning module
  that makes this HookPoint fire. That is how an idle model carries no torch hooks;
* an exception raised by a user hook is re-raised as :class:`HookFunctionError`
  naming the hook and the site, and what a hook returns is checked there (None or a
  tensor like the one it was given; see :mod:`auto_hookpoint.core.hook_results`);
* backward hooks are tensor hooks on the value the site passes on (see
  :mod:`auto_hookpoint.core.grad_hooks`), not torch's module backward hooks, whose
  view any later in-place op of the model (``out += residual``) refuses.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle
from transformer_lens.hook_points import HookPoint

from auto_hookpoint.core.compile_guards import changing_hooks
from auto_hookpoint.core.grad_hooks import attach_grad_hooks
from auto_hookpoint.core.hook_results import check_hook_result, describe_hook
from auto_hookpoint.errors import HookFunctionError

_PLAIN_STATE = frozenset({"fwd_hooks", "bwd_hooks", "ctx", "_grad_hooks"})
# Set while add_hook registers its (already checking) wrapper through the torch methods.
_ADDING = threading.local()


class SiteHookPoint(HookPoint):
    def __init__(self, name: str, on_change: Callable[[SiteHookPoint], None]):
        super().__init__()
        self.name = name
        self._on_change = on_change
        # Backward hooks (hook(module, grad_input, grad_output), as torch calls them).
        self._grad_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()

    def has_torch_hooks(self) -> bool:
        return bool(
            self._forward_hooks
            or self._grad_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
        )

    def has_backward_hooks(self) -> bool:
        return bool(self._grad_hooks or self._backward_hooks)

    def clear_torch_hooks(self) -> None:
        """Drop every hook, also those registered without add_hook (not in TL's lists)."""
        self._forward_hooks.clear()
        self._forward_pre_hooks.clear()
        self._backward_hooks.clear()
        self._grad_hooks.clear()

    def __call__(self, tensor: Any) -> Any:
        output = super().__call__(tensor)
        if self._grad_hooks and isinstance(output, torch.Tensor) and output.requires_grad:
            # The hooks in place now, as torch's module backward hooks do.
            output = attach_grad_hooks(self, output, tuple(self._grad_hooks.values()))
        return output

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
        named = _name_errors(hook, self, dir)
        _ADDING.active = True
        try:
            super().add_hook(named, dir, *args, **kwargs)
        finally:
            _ADDING.active = False
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
    def register_forward_hook(
        self, hook: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> RemovableHandle:
        if not getattr(_ADDING, "active", False):
            hook = _checking(hook, self, "fwd")
        with changing_hooks():
            return self._notifying(super().register_forward_hook(hook, *args, **kwargs))

    def register_forward_pre_hook(self, *args: Any, **kwargs: Any) -> RemovableHandle:
        with changing_hooks():
            return self._notifying(super().register_forward_pre_hook(*args, **kwargs))

    def register_full_backward_hook(
        self, hook: Callable[..., Any], prepend: bool = False
    ) -> RemovableHandle:
        if not getattr(_ADDING, "active", False):
            hook = _checking(hook, self, "bwd")
        with changing_hooks():
            handle = RemovableHandle(self._grad_hooks)
            self._grad_hooks[handle.id] = hook
            if prepend:
                self._grad_hooks.move_to_end(handle.id, last=False)
            return self._notifying(handle)

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


def _name_errors(
    hook: Callable[..., Any], hook_point: HookPoint, direction: str = "fwd"
) -> Callable[..., Any]:
    """Wrap ``hook`` so that an exception it raises names the hook and its site, and
    what it returns is checked there."""

    @functools.wraps(hook)
    def named_hook(tensor: Any, *, hook: HookPoint) -> Any:
        try:
            result = user_hook(tensor, hook=hook)
        except HookFunctionError:
            raise
        except Exception as error:
            raise HookFunctionError(
                f"hook {describe_hook(user_hook)} at {hook_point.name!r} raised "
                f"{type(error).__name__}: {error}"
            ) from error
        check_hook_result(result, tensor, user_hook, hook_point.name, direction)
        return result

    user_hook = hook
    return named_hook


def _checking(
    hook: Callable[..., Any], hook_point: HookPoint, direction: str
) -> Callable[..., Any]:
    """Wrap a torch-style hook registered directly (not through add_hook) so that what it
    returns is checked: a forward hook ``(module, args, output)``, a backward hook
    ``(module, grad_input, grad_output)``."""

    @functools.wraps(hook)
    def checked(*args: Any) -> Any:
        result = hook(*args)
        if direction == "fwd":
            check_hook_result(result, args[-1], hook, hook_point.name, direction)
        elif result is not None:
            single = result[0] if isinstance(result, tuple) and len(result) == 1 else result
            check_hook_result(single, args[2][0], hook, hook_point.name, direction)
        return result

    return checked
