"""capture: record chosen activations while any call of the model runs.

    with capture(model, names="model.layers.*.mlp.hook_point", append=True) as acts:
        model.generate(ids, max_new_tokens=5)
    acts["model.layers.0.mlp.hook_point"]          # one tensor per forward call (a list)
    acts.cat("model.layers.0.mlp.hook_point")      # joined along positions

Names are exact site names, globs or a predicate. In a glob ``*`` matches within one
dotted segment (``model.layers.*.hook_point``: each layer's output) and ``**`` across
segments (``model.layers.**.hook_point``: every site inside the layers). Each
activation is a copy of the value the site fired with, taken at that moment (a later
in-place op in the forward does not change it), detached (unless ``detach=False``: then
a differentiable copy, through which gradients reach the model), optionally cut to
``positions`` (an int, slice or list) along ``pos_dim`` and moved/cast with
``device``/``dtype`` (the dtype applies to floating-point values; integer and boolean
tensors keep theirs). With ``append=True`` every call is kept (generation steps), else
the last. Visible only to the thread or task that entered it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site
from auto_hookpoint.core.structure import Path
from auto_hookpoint.errors import UnknownHookNameError

Names = str | Sequence[str] | Callable[[str], bool]


def select_sites(
    all_names: Sequence[str], names: Names, make_leaf: Callable[[str], Any] | None = None
) -> list[str]:
    """Site names matching exact names, globs or a predicate; an exact name that is not
    a site, or a glob that matches nothing, raises UnknownHookNameError."""
    if callable(names):
        return [n for n in all_names if names(n)]
    patterns = [names] if isinstance(names, str) else names
    if not isinstance(patterns, Iterable) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            "names must be a site name or glob ('model.layers.*.hook_point'), a list of "
            f"them, or a function of the site name; got {names!r}"
        )
    chosen: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            regex = _glob_regex(pattern)
            matched = [n for n in all_names if regex.fullmatch(n)]
        elif pattern in all_names or (make_leaf is not None and make_leaf(pattern) is not None):
            matched = [pattern]
        else:
            matched = []
        if not matched:
            raise UnknownHookNameError(pattern, all_names)
        chosen += [m for m in matched if m not in chosen]
    return chosen


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` any characters, ``*`` any but '.', ``?`` one but '.', ``[...]`` a class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^.]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^.]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            members = pattern[i + 1 : end]
            negate = members.startswith("!")
            body = re.escape(members[1:] if negate else members).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


class Captured(Observer, Mapping[str, Any]):
    traced = True

    def __init__(
        self,
        detach: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        positions: int | slice | Sequence[int] | None = None,
        pos_dim: int = 1,
        append: bool = False,
    ):
        self.detach, self.device, self.dtype = detach, device, dtype
        self.positions, self.pos_dim, self.append = positions, pos_dim, append
        self._store: dict[str, Any] = {}

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        if self.detach:
            tensor = tensor.detach()
        if self.positions is not None and tensor.dim() > self.pos_dim:
            index = self.positions
            if isinstance(index, int):
                index = slice(index, index + 1 if index != -1 else None)
            if isinstance(index, slice):
                tensor = tensor[(slice(None),) * self.pos_dim + (index,)]
            else:
                tensor = tensor.index_select(
                    self.pos_dim, torch.as_tensor(index, device=tensor.device)
                )
        # A copy of what the site produced, taken now (after cutting, so only what is
        # kept is copied): a later in-place op in the forward cannot rewrite it. The
        # dtype applies to floating-point values only: token ids and masks stay as
        # they are.
        dtype = self.dtype if tensor.is_floating_point() else None
        tensor = tensor.to(device=self.device, dtype=dtype, copy=True)
        if self.append:
            self._store.setdefault(site.name, []).append(tensor)
        else:
            self._store[site.name] = tensor

    def cat(self, name: str, dim: int | None = None) -> torch.Tensor:
        """The calls of an ``append=True`` capture joined along ``dim`` (``pos_dim``)."""
        value = self._store[name]
        return (
            torch.cat(value, dim=self.pos_dim if dim is None else dim)
            if isinstance(value, list)
            else value
        )

    def __getitem__(self, name: str) -> Any:
        if name not in self._store:
            raise KeyError(
                f"{name!r} was not captured (it did not fire); captured: {list(self._store)}"
            )
        return self._store[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)


@contextlib.contextmanager
def capture(model: nn.Module, names: Names, **options: Any) -> Iterator[Captured]:
    """Record the activations of the sites ``names`` for every call in this context."""
    core = core_of(model, "capture")
    captured = Captured(**options)
    with core.observing(captured, select_sites(list(core.sites), names, core.leaf_site)):
        yield captured
