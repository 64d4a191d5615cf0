"""Helpers shared by the observers: which sites to watch, and tensors in structures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import SiteKind
from auto_hookpoint.core.structure import tensors_with_paths

Row = TypeVar("Row")


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


class KeyAverages(list[Row]):
    """One row per module, as ``torch.profiler``'s ``key_averages()`` gives one per
    operator: a list of rows to read, and :meth:`table` to print.

    ``sort_by`` names a column of the rows (largest first); the observer's default is
    the column it is about (self time, output bytes). ``row_limit`` cuts the table to its
    first rows, as in ``prof.key_averages().table(sort_by=..., row_limit=...)``.
    """

    def __init__(
        self,
        rows: Iterable[Row],
        sort_keys: Mapping[str, str],
        default_sort: str,
        render: Callable[[list[Row]], str],
    ):
        super().__init__(rows)
        self._sort_keys, self._default_sort, self._render = sort_keys, default_sort, render

    def table(self, sort_by: str | None = None, row_limit: int = 100) -> str:
        key = self._default_sort if sort_by is None else sort_by
        column = self._sort_keys.get(key)
        if column is None:
            raise ValueError(
                f"sort_by is one of {', '.join(map(repr, self._sort_keys))}; got {sort_by!r}"
            )
        if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit < 1:
            raise ValueError(f"row_limit is the number of rows to show (>= 1), not {row_limit!r}")
        rows = sorted(self, key=lambda row: getattr(row, column), reverse=True)
        return self._render(rows[:row_limit])
