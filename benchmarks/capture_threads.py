"""capture's cost, and one model shared by two threads.

    .venv/bin/python benchmarks/capture_threads.py [--rounds N]

(1) Small and tiny Llama of benchmarks/overhead.py: a forward under capture of one
middle layer and of every site, against the same hooked model idle (median of
interleaved per-round ratios). (2) Throughput of 2 threads running forwards with
their own run_with_hooks on one shared model, against 1 thread doing the same work
(torch at one thread each; 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import SHAPES, build  # noqa: E402
from timing import median_ratios  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402
from auto_hookpoint.observers.capture import capture  # noqa: E402


def capture_row(shape: str, rounds: int) -> str:
    hidden, layers, heads, batch, seq, calls = SHAPES[shape]
    model = auto_hook(build(hidden, layers, heads))
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    one = f"model.layers.{layers // 2}.hook_point"

    def under(names: object):  # noqa: ANN202
        def call() -> None:
            with capture(model, names):  # type: ignore[arg-type]
                model(ids)

        return call

    variants = {"idle": lambda: model(ids), "one": under(one), "all": under(lambda n: True)}
    with torch.no_grad():
        r, base = median_ratios(variants, "idle", rounds, calls)
    return f"| {shape} | {base * 1e3:.3f} | {r['one']:.3f}x | {r['all']:.3f}x |"


def threads_row(shape: str, seconds: float = 3.0) -> str:
    hidden, layers, heads, batch, seq, _ = SHAPES[shape]
    model = auto_hook(build(hidden, layers, heads))
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    hook = [(f"model.layers.{layers // 2}.mlp.hook_point", lambda t, hook: t * 0.5)]

    def work(counter: list[int], stop: float) -> None:
        with torch.no_grad():
            while time.perf_counter() < stop:
                model.run_with_hooks(ids, fwd_hooks=hook)
                counter[0] += 1

    rates = {}
    for n in (1, 2):
        counters = [[0] for _ in range(n)]
        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=work, args=(c, stop)) for c in counters]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates[n] = sum(c[0] for c in counters) / seconds
    return f"| {shape} | {rates[1]:.1f} /s | {rates[2]:.1f} /s | {rates[2] / rates[1]:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 torch thread per Python thread\n")
    print("| model | hooked, idle ms | capture one layer | capture every site |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        print(capture_row(shape, args.rounds))
    print("\n| model | 1 thread | 2 threads, one shared model | speed-up |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        print(threads_row(shape))


if __name__ == "__main__":
    main()
