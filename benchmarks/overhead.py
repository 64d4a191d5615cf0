"""What auto_hook costs: idle forward and run_with_cache of one layer, against the
un-hooked model and sae_lens' HookedProxyLM on the same HF Llama, in one run.

    .venv/bin/python benchmarks/overhead.py [--rounds N]

One thread; each variant is a separate copy with the same weights; calls are
interleaved round by round and each figure is the median over rounds of
(variant time / un-hooked time in the same round).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_ratios, start  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402

SHAPES = {
    # name: (hidden, layers, heads, batch, seq, calls per timed sample)
    "small": (256, 4, 4, 4, 128, 1),
    "tiny": (16, 2, 2, 1, 8, 20),
}


def build(hidden: int, layers: int, heads: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def proxy_for(model: LlamaForCausalLM):  # noqa: ANN201
    try:
        from sae_lens.load_model import HookedProxyLM
    except ImportError:
        return None
    from auto_hookpoint.demo import demo_tokenizer

    return HookedProxyLM(model, demo_tokenizer())


def run(shape: str, rounds: int) -> list[tuple[str, str, float, float | None]]:
    hidden, layers, heads, batch, seq, calls = SHAPES[shape]
    plain = build(hidden, layers, heads)
    ours = auto_hook(copy.deepcopy(plain))
    proxy = proxy_for(copy.deepcopy(plain))
    ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
    middle = layers // 2
    our_site, proxy_site = f"model.layers.{middle}.hook_point", f"model.layers.{middle}"

    idle = {"plain": lambda: plain(ids), "auto_hook": lambda: ours(ids)}
    cache = {
        "plain": lambda: plain(ids),
        "auto_hook": lambda: ours.run_with_cache(ids, names_filter=our_site),
    }
    if proxy is not None:
        idle["HookedProxyLM"] = lambda: proxy(ids)
        cache["HookedProxyLM"] = lambda: proxy.run_with_cache(ids, names_filter=[proxy_site])

    rows = []
    with torch.no_grad():
        for label, variants in (("idle forward", idle), (f"cache layer {middle}", cache)):
            ratios, base = median_ratios(variants, "plain", rounds, calls)
            rows.append((shape, label, base, ratios["auto_hook"], ratios.get("HookedProxyLM")))
    return rows


def main() -> None:
    rounds = start(__doc__.split("\n")[0], default_rounds=60)
    header = "| model | what | un-hooked ms | auto_hook | HookedProxyLM | auto_hook / proxy |"
    print(header)
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        for model, label, base, ours, proxy in run(shape, rounds):
            vs = f"{ours / proxy:.3f}" if proxy else "-"
            proxy_cell = f"{proxy:.3f}x" if proxy else "not installed"
            print(f"| {model} | {label} | {base * 1e3:.3f} | {ours:.3f}x | {proxy_cell} | {vs} |")


if __name__ == "__main__":
    main()
