"""Models loaded as users load big ones: real accelerate dispatch with CPU and disk offload.

Each placement spreads a 4-layer llama or gpt2 over this machine's CPU and disk the way a
user's ``device_map`` would: ``dispatch_model`` with blocks on disk (weights read from
the offload folder at each call, ``meta`` in between), the same with buffers offloaded
too, ``cpu_offload`` (every weight kept off the model in CPU RAM and loaded per call),
and ``from_pretrained(folder, device_map=..., offload_folder=...)`` from a saved folder,
with an explicit map and with ``"auto"`` under a ``max_memory`` that forces some layers
to disk. ``plain`` is an un-dispatched copy with the same weights: the oracle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from accelerate import cpu_offload, dispatch_model
from torch import nn

VOCAB, LAYERS = 96, 4


@dataclass(frozen=True)
class Family:
    config: Any
    embed: str
    stack: str
    around: tuple[str, ...]  # modules outside the stack, for the device map
    param_site: str  # a parameter site inside block 1 (offloaded to disk)


FAMILIES = {
    "llama": Family(
        lambda: tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        ),  # fmt: skip
        "model.embed_tokens",
        "model.layers",
        ("model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"),
        "model.layers.1.input_layernorm.weight.hook_point",
    ),
    "gpt2": Family(
        lambda: tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=LAYERS,
            n_head=4,
            n_positions=64,
            bos_token_id=VOCAB - 1,
            eos_token_id=VOCAB - 1,
        ),  # fmt: skip
        "transformer.wte",
        "transformer.h",
        ("transformer.wte", "transformer.wpe", "transformer.drop", "transformer.ln_f", "lm_head"),
        "transformer.h.1.attn.c_attn.weight.hook_point",  # transformers' Conv1D: not torch's
    ),
}
PLACEMENTS = ("disk", "disk_buffers", "cpu_offload", "from_pretrained", "auto")


def build(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(FAMILIES[family].config()).eval()


def device_map(family: str, disk: tuple[int, ...] = (1, 2)) -> dict[str, str]:
    f = FAMILIES[family]
    blocks = {f"{f.stack}.{i}": "disk" if i in disk else "cpu" for i in range(LAYERS)}
    return {**{name: "cpu" for name in f.around}, **blocks}


def inputs(batch: int = 2, seq: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def dispatched(family: str, placement: str, folder: Path) -> tuple[nn.Module, nn.Module]:
    """(the model placed with accelerate, an un-dispatched copy with the same weights)."""
    model = build(family)
    plain = copy.deepcopy(model)
    if placement in ("disk", "disk_buffers"):
        buffers = placement == "disk_buffers"
        placed = dispatch_model(
            model, device_map(family), offload_dir=folder / "offload", offload_buffers=buffers
        )
    elif placement == "cpu_offload":
        placed = cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        model.save_pretrained(folder / "model")
        options: dict[str, Any] = {"offload_folder": folder / "offload", "dtype": torch.float32}
        if placement == "auto":
            options |= {"device_map": "auto", "max_memory": {"cpu": 60_000}}
        else:
            options["device_map"] = device_map(family)
        placed = tf.AutoModelForCausalLM.from_pretrained(folder / "model", **options).eval()
        assert "disk" in placed.hf_device_map.values(), placed.hf_device_map
    return placed, plain


def accelerate_state(model: nn.Module) -> dict[str, tuple[Any, ...]]:
    """Everything accelerate put on each module, by identity, and every torch hook."""
    return {
        path: (
            id(module.__dict__.get("_hf_hook")),
            id(module.__dict__.get("_old_forward")),
            id(module.__dict__.get("forward")),
            tuple(module._forward_hooks),
            tuple(module._forward_pre_hooks),
            tuple(module._backward_hooks),
            tuple((name, p.device.type) for name, p in module._parameters.items() if p is not None),
        )
        for path, module in model.named_modules()
    }
