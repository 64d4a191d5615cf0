"""The adapter's ``cfg``: a real TransformerLens config derived from an HF model.

The fields TransformerLens' analysis code reads (``ActivationCache``, ``patching``) are
set as TransformerLens' own loader sets them for the same HF model, so the adapter's
``cfg`` agrees with a ``HookedTransformer``'s built from the same weights (the parity
suite compares them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from auto_hookpoint.adapter.architectures import ArchitectureMapping
from auto_hookpoint.adapter.norms import is_rms_norm, norm_eps
from auto_hookpoint.adapter.tl_compat import TLConfig
from auto_hookpoint.core.devices import execution_device

# Families whose TransformerLens config does not prepend a BOS token by default.
_NO_DEFAULT_BOS = {"gpt_neox", "bloom", "qwen", "qwen2", "qwen3", "phi"}


def _first(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def hooked_transformer_config(
    model: nn.Module, mapping: ArchitectureMapping, **overrides: Any
) -> Any:
    """n_layers, d_model, n_heads, d_head, d_vocab, n_ctx, d_mlp, act_fn, normalization,
    positional embedding, the block layout, device and dtype, from the HF config and the
    modules."""
    hf = getattr(model, "config", None)
    model_type = getattr(hf, "model_type", None)
    embed = model.get_submodule(mapping.embed)
    weight: torch.Tensor = embed.weight  # type: ignore[assignment]
    d_vocab, d_model = weight.shape
    n_heads = _first(hf, "num_attention_heads", "n_head", "num_heads", default=1)
    n_kv = _first(hf, "num_key_value_heads")
    ln_final = model.get_submodule(mapping.ln_final) if mapping.ln_final else None
    parts = mapping.block_parts()
    values: dict[str, Any] = {
        "n_layers": len(model.get_submodule(mapping.blocks)._modules),
        "d_model": d_model,
        "d_vocab": d_vocab,
        "n_heads": n_heads,
        "d_head": _first(hf, "head_dim", default=d_model // n_heads),
        # TransformerLens uses grouped-query attention only where there are fewer K/V heads.
        "n_key_value_heads": n_kv if n_kv is not None and n_kv != n_heads else None,
        "n_ctx": _first(hf, "max_position_embeddings", "n_positions", "n_ctx", default=2048),
        "d_mlp": _first(hf, "intermediate_size", "n_inner", "ffn_dim", default=4 * d_model),
        "act_fn": _first(
            hf, "hidden_activation", "hidden_act", "activation_function", default="gelu"
        ),
        "normalization_type": None
        if ln_final is None
        else "RMS"
        if is_rms_norm(ln_final)
        else "LN",
        "eps": norm_eps(ln_final) if ln_final is not None else 1e-5,
        "final_rms": ln_final is not None and is_rms_norm(ln_final),
        "positional_embedding_type": "standard" if mapping.pos_embed else "rotary",
        "parallel_attn_mlp": parts.parallel,
        # Mixture-of-experts families (Mixtral) have gated experts.
        "gated_mlp": parts.mlp_pre_linear is not None
        or parts.mlp_gate_up is not None
        or hasattr(hf, "num_local_experts"),
        "num_experts": _first(hf, "num_local_experts"),
        "experts_per_token": _first(hf, "num_experts_per_tok")
        if hasattr(hf, "num_local_experts")
        else None,
        "use_normalization_before_and_after": parts.ln1_post is not None,
        "default_prepend_bos": model_type not in _NO_DEFAULT_BOS,
        "model_name": _first(hf, "_name_or_path", default="") or type(model).__name__,
        "original_architecture": (_first(hf, "architectures") or [type(model).__name__])[0],
        # Where the embedding computes: on a model dispatched by accelerate its
        # execution device, even while its weight is offloaded (meta).
        "device": str(execution_device(embed) or weight.device),
        "dtype": weight.dtype,
        "tokenizer_prepends_bos": None,
    }
    values.update(overrides)
    return TLConfig(**values)
