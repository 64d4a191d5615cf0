"""Activations per second that sae_lens' ActivationsStore gets from a model: the
HookedTransformerAdapter against sae_lens' own HookedProxyLM, on the same HF Llama.

    .venv/bin/python benchmarks/sae_throughput.py [--rounds N]

For the small and tiny Llama of benchmarks/overhead.py (4 layers each here, so that
"block 1 of 4" and "the last block" are both real), a hook on block 1 and on the last
block; each round times one ActivationsStore.get_activations call per model on the
same token batch, interleaved; figures are medians.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from overhead import build  # noqa: E402
from timing import start  # noqa: E402

from auto_hookpoint.adapter import HookedTransformerAdapter  # noqa: E402
from auto_hookpoint.demo import demo_corpus, demo_tokenizer  # noqa: E402

SHAPES = {  # hidden, heads, context, prompts per store batch
    "small": (256, 4, 128, 4),
    "tiny": (16, 2, 8, 1),
}


def store_for(model: object, hook_name: str, context: int, prompts: int, d_in: int):  # noqa: ANN201
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LoggingConfig,
        StandardTrainingSAEConfig,
    )
    from sae_lens.training.activations_store import ActivationsStore

    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=d_in, d_sae=4 * d_in),
        hook_name=hook_name, is_dataset_tokenized=False, streaming=False,
        context_size=context, store_batch_size_prompts=prompts, device="cpu",
        logger=LoggingConfig(log_to_wandb=False), output_path=tempfile.mkdtemp(),
    )  # fmt: skip
    dataset = Dataset.from_dict({"text": demo_corpus()})
    return ActivationsStore.from_config(model, cfg, override_dataset=dataset)  # type: ignore[arg-type]


def run(shape: str, rounds: int) -> list[str]:
    from sae_lens.load_model import HookedProxyLM

    hidden, heads, context, prompts = SHAPES[shape]
    layers = 4
    plain = build(hidden, layers, heads)
    adapter = HookedTransformerAdapter(copy.deepcopy(plain), demo_tokenizer())
    proxy = HookedProxyLM(copy.deepcopy(plain), demo_tokenizer())
    rows = []
    for layer in (1, layers - 1):
        ours = store_for(adapter, f"model.layers.{layer}.hook_point", context, prompts, hidden)
        theirs = store_for(proxy, f"model.layers.{layer}", context, prompts, hidden)
        tokens = ours.get_batch_tokens(prompts)
        assert torch.equal(ours.get_activations(tokens), theirs.get_activations(tokens))
        times: dict[str, list[float]] = {"adapter": [], "proxy": []}
        for index in range(rounds + 3):
            order = [("adapter", ours), ("proxy", theirs)][:: 1 if index % 2 else -1]
            for name, store in order:
                start = time.perf_counter()
                store.get_activations(tokens)
                if index >= 3:  # warm-up rounds are not counted
                    times[name].append(time.perf_counter() - start)
        n = tokens.numel()
        rate = {name: n / statistics.median(t) for name, t in times.items()}
        rows.append(
            f"| {shape} | layers.{layer} of {layers} | {rate['adapter']:,.0f} | "
            f"{rate['proxy']:,.0f} | {rate['adapter'] / rate['proxy']:.2f}x |"
        )
    return rows


def main() -> None:
    rounds = start(__doc__.split("\n")[0], default_rounds=60)
    print("| model | hook | adapter acts/s | HookedProxyLM acts/s | adapter / proxy |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        print("\n".join(run(shape, rounds)))


if __name__ == "__main__":
    main()
