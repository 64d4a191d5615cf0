"""Helpers shared by the observers: which sites to watch, and tensors in structures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import SiteKind
from auto_hookpoint.core.structure import tensors_with_paths


def module_sites(
    model: nn.Module, names: Iterable[str] | Callable[[str], bool] | None
) -> list[str]:
    """The module-output sites to watch: all of them, a list, or those a predicate picks."""
    sites = [
        name
        for name, site in core_of(model, "this observer").sites.items()
        if site.kind in (SiteKind.OUTPUT, SiteKind.HOOK_POINT) and site.name == _own_name(site)
    ]
    if names is None:
        return sites
    if callable(names):
        return [n for n in sites if names(n)]
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(
            "names must be a list of module-output site names or a function of the site "
            f"name (None: every module); got {names!r}"
        )
    wanted = list(names)
    for name in wanted:
        if name not in sites:
            from auto_hookpoint.errors import UnknownHookNameError

            raise UnknownHookNameError(name, sites)
    return wanted


def _own_name(site: Any) -> str:
    # A module's own site, not an alias added on top of it (adapter names).
    from auto_hookpoint.core.sites import site_name

    return site.name if site.kind is SiteKind.HOOK_POINT else site_name(site.module_path)


@contextlib.contextmanager
def observing(model: nn.Module, observer: Observer, names: list[str]) -> Iterator[None]:
    with core_of(model, "this observer").observing(observer, names):
        yield


def describe(values: Any) -> list[str]:
    """'float32[2, 8, 64]' for each tensor in a structure."""
    return [
        f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        for _, t in tensors_with_paths(values)
    ]
