"""Split exit and resume: time against one full un-hooked forward, per split block.

    .venv/bin/python benchmarks/split.py [--rounds N]

For each block k of the small and tiny Llama of benchmarks/overhead.py: run_until
block k (exit), resume_from block k, and the two together, each as a median ratio
to the un-hooked full forward, interleaved, with the alternatives for the same exit:
a bare torch forward hook that raises (placed per call), and sae_lens' HookedProxyLM
stopping after that layer (as its activation store asks).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import SHAPES, build, proxy_for  # noqa: E402
from timing import median_ratios, start  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402


class _Stop(Exception):
    pass


def _raise(*_: object) -> None:
    raise _Stop


def bare_exit(model: Any, layer: int, ids: torch.Tensor) -> None:
    """The least any library can do: a plain torch hook that raises, placed per call."""
    handle = model.model.layers[layer].register_forward_hook(_raise)
    try:
        model(ids)
    except _Stop:
        pass
    finally:
        handle.remove()


def run(shape: str, rounds: int) -> list[str]:
    hidden, layers, heads, batch, seq, calls = SHAPES[shape]
    plain = build(hidden, layers, heads)
    ours = auto_hook(copy.deepcopy(plain))
    bare = copy.deepcopy(plain)
    proxy = proxy_for(copy.deepcopy(plain))
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        for k in range(layers):
            site = f"model.layers.{k}.hook_point"
            early = ours.run_until(site, ids)
            variants = {
                "plain": lambda: plain(ids),
                "exit": lambda site=site: ours.run_until(site, ids),
                "resume": lambda site=site, early=early: ours.resume_from(site, early, ids),
                "bare": lambda k=k: bare_exit(bare, k, ids),
            }
            if proxy is not None:
                variants["proxy"] = lambda k=k: proxy.run_with_cache(
                    ids, names_filter=[f"model.layers.{k}"], stop_at_layer=k + 1
                )
            r, base = median_ratios(variants, "plain", rounds, calls)
            proxy_cell = f"{r['proxy']:.3f}x" if "proxy" in r else "not installed"
            rows.append(
                f"| {shape} | layers.{k} ({k + 1} of {layers}) | {base * 1e3:.3f} | "
                f"{r['exit']:.3f}x | {r['bare']:.3f}x | {proxy_cell} | {r['resume']:.3f}x | "
                f"{r['exit'] + r['resume']:.3f}x |"
            )
    return rows


def main() -> None:
    rounds = start(__doc__.split("\n")[0], default_rounds=40)
    print(
        "| model | split after | full forward ms | run_until | bare raising hook "
        "| HookedProxyLM stop | resume_from | run_until + resume_from |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        print("\n".join(run(shape, rounds)))


if __name__ == "__main__":
    main()
