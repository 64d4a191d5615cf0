"""What auto_hook costs on a model dispatched by accelerate with CPU or disk offload.

    .venv/bin/python benchmarks/offload.py [--rounds N]

A LlamaForCausalLM (as in overhead.py) placed two ways: blocks 1-2 on disk
(``dispatch_model``, weights read from the offload folder at each call) and every weight
offloaded to CPU RAM (``cpu_offload``, loaded per call). For each, the dispatched model
un-hooked is the baseline, against ``auto_hook`` on an identically dispatched copy:
idle, ``run_with_cache`` of one layer, and a hook on a parameter of an offloaded block
(lent inside accelerate's forward); a second un-hooked copy shows the noise floor. One
thread; calls interleaved round by round; each figure is the median over rounds of
(variant time / un-hooked time in that round).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import torch
from accelerate import cpu_offload, dispatch_model

sys.path.insert(0, str(Path(__file__).parent))
from overhead import SHAPES, build  # noqa: E402
from timing import median_ratios, start  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402


def place(model: torch.nn.Module, placement: str, folder: Path) -> torch.nn.Module:
    if placement == "cpu offload":
        return cpu_offload(model, execution_device=torch.device("cpu"))
    layers = len(model.model.layers)
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
        **{f"model.layers.{i}": "disk" if i in (1, 2) else "cpu" for i in range(layers)},
    }
    return dispatch_model(model, device_map, offload_dir=folder)


def run(shape: str, placement: str, rounds: int) -> tuple[float, dict[str, float]]:
    """(the un-hooked dispatched model's ms per call, {variant: median ratio to it})."""
    hidden, layers, heads, batch, seq, calls = SHAPES[shape]
    original = build(hidden, layers, heads)
    with tempfile.TemporaryDirectory() as folder:
        plain, again, ours = (
            place(copy.deepcopy(original), placement, Path(folder) / name)
            for name in ("plain", "again", "ours")
        )
        ours = auto_hook(ours)
        ids = torch.randint(0, 1024, (batch, seq), generator=torch.Generator().manual_seed(0))
        site = f"model.layers.{layers // 2}.hook_point"
        param_site = "model.layers.1.input_layernorm.weight.hook_point"  # offloaded
        scale = [(param_site, lambda w, hook: w * 1.0)]
        variants = {
            "plain": lambda: plain(ids),
            # A second un-hooked copy: how far apart two identical models time here.
            "again": lambda: again(ids),
            "idle": lambda: ours(ids),
            "cache": lambda: ours.run_with_cache(ids, names_filter=site),
            "param": lambda: ours.run_with_hooks(ids, fwd_hooks=scale),
        }
        with torch.no_grad():
            assert torch.equal(plain(ids).logits, ours(ids).logits)
            ratios, base = median_ratios(variants, "plain", rounds, calls)
    return base, ratios


def main() -> None:
    rounds = start(__doc__.split("\n")[0], default_rounds=60)
    print(
        "| model | placement | dispatched un-hooked | another un-hooked copy | auto_hook idle "
        "| cache one layer | hook on an offloaded parameter |"
    )
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        for placement in ("disk offload", "cpu offload"):
            base, r = run(shape, placement, rounds)
            print(
                f"| {shape} | {placement} | {base * 1e3:.2f} ms | {r['again']:.3f}x "
                f"| {r['idle']:.3f}x | {r['cache']:.3f}x | {r['param']:.3f}x |"
            )


if __name__ == "__main__":
    main()
