"""Parameter sites: show a module its parameters' sites, and lend it what their hooks return.

A PARAMETER site fires each time its module runs, with the parameter the module is about
to compute with; what the site's hooks return is what the module computes with, for that
call only (autograd carries gradients through it to the real parameter). Lending happens
only while one of the module's parameter sites is active.

Where the lending happens, and why:

* a plain module: a forward pre-hook lends, and an always-called forward hook (placed
  first) gives the real parameters back before any output hook runs, also when the
  forward raises;
* a module whose forward accelerate has wrapped (``dispatch_model``,
  ``from_pretrained(device_map=...)``): *inside* accelerate's wrapper, around the inner
  forward it calls (``_old_forward``). accelerate loads offloaded weights after torch's
  pre-hooks and sets them back to ``meta`` before torch's forward hooks, so this is the
  only place where the site sees the weight the module computes with, on its execution
  device, and where accelerate only ever sees its own ``Parameter`` objects. The lending
  forward is put in the module's ``__dict__`` while a parameter site is active, and the
  very object accelerate had there is put back when none is (also by ``unwrap``).

Lent tensors are plain tensors; the real ``Parameter`` is back in ``_parameters`` as soon
as the call ends, whatever happened in it: torch runs always-called hooks for an
``Exception`` only, so for a ``KeyboardInterrupt`` (Ctrl-C in a notebook) or
``SystemExit`` the hooked model's call gives back whatever is still lent
(:meth:`ParameterLending.give_back_all`, from ``HookedModule.__call__``).

The lending pre-hook runs before the module's other pre-hooks, which may compute with
the parameters (pruning's computes ``weight = weight_orig * mask``); in a call nested in
another call of the same module, the site still sees the real parameter, not what the
outer call was lent.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol

from torch import nn
from torch.utils.hooks import RemovableHandle

from auto_hookpoint.core.devices import WRAPPED_FORWARD, accelerate_forward
from auto_hookpoint.core.muting import is_muted

if TYPE_CHECKING:
    from auto_hookpoint.core.sites import Site


class ParameterFirer(Protocol):
    def fire_parameter(self, site: Site, parameter: Any) -> Any:
        """Fire ``site`` with ``parameter``; return what the module should compute with."""


class ParameterLending:
    """The parameter sites of one module, and whatever is placed to lend for them."""

    def __init__(self, firer: ParameterFirer, module: nn.Module):
        self.firer = firer  # bound methods only (no closures): deepcopy follows the model
        self.module = module
        self.sites: list[Site] = []
        self._handles: tuple[RemovableHandle, RemovableHandle] | None = None
        self._give_back_id: int | None = None  # kept, to place the hook again under this id
        self._wrapper: _LendingForward | None = None
        # One frame per call in flight, from the pre-hook (a stack, because a module may
        # be called again from inside its own forward); and every frame, of either route,
        # that holds lent parameters now (name -> real parameter).
        self._frames: list[dict[str, Any]] = []
        self._lent: list[dict[str, Any]] = []

    def place(self) -> None:
        """Lend on every call of the module from now on (idempotent)."""
        if self._handles is None:
            module = self.module
            # prepend: the real parameters are back before any output hook runs.
            give_back = _always_called_first(module, self._after_call, self._give_back_id)
            self._give_back_id = give_back.id
            lend = module.register_forward_pre_hook(self._before_call, prepend=True)
            self._handles = (lend, give_back)
        self._wrap_accelerate_forward()

    def remove(self) -> None:
        """Stop lending, and put back exactly what accelerate had (idempotent)."""
        if self._handles is not None:
            for handle in self._handles:
                handle.remove()
            self._handles = None
        wrapper = self._wrapper
        self._wrapper = None
        if wrapper is not None:
            state, inner = self.module.__dict__, wrapper.inner
            if state.get(WRAPPED_FORWARD) is wrapper:
                state[WRAPPED_FORWARD] = inner
            elif state.get("forward") is wrapper:  # accelerate's hook was removed meanwhile
                state["forward"] = inner

    def hook_count(self) -> int:
        """Torch hooks placed, plus one for a lending forward inside accelerate's."""
        return (2 if self._handles is not None else 0) + (self._wrapper is not None)

    def lending_now(self) -> bool:
        """Whether a call of the module is running with lent parameters."""
        return bool(self._lent)

    def lend(self, frame: dict[str, Any]) -> None:
        """Fire each site and put what came back in ``_parameters``; ``frame`` records the
        real parameters as it goes, so that giving back is complete even if a hook raises."""
        parameters = self.module._parameters
        enclosing = self._lent
        enclosing.append(frame)
        for site in self.sites:
            name = site.param_name
            assert name is not None
            param = parameters.get(name)
            if param is None:
                continue
            # In a call nested in one that lent this parameter, _parameters holds what
            # the outer call was lent: the site still sees the real one.
            real = param
            for outer in enclosing:
                if name in outer:
                    real = outer[name]
                    break
            shown = self.firer.fire_parameter(site, real)
            if shown is not param:
                frame[name] = param
                parameters[name] = shown

    def give_back(self, frame: dict[str, Any]) -> None:
        self.module._parameters.update(frame)
        frame.clear()
        lent = self._lent
        for index in range(len(lent) - 1, -1, -1):  # the innermost first: usually the last
            if lent[index] is frame:
                del lent[index]
                break

    def give_back_all(self) -> None:
        """Give back everything still lent, innermost first, and forget the calls' frames:
        a ``KeyboardInterrupt`` or ``SystemExit`` ended them, and torch runs no
        always-called hook for those."""
        while self._lent:
            self.give_back(self._lent[-1])
        self._frames.clear()

    def _wrap_accelerate_forward(self) -> None:
        if self._wrapper is None and accelerate_forward(self.module):
            state = self.module.__dict__
            self._wrapper = _LendingForward(self, state[WRAPPED_FORWARD])
            state[WRAPPED_FORWARD] = self._wrapper

    def _before_call(self, module: nn.Module, _args: Any) -> None:
        frame: dict[str, Any] = {}
        self._frames.append(frame)
        if is_muted(module):
            return
        if accelerate_forward(module):
            self._wrap_accelerate_forward()  # dispatched after the site became active
            return  # the lending forward inside accelerate's lends
        self.lend(frame)

    def _after_call(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        if self._frames:
            self.give_back(self._frames.pop())


def _always_called_first(module: nn.Module, hook: Any, reuse_id: int | None) -> RemovableHandle:
    """``module.register_forward_hook(hook, prepend=True, always_call=True)``, under the
    handle id ``reuse_id`` if given (the id this hook had when last placed).

    Compiled code guards on the id of an always-called hook (torch's ``_call_impl`` asks
    ``hook_id in self._forward_hooks_always_called``), so the same hook placed again
    under a new id, as every ``run_with_hooks`` with a parameter hook would, recompiles
    on every call; under its old id, the code compiled for it is reused. Ids come from
    one global counter, so an id once handed to this hook is never anyone else's.
    """
    if reuse_id is None:
        return module.register_forward_hook(hook, prepend=True, always_call=True)
    hooks, always_called = module._forward_hooks, module._forward_hooks_always_called
    handle = RemovableHandle(hooks, extra_dict=always_called)
    handle.id = reuse_id  # remove() deletes this id from both dicts
    hooks[reuse_id] = hook
    hooks.move_to_end(reuse_id, last=False)  # type: ignore[attr-defined]  # an OrderedDict
    always_called[reuse_id] = True
    return handle


class _LendingForward:
    """Stands in accelerate's ``_old_forward``: lends around the module's own forward."""

    def __init__(self, lending: ParameterLending, inner: Any):
        self.lending = lending
        self.inner = inner
        functools.update_wrapper(self, inner)  # signature and name, for whoever inspects it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        frame: dict[str, Any] = {}
        try:
            self.lending.lend(frame)
            return self.inner(*args, **kwargs)
        finally:
            self.lending.give_back(frame)
