"""What each profiling observer costs while active, against the same hooked model idle.

    .venv/bin/python benchmarks/observers.py [--rounds N]

Small and tiny Llama of benchmarks/overhead.py, one thread, no_grad forward; every
module of the model watched; interleaved rounds, median of per-round ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import SHAPES, build  # noqa: E402
from timing import median_ratios, start  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402
from auto_hookpoint.observers.memory import memory_profile  # noqa: E402
from auto_hookpoint.observers.numerics import find_nonfinite  # noqa: E402
from auto_hookpoint.observers.trace import trace  # noqa: E402


def run(shape: str, rounds: int) -> str:
    hidden, layers, heads, batch, seq, calls = SHAPES[shape]
    model = auto_hook(build(hidden, layers, heads))
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))

    def under(observer):  # noqa: ANN001, ANN202
        def call() -> None:
            with observer(model):
                model(ids)

        return call

    variants = {
        "idle": lambda: model(ids),
        "trace": under(trace),
        "memory": under(memory_profile),
        "numerics": under(find_nonfinite),
    }
    with torch.no_grad():
        r, base = median_ratios(variants, "idle", rounds, calls)
    return (
        f"| {shape} | {base * 1e3:.3f} | {r['trace']:.3f}x | {r['memory']:.3f}x | "
        f"{r['numerics']:.3f}x |"
    )


def main() -> None:
    rounds = start(__doc__.split("\n")[0], default_rounds=40)
    print("| model | hooked, idle ms | trace | memory | numerics |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        print(run(shape, rounds))


if __name__ == "__main__":
    main()
