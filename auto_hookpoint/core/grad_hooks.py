"""Backward hooks at a site, as tensor hooks on the value the site passes on.

torch's module backward hooks (``register_full_backward_hook``, what TransformerLens'
``HookPoint`` uses) wrap that value in a view made by a custom autograd Function, which
any later in-place op of the model refuses (``out += identity`` in a residual network:
the forward itself crashes). A tensor hook on the value has no such limit: registered
before an in-place op, it sees the gradient of the value as the site produced it.

The semantics are TransformerLens': each hook is called as torch calls a module's full
backward hooks, ``hook(hook_point, grad_input, grad_output)``; it sees the gradient of
the loss with respect to the site's tensor and may return a replacement, which flows
on backwards (later hooks get the replaced gradient as ``grad_input``).

Where the site's tensor is not simply a tensor of its own:

* a leaf (a parameter): the hook goes on a view of it, or it would stay on the
  parameter for every later call;
* a tensor the module was given and returns as it is (``nn.Identity``, dropout in eval
  mode): there is no tensor of the site's own, so the hook sees that tensor's whole
  gradient, including the part from its other uses;
* a *view* (``nn.Linear`` on a 3-d input returns a view of a 2-d result): autograd drops
  every hook on a view that is later changed in place (``out += x``). If nothing in
  Python can read the view's base (the 2-d result above), the site passes on an alias
  of the view instead, the same memory as one autograd node of its own (``_Alias``),
  on which the hook survives in-place ops. If the base can still be read (a module
  returning ``h[..., :2]`` of an ``h`` its caller keeps using), changing the alias in
  place would hide that change from ``h``'s gradients, so the hook goes on the view,
  and a guard on the base raises :class:`BackwardHookLostError` in the backward pass
  should autograd have dropped it: never a silently missing gradient.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from auto_hookpoint.errors import BackwardHookLostError


def attach_grad_hooks(
    hook_point: Any, tensor: torch.Tensor, hooks: tuple[Callable[..., Any], ...]
) -> torch.Tensor:
    """Make ``hooks`` see the gradient at ``tensor``; return the tensor to pass on."""
    if tensor.grad_fn is None:
        tensor = tensor.view_as(tensor)
    if tensor._base is not None and _references(tensor) <= _UNREFERENCED:
        tensor = _Alias.apply(tensor)  # (counted before any name here holds the base)
    base = tensor._base
    watch = _GradientWatch(hook_point, hooks)
    tensor.register_hook(watch.on_grad)
    if base is not None and base.grad_fn is not None:
        # A detached alias shares the view's version counter but no autograd graph, so
        # holding it creates no reference cycle through the graph.
        watch.storage, watch.version = tensor.detach(), tensor._version
        base.register_hook(watch.on_base_grad)
    return tensor


def _references(view: torch.Tensor) -> int:
    base = view._base
    return sys.getrefcount(base)


# What _references gives for a base no Python code refers to (torch may hold one
# reference of its own): measured, not assumed. More means someone can read the base.
_UNREFERENCED = _references(torch.ones(2, 2).view(4))


class _Alias(torch.autograd.Function):
    """The same memory as a view, as an autograd node that is not a view."""

    @staticmethod
    def forward(ctx: Any, view: torch.Tensor) -> torch.Tensor:
        return view.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _GradientWatch:
    """One site's backward hooks, for one call."""

    def __init__(self, hook_point: Any, hooks: tuple[Callable[..., Any], ...]):
        self.hook_point = hook_point
        self.hooks = hooks
        self.fired = False
        self.storage: torch.Tensor | None = None
        self.version = 0

    def on_grad(self, grad: torch.Tensor) -> torch.Tensor | None:
        self.fired, self.storage = True, None
        grad_output = grad_input = (grad,)
        for hook in self.hooks:
            result = hook(self.hook_point, grad_input, grad_output)
            if result is not None:
                grad_input = result if isinstance(result, tuple) else (result,)
        return None if grad_input is grad_output else grad_input[0]

    def on_base_grad(self, _grad: torch.Tensor) -> None:
        # The base's gradient is complete only after those of its views, so the view's
        # hook has run by now, unless autograd dropped it: views share their base's
        # version counter, and a change means an in-place op on their memory.
        storage, self.storage = self.storage, None
        if not self.fired and storage is not None and storage._version != self.version:
            raise BackwardHookLostError(
                f"the backward hooks at {self.hook_point.name!r} cannot see the gradient "
                "there: its module returned a view of another tensor (an index, slice, "
                ".view or .transpose of it) whose memory the model then changed in place, "
                "and autograd drops hooks on a view that changes in place. Hook the site "
                "of the module that computes the tensor instead, or have this module "
                "return a tensor of its own (.clone())."
            )
