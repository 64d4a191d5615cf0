"""The original Auto_HookPoint adapter API, kept working for its users.

``HookedTransformerAdapter(adapter_cfg=HookedTransformerAdapterCfg(mappings={...}),
hooked_transformer_cfg=..., model=..., tokenizer=...)`` (or ``hf_model_name=``) is the
manual-mapping route: ``mappings`` names the parts by module path, with the keys
``embed``, ``blocks``, ``ln_final``, ``unembed`` and optionally ``pos_embed``.

The old adapter re-ran the block loop itself and needed ``inter_block_fn``,
``create_kwargs`` and ``preprocess`` to do it; this adapter runs the HF model's own
forward, so those are accepted and not needed (a warning says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auto_hookpoint.adapter.architectures import ArchitectureError, ArchitectureMapping
from auto_hookpoint.adapter.tl_compat import TLConfig

_LEGACY_KEYS = {"embed", "blocks", "ln_final", "unembed", "pos_embed"}


@dataclass
class HookedTransformerAdapterCfg:
    mappings: dict[str, str | None]
    inter_block_fn: Callable[[Any], Any] | None = None
    create_kwargs: Callable[[Any, Any], dict[str, Any]] | None = None
    preprocess: Callable[[Any], Any] | None = None

    def to_mapping(self) -> ArchitectureMapping:
        unknown = set(self.mappings) - _LEGACY_KEYS
        if unknown:
            raise ArchitectureError(
                f"unknown mapping keys {sorted(unknown)}; use {sorted(_LEGACY_KEYS)}"
            )
        missing = [k for k in ("embed", "blocks", "unembed") if not self.mappings.get(k)]
        if missing:
            raise ArchitectureError(f"mappings must name {missing} (module paths of the HF model)")
        # Paths are relative to the HF model, as they were in the original adapter.
        return ArchitectureMapping(
            embed=str(self.mappings["embed"]),
            blocks=str(self.mappings["blocks"]),
            ln_final=self.mappings.get("ln_final"),
            unembed=str(self.mappings["unembed"]),
            pos_embed=self.mappings.get("pos_embed"),
        )


class HookedTransformerConfig_From_AutoConfig(TLConfig):  # type: ignore[misc, valid-type]  # noqa: N801
    """A TransformerLens config built from a HuggingFace config (the original helper):
    a HookedTransformerConfig under TransformerLens 3, a TransformerBridgeConfig under 4."""

    @classmethod
    def from_auto_config(cls, auto_config: Any, **kwargs: Any) -> Any:
        needed = ("num_attention_heads", "num_hidden_layers", "hidden_size", "vocab_size")
        missing = [name for name in needed if not hasattr(auto_config, name)]
        if missing:
            raise TypeError(
                "from_auto_config takes a transformers config (model.config, or "
                f"AutoConfig.from_pretrained(folder)); this {type(auto_config).__name__} "
                f"has no {', '.join(missing)}"
            )
        n_heads = auto_config.num_attention_heads
        values = {
            "n_layers": auto_config.num_hidden_layers,
            "d_model": auto_config.hidden_size,
            "n_ctx": auto_config.max_position_embeddings,
            "d_vocab": auto_config.vocab_size,
            "n_heads": n_heads,
            "d_head": getattr(auto_config, "head_dim", None) or auto_config.hidden_size // n_heads,
            "act_fn": getattr(auto_config, "hidden_act", None) or "gelu",
            "d_mlp": getattr(auto_config, "intermediate_size", None) or 4 * auto_config.hidden_size,
        }
        values.update(kwargs)
        return TLConfig(**values)
