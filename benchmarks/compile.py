"""What hooks cost in a compiled model: each variant against the compiled un-hooked model.

    .venv/bin/python benchmarks/compile.py [--rounds N] [--backend inductor] [--shapes tiny small]
    .venv/bin/python benchmarks/compile.py --sae   # also sae_lens' runner, compile_llm=True

For the small and tiny Llama of benchmarks/overhead.py, each variant is its own copy of
the same weights, compiled in place (``model.compile()``, so that ``run_with_cache`` and
``run_with_hooks`` run compiled too): the un-hooked model; the un-hooked model with a
plain torch forward hook on one layer, registered before compiling (what a hook costs
when torch compiles it in); the hooked model idle; with one cached site
(``run_with_cache``); with one editing hook (``run_with_hooks``); with a parameter hook.
One thread; calls interleaved round by round; each figure is the median over rounds of
(variant time / compiled un-hooked time in the same round). Graph breaks and compiled
frames (a recompile is every frame after the first) are counted with torch's own
counters while each variant warms up, and checked again after the timed rounds.

``--sae`` times sae_lens' ``LanguageModelSAETrainingRunner`` activation store with
``compile_llm=True`` (it compiles ``model.run_with_cache``) through the
HookedTransformerAdapter, against the same store uncompiled: activations per second.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
from overhead import SHAPES, build  # noqa: E402
from timing import median_ratios  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


class Variant:
    """One compiled copy of the model and the call to time."""

    def __init__(self, name: str, model: Any, call: Callable[[Any], object], backend: str):
        self.name, self.model, self.call = name, model, call
        self.counter = CompileCounterWithBackend(backend)
        model.compile(backend=self.counter)
        self.breaks = 0

    def warm_up(self, ids: torch.Tensor) -> None:
        before = graph_breaks()
        for _ in range(3):
            self.call(ids)
        self.breaks = graph_breaks() - before

    def __call__(self, ids: torch.Tensor) -> object:
        return self.call(ids)


def variants(shape: str, backend: str) -> list[Variant]:
    hidden, layers, heads, *_ = SHAPES[shape]
    plain = build(hidden, layers, heads)
    layer = f"model.layers.{layers // 2}"
    site, param_site = f"{layer}.hook_point", f"{layer}.input_layernorm.weight.hook_point"

    def edit(t: torch.Tensor, hook: Any) -> torch.Tensor:
        return t * 0.5

    with_torch_hook = copy.deepcopy(plain)
    with_torch_hook.get_submodule(layer).register_forward_hook(lambda m, i, o: None)
    hooked = [auto_hook(copy.deepcopy(plain)) for _ in range(4)]
    return [
        Variant("compiled raw", plain, lambda ids: plain(ids), backend),
        Variant(
            "raw + plain torch hook", with_torch_hook, lambda ids: with_torch_hook(ids), backend
        ),
        Variant("hooked, idle", hooked[0], lambda ids: hooked[0](ids), backend),
        Variant(
            "one cached site",
            hooked[1],
            lambda ids: hooked[1].run_with_cache(ids, names_filter=site),
            backend,
        ),
        Variant(
            "one editing hook",
            hooked[2],
            lambda ids: hooked[2].run_with_hooks(ids, fwd_hooks=[(site, edit)]),
            backend,
        ),
        Variant(
            "parameter hook",
            hooked[3],
            lambda ids: hooked[3].run_with_hooks(ids, fwd_hooks=[(param_site, edit)]),
            backend,
        ),
    ]


def run(shape: str, rounds: int, backend: str) -> list[str]:
    torch._dynamo.reset()  # each shape starts with fresh caches (no automatic dynamic shapes)
    *_, batch, seq, calls = SHAPES[shape]
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    chosen = variants(shape, backend)
    rows = []
    with torch.no_grad():
        for variant in chosen:
            variant.warm_up(ids)
        frames = {v.name: v.counter.frame_count for v in chosen}
        ratios, base = median_ratios(
            {v.name: (lambda v=v: v(ids)) for v in chosen}, "compiled raw", rounds, calls
        )
    for variant in chosen:
        steady = "" if variant.counter.frame_count == frames[variant.name] else " (recompiled!)"
        rows.append(
            f"| {shape} | {variant.name} | {ratios[variant.name]:.3f}x | {variant.breaks} | "
            f"{variant.counter.frame_count - 1}{steady} |"
        )
    return [f"| {shape} | compiled raw, ms per call | {base * 1e3:.3f} | | |", *rows]


def sae_rate(compile_llm: bool, shape: str, rounds: int) -> tuple[float, int]:
    """Activations per second of sae_lens' training runner's store; and its frame count."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, StandardTrainingSAEConfig
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    from auto_hookpoint.adapter import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_corpus, demo_tokenizer

    hidden, layers, heads, batch, seq, _ = SHAPES[shape]
    adapter = HookedTransformerAdapter(build(hidden, layers, heads), demo_tokenizer())
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=hidden, d_sae=4 * hidden),
        hook_name=f"blocks.{layers // 2}.hook_resid_post", is_dataset_tokenized=False,
        streaming=False, context_size=seq, store_batch_size_prompts=batch, device="cpu",
        compile_llm=compile_llm, llm_compilation_mode=None, training_tokens=batch * seq,
        logger=LoggingConfig(log_to_wandb=False), output_path=tempfile.mkdtemp(),
    )  # fmt: skip
    runner = LanguageModelSAETrainingRunner(
        cfg, override_model=adapter, override_dataset=Dataset.from_dict({"text": demo_corpus()})
    )
    store = runner.activations_store
    tokens = store.get_batch_tokens(batch)
    before = counters["stats"]["unique_graphs"]
    times = []
    for index in range(rounds + 3):
        start = time.perf_counter()
        store.get_activations(tokens)
        if index >= 3:
            times.append(time.perf_counter() - start)
    return tokens.numel() / statistics.median(times), counters["stats"]["unique_graphs"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sae", action="store_true", help="also time sae_lens' runner")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, backend {args.backend}, 1 thread, median of "
        f"{args.rounds} interleaved rounds\n"
    )
    print("| model | variant | / compiled raw | graph breaks | recompiles |")
    print("|---|---|---|---|---|")
    for shape in args.shapes:
        print("\n".join(run(shape, args.rounds, args.backend)), flush=True)
    if args.sae:
        print("\n| model | sae_lens store, uncompiled | compile_llm=True | speed-up | graphs |")
        print("|---|---|---|---|---|")
        for shape in args.shapes:
            torch._dynamo.reset()
            eager, _ = sae_rate(False, shape, args.rounds)
            compiled, graphs = sae_rate(True, shape, args.rounds)
            print(
                f"| {shape} | {eager:,.0f} acts/s | {compiled:,.0f} acts/s | "
                f"{compiled / eager:.2f}x | {graphs} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
