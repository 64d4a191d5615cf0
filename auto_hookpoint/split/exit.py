"""Split exit: stop a forward right after a chosen site fires and return what was banked.

The exit is an observer of the hook core: it banks the sites it watches and, once the
split site has fired, raises :class:`SplitExit`. The exception unwinds the model's
forward (the core's always-called hooks put any lent parameter back on the way) and is
caught by :func:`run_until`, which returns an :class:`EarlyOutput`. Nothing after the
split site is computed, and the model is left exactly as it was.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.context import not_traced
from auto_hookpoint.core.observers import Observer, StopForward
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import Path
from auto_hookpoint.errors import SiteNeverFiredError, UnknownHookNameError
from auto_hookpoint.split.early_output import EarlyOutput, cached_fingerprint
from auto_hookpoint.split.inputs import input_shapes


class SplitExit(StopForward):
    """Raised by the core, after the split site fired, to end the forward early.

    An ``Exception`` (not a ``BaseException``) so that torch's always-called forward hooks
    run while it unwinds the forward. Made as ``SplitExit(observer)``, without an
    ``__init__`` of its own, so that dynamo traces the raise: a compiled forward ends
    there, in one graph.
    """

    @property
    def observer(self) -> SplitObserver:
        observer: SplitObserver = self.args[0]
        return observer

    def __str__(self) -> str:
        return f"split exit after {self.observer.site!r}"


class SplitObserver(Observer):
    traced = True

    def __init__(self, site: str, bank: Iterable[str] = ()):
        self.site = site
        self.watched = [site, *[b for b in bank if b != site]]
        self.activations: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.split_path: Path = ()

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        self.order.append(site.name)
        if site.name == self.site:
            # Nothing runs after this, so nothing can change it: no copy needed.
            self.activations[site.name] = tensor.detach()
            self.split_path = path
            raise SplitExit(self)
        # The forward goes on and may change this tensor in place (x += ...): keep a copy.
        self.activations[site.name] = tensor.detach().clone()


@not_traced
def run_until(
    model: Any, site: str, *args: Any, bank: Iterable[str] = (), **kwargs: Any
) -> EarlyOutput:
    """Run ``model(*args, **kwargs)`` only until ``site`` has fired.

    ``bank`` names further sites to keep (those that fire before the split). Raises
    UnknownHookNameError for a name that is not a site, SiteNeverFiredError if the
    forward ends without ``site`` firing.
    """
    core = core_of(model, "run_until")
    if isinstance(bank, str):  # one name, not its characters
        bank = [bank]
    observer = SplitObserver(site, bank)
    for name in observer.watched:
        if name not in core.sites:
            raise UnknownHookNameError(name, core.sites)
    try:
        with core.observing(observer, observer.watched):
            model(*args, **kwargs)
    except SplitExit as stop:
        if stop.observer is not observer:  # an enclosing run_until's exit: not ours
            raise
        return EarlyOutput(
            site,
            observer.activations,
            observer.order,
            type(model).__name__,
            output_path=list(observer.split_path),
            fingerprint=cached_fingerprint(model),
            inputs=input_shapes(model, args, kwargs),
            source=weakref.ref(model),
        )
    raise SiteNeverFiredError(
        f"the forward ended without {site!r} firing (sites that did fire, of those watched: "
        f"{observer.order or 'none'}); its module is not called for these inputs, or its "
        "output holds no tensor. describe_sites(model, ...) lists which sites fire."
    )
