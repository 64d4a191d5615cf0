"""Give a module its real parameters back also when its forward is interrupted.

The hook core lends a module the tensors its parameter sites' hooks returned for the
duration of a call and takes them back in an always-called forward hook. torch runs
always-called hooks only when the forward raises an ``Exception``: a
``KeyboardInterrupt`` (Ctrl-C in a notebook) or ``SystemExit`` would leave the hooked
tensor in the module's ``_parameters``, where ``state_dict()``, the optimizer and every
later call would use it. While a module lends parameters, its forward is wrapped by
:class:`ParamsBack`, which gives them back for those exceptions too.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


class ParamsBack:
    """Stands in for ``module.forward`` while the module lends parameters."""

    def __init__(self, module: nn.Module, give_back: Any):
        self.module = module
        self.give_back = give_back
        self.previous = module.__dict__.get("forward")  # e.g. accelerate's own wrapper

    def inner(self) -> Any:
        if self.previous is not None:
            return self.previous
        return type(self.module).forward.__get__(self.module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.inner()(*args, **kwargs)
        except Exception:
            raise  # torch runs the always-called hook that gives them back
        except BaseException:
            self.give_back(self.module, args, None)
            raise

    @property
    def __signature__(self) -> inspect.Signature:  # what callers inspecting forward see
        return inspect.signature(self.inner())

    def install(self) -> None:
        self.module.__dict__["forward"] = self

    def remove(self) -> None:
        state = self.module.__dict__
        if state.get("forward") is self:  # not replaced by someone else since
            if self.previous is None:
                del state["forward"]
            else:
                state["forward"] = self.previous
