"""Interleaved timing: the median, over many rounds, of each variant's time over a baseline's."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping


def median_ratios(
    variants: Mapping[str, Callable[[], object]],
    baseline: str,
    rounds: int,
    calls_per_sample: int = 1,
    warmup: int = 3,
) -> tuple[dict[str, float], float]:
    """Time each variant once per round, in a rotating order, and return
    ({variant: median over rounds of its time / the baseline's time in that round},
    the baseline's median seconds per call)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    ratios: dict[str, list[float]] = {name: [] for name in names}
    base_times: list[float] = []
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        times: dict[str, float] = {}
        for name in order:
            fn = variants[name]
            start = time.perf_counter()
            for _ in range(calls_per_sample):
                fn()
            times[name] = (time.perf_counter() - start) / calls_per_sample
        base_times.append(times[baseline])
        for name in names:
            ratios[name].append(times[name] / times[baseline])
    return {n: statistics.median(r) for n, r in ratios.items()}, statistics.median(base_times)


def start(description: str, default_rounds: int) -> int:
    """The common start of a benchmark: read ``--rounds`` from the command line, time on
    one torch thread, print the torch version and the method; return the rounds."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=default_rounds)
    rounds: int = parser.parse_args().rounds
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, median of {rounds} interleaved rounds\n")
    return rounds
