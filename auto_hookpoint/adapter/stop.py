"""``stop_at_layer``: run the HF model only until a residual-stream site fires.

Unlike :func:`auto_hookpoint.split.run_until` (which banks detached activations, to save
or send them), the activation is returned on the autograd graph, as TransformerLens'
``stop_at_layer`` returns it: a loss computed from it reaches the weights below.
"""

from __future__ import annotations

from typing import Any

import torch

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.context import not_traced
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import Path
from auto_hookpoint.errors import SiteNeverFiredError
from auto_hookpoint.split.exit import SplitExit, SplitObserver


class _KeepGraph(SplitObserver):
    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        self.activations[site.name] = tensor
        raise SplitExit(self)


@not_traced  # compiled (sae_lens' compile_llm), the forward up to the site is one graph
def run_to_site(model: Any, site: str, **kwargs: Any) -> torch.Tensor:
    """``model(**kwargs)`` until ``site`` fires; what it fired with (after its hooks)."""
    observer = _KeepGraph(site)
    try:
        with core_of(model).observing(observer, [site]):
            model(**kwargs)
    except SplitExit as stop:
        if stop.observer is not observer:  # an enclosing split's exit: not ours
            raise
        return observer.activations[site]
    raise SiteNeverFiredError(f"the forward ended without {site!r} firing")
