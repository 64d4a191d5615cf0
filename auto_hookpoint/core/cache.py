"""The observer behind ``run_with_cache``: TransformerLens' caching, dispatched by the core.

It stores what TransformerLens' caching hook stores (the activation detached, moved to
``device``, batch dim removed on request, ``pos_slice`` applied on the position
dimension) under the site name, without adding a hook to any HookPoint, so it costs
less and is visible only to the thread or task that runs the cached forward.

Unlike TransformerLens, which keeps a detached *view*, each value is a copy taken when
the site fires: a later in-place op in the forward (``out += identity``,
``ReLU(inplace=True)``) cannot rewrite what was cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any

import torch
from transformer_lens import utilities as tl_utilities
from transformer_lens.utilities import Slice

from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import Path
from auto_hookpoint.errors import UnknownHookNameError

# TransformerLens' rule: these activations keep positions third from last.
_HEAD_SUFFIXES = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")

NamesFilter = Callable[[str], bool] | Sequence[str] | str | None

# remove_batch_dim as the installed TransformerLens does it: 3.x takes [0] of every
# activation; 4.x drops a leading dimension only where it is 1, and refuses a batch.
_TL_MAJOR = int(version("transformer_lens").split(".")[0])


def drop_batch_dim(tensor: torch.Tensor) -> torch.Tensor:
    if _TL_MAJOR >= 4:
        return tl_utilities.remove_batch_dim(tensor)  # type: ignore[no-any-return]
    return tensor[0]


def check_batch_removable(model_args: Sequence[Any], remove_batch_dim: bool) -> None:
    """TransformerLens 4's check: remove_batch_dim only with a batch of one."""
    if _TL_MAJOR >= 4 and remove_batch_dim and model_args:
        first = model_args[0]
        if isinstance(first, torch.Tensor) and first.ndim > 0 and first.shape[0] != 1:
            raise AssertionError(
                f"Cannot remove batch dimension from cache with batch size {first.shape[0]}"
            )


def resolve_names_filter(
    names_filter: NamesFilter,
    sites: Mapping[str, Any],
    make_leaf: Callable[[str], Any] | None = None,
) -> list[str]:
    """The site names (keys of ``sites``) that a TransformerLens ``names_filter`` selects.

    Unlike TransformerLens, a name given as a string (or in a list) that is not a site
    raises :class:`UnknownHookNameError` with the closest names, rather than caching
    nothing in silence.
    """
    if names_filter is None:
        return list(sites)
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    if isinstance(names_filter, Sequence):
        for name in names_filter:
            if name not in sites and (make_leaf is None or make_leaf(name) is None):
                raise UnknownHookNameError(name, sites)
        return list(dict.fromkeys(names_filter))
    if callable(names_filter):
        return [name for name in sites if names_filter(name)]
    raise ValueError("names_filter must be a string, list of strings, or function")


class CacheObserver(Observer):
    traced = True

    def __init__(
        self,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        pos_slice: Any = None,
    ):
        self.cache: dict[str, torch.Tensor] = {}
        self.device = device
        self.remove_batch_dim = remove_batch_dim
        unwrapped = None if pos_slice is None else Slice.unwrap(pos_slice)
        self.pos_slice = None if unwrapped is None or unwrapped.slice is None else unwrapped

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        stored = tensor.detach()
        if self.remove_batch_dim:
            stored = drop_batch_dim(stored)
        if self.pos_slice is not None:
            pos_dim = -3 if site.name.endswith(_HEAD_SUFFIXES) else -2
            if stored.dim() >= -pos_dim:
                stored = self.pos_slice.apply(stored, dim=pos_dim)
        # Sliced first, so only what is kept is copied; copied always (see above).
        self.cache[site.name] = stored.to(self.device, copy=True)


def cached_forward(
    core: Any,
    names: list[str],
    call: Callable[[], Any],
    device: torch.device | str | None = None,
    remove_batch_dim: bool = False,
    pos_slice: Any = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``call()`` with a CacheObserver on ``names`` of the hook ``core``:
    the body of run_with_cache when no backward caching or kept hooks are asked for."""
    observer = CacheObserver(device, remove_batch_dim, pos_slice)
    with core.observing(observer, names):
        output = call()
    return output, observer.cache
