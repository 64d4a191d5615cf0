"""A real TransformerLens ``HookedTransformerConfig`` derived from an HF model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformer_lens import HookedTransformerConfig

from auto_hookpoint.adapter.architectures import ArchitectureMapping
from auto_hookpoint.core.devices import execution_device


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def hooked_transformer_config(
    model: nn.Module, mapping: ArchitectureMapping, **overrides: Any
) -> HookedTransformerConfig:
    """n_layers, d_model, n_heads, d_head, d_vocab, n_ctx, d_mlp, act_fn, normalization,
    positional embedding, device and dtype, read from the HF config and the modules."""
    hf = getattr(model, "config", None)
    embed = model.get_submodule(mapping.embed)
    weight: torch.Tensor = embed.weight  # type: ignore[assignment]
    d_vocab, d_model = weight.shape
    n_heads = _first(hf, "num_attention_heads", "n_head", default=1)
    ln_final = model.get_submodule(mapping.ln_final) if mapping.ln_final else None
    norm_name = type(ln_final).__name__.lower() if ln_final is not None else ""
    values: dict[str, Any] = {
        "n_layers": len(model.get_submodule(mapping.blocks)._modules),
        "d_model": d_model,
        "d_vocab": d_vocab,
        "n_heads": n_heads,
        "d_head": _first(hf, "head_dim", default=d_model // n_heads),
        "n_key_value_heads": _first(hf, "num_key_value_heads"),
        "n_ctx": _first(hf, "max_position_embeddings", "n_positions", "n_ctx", default=2048),
        "d_mlp": _first(hf, "intermediate_size", "n_inner", "ffn_dim", default=4 * d_model),
        "act_fn": _first(hf, "hidden_act", "activation_function", default="gelu"),
        "normalization_type": None if ln_final is None else "RMS" if "rms" in norm_name else "LN",
        "positional_embedding_type": "standard" if mapping.pos_embed else "rotary",
        "model_name": _first(hf, "_name_or_path", default="") or type(model).__name__,
        "original_architecture": (_first(hf, "architectures") or [type(model).__name__])[0],
        # Where the embedding computes: on a model dispatched by accelerate its
        # execution device, even while its weight is offloaded (meta).
        "device": str(execution_device(embed) or weight.device),
        "dtype": weight.dtype,
        "tokenizer_prepends_bos": None,
    }
    values.update(overrides)
    return HookedTransformerConfig(**values)
