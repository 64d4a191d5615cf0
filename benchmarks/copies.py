"""What keeping a *copy* of each value costs, against keeping a view (as before).

    .venv/bin/python benchmarks/copies.py [--rounds N]

run_with_cache and capture store a copy of each value taken when its site fires, so an
in-place op later in the forward cannot rewrite it; they used to store a detached view
(as TransformerLens does), which costs nothing but can be rewritten. On the small and
tiny Llama of benchmarks/overhead.py, in one process, interleaved: the hooked model
idle, run_with_cache of one layer and capture of every site, each with the observers as
shipped (copies) and with a view-keeping variant of the same observer (views). Each
figure is the median over rounds of the variant's time over the idle model's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import SHAPES, build  # noqa: E402
from timing import median_ratios, start  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402
from auto_hookpoint.core.cache import CacheObserver  # noqa: E402
from auto_hookpoint.observers.capture import Captured  # noqa: E402


class ViewCache(CacheObserver):
    """run_with_cache's observer as it was: a detached view of each value."""

    def on_output(self, site: Any, tensor: Any, path: Any = ()) -> None:
        self.cache[site.name] = tensor.detach()


class ViewCapture(Captured):
    """capture's observer as it was (no options): a detached view of each value."""

    def on_output(self, site: Any, tensor: Any, path: Any = ()) -> None:
        self._store[site.name] = tensor.detach()


def row(shape: str, rounds: int) -> str:
    hidden, layers, heads, batch, seq, calls = SHAPES[shape]
    model = auto_hook(build(hidden, layers, heads))
    core = model._auto_hook_core
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    one = [f"model.layers.{layers // 2}.hook_point"]
    every = list(core.sites)

    def observed(observer_class: type, names: list[str]) -> Any:
        def call() -> None:
            with core.observing(observer_class(), names):
                model(ids)

        return call

    variants = {
        "idle": lambda: model(ids),
        "cache, copies": observed(CacheObserver, one),
        "cache, views": observed(ViewCache, one),
        "capture all, copies": observed(Captured, every),
        "capture all, views": observed(ViewCapture, every),
    }
    with torch.no_grad():
        r, base = median_ratios(variants, "idle", rounds, calls)
    cells = [f"{r[name]:.3f}x" for name in list(variants)[1:]]
    return f"| {shape} | {base * 1e3:.3f} | " + " | ".join(cells) + " |"


def main() -> None:
    rounds = start(__doc__.split("\n")[0], default_rounds=40)
    print(
        "| model | hooked, idle ms | cache one layer, copies | views "
        "| capture every site, copies | views |"
    )
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        print(row(shape, rounds))


if __name__ == "__main__":
    main()
