"""The original Auto_HookPoint adapter API, kept working for its users.

``HookedTransformerAdapter(adapter_cfg=HookedTransformerAdapterCfg(mappings={...}),
hooked_transformer_cfg=..., model=..., tokenizer=...)`` (or ``hf_model_name=``) is the
manual-mapping route: ``mappings`` names the parts by module path, with the keys
``embed``, ``blocks``, ``ln_final``, ``unembed`` and optionally ``pos_embed``.

The old adapter re-ran the block loop itself and needed ``inter_block_fn``,
``create_kwargs`` and ``preprocess`` to do it; this adapter runs the HF model's own
forward, so those are accepted and not needed (a warning says so).

What the old form could get wrong is put right here, never taken on trust:
- ``mappings`` that name the same parts as the architecture table (as the original
  examples do for llama, mistral, mixtral, gpt2 ...) get the table's mapping, with
  every TransformerLens name the parity suite proves for that family;
- a ``pos_embed`` that is not a learned position embedding (the original tests named
  Llama's ``rotary_emb``) is left out: TransformerLens has no ``hook_pos_embed`` there;
- ``hooked_transformer_cfg`` keeps the user's settings (``device``, ``n_ctx``, ...) but
  not what contradicts the model: the original example's ``attn_only=True,
  normalization_type=None`` for a model with MLPs and norms would make
  ``ActivationCache.decompose_resid`` drop the MLPs and ``apply_ln_to_stack`` skip the
  norm, silently. The model's values are used instead, with a warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from auto_hookpoint.adapter.architectures import (
    ARCHITECTURES,
    ArchitectureError,
    ArchitectureMapping,
    embeddings_from_hf,
)
from auto_hookpoint.adapter.config import _first
from auto_hookpoint.adapter.tl_compat import TLConfig

_LEGACY_KEYS = {"embed", "blocks", "ln_final", "unembed", "pos_embed"}


@dataclass
class HookedTransformerAdapterCfg:
    """The original Auto_HookPoint mapping: module paths of the HF model by part
    (``embed``, ``blocks``, ``ln_final``, ``unembed``, optionally ``pos_embed``).

    ``inter_block_fn``, ``create_kwargs`` and ``preprocess`` drove the original
    adapter's own block loop; this adapter runs the HF model's forward, so they are
    accepted, ignored, and a warning says so.
    """

    mappings: dict[str, str | None]
    inter_block_fn: Callable[[Any], Any] | None = None
    create_kwargs: Callable[[Any, Any], dict[str, Any]] | None = None
    preprocess: Callable[[Any], Any] | None = None

    def to_mapping(self, model: nn.Module | None = None) -> ArchitectureMapping:
        """The :class:`ArchitectureMapping` these mappings mean; given the ``model``, the
        architecture table's own where the paths agree with it, and without a
        ``pos_embed`` that is not an ``nn.Embedding``."""
        unknown = set(self.mappings) - _LEGACY_KEYS
        if unknown:
            raise ArchitectureError(
                f"unknown mapping keys {sorted(unknown)}; use {sorted(_LEGACY_KEYS)}"
            )
        missing = [k for k in ("embed", "blocks", "unembed") if not self.mappings.get(k)]
        if missing:
            raise ArchitectureError(f"mappings must name {missing} (module paths of the HF model)")
        # Paths are relative to the HF model, as they were in the original adapter.
        mapping = ArchitectureMapping(
            embed=str(self.mappings["embed"]),
            blocks=str(self.mappings["blocks"]),
            ln_final=self.mappings.get("ln_final"),
            unembed=str(self.mappings["unembed"]),
            pos_embed=self.mappings.get("pos_embed"),
        )
        if model is None:
            return mapping
        if mapping.pos_embed is not None:
            module = _submodule(model, mapping.pos_embed)
            if module is not None and not isinstance(module, nn.Embedding):
                warnings.warn(
                    f"mappings['pos_embed'] = {mapping.pos_embed!r} is a "
                    f"{type(module).__name__}, not a learned position embedding "
                    "(nn.Embedding): TransformerLens has no hook_pos_embed for rotary or "
                    "other computed positions, so it is left out. Drop it from mappings.",
                    stacklevel=3,
                )
                mapping = replace(mapping, pos_embed=None)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        table = ARCHITECTURES.get(model_type) if model_type else None
        if table is not None:
            table = embeddings_from_hf(model, table)
            if _parts(table) == _parts(mapping):
                return table  # the same parts: every name the family is proven to have
        return mapping


def _parts(mapping: ArchitectureMapping) -> tuple[str | None, ...]:
    return mapping.embed, mapping.blocks, mapping.ln_final, mapping.unembed, mapping.pos_embed


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None  # check_mapping names the missing path


def legacy_arguments(
    model: Any, tokenizer: Any, adapter_cfg: Any, hooked_transformer_cfg: Any
) -> tuple[Any, Any, Any, Any]:
    """The original signature took ``adapter_cfg`` and ``hooked_transformer_cfg`` first:
    ``HookedTransformerAdapter(adapter_cfg, hooked_transformer_cfg, hf_model_name=...)``.
    Returns (model, tokenizer, adapter_cfg, hooked_transformer_cfg) as this one names them."""
    if not isinstance(model, HookedTransformerAdapterCfg):
        return model, tokenizer, adapter_cfg, hooked_transformer_cfg
    if adapter_cfg is not None or hooked_transformer_cfg is not None:
        raise TypeError(
            "adapter_cfg given twice: HookedTransformerAdapter(adapter_cfg, "
            "hooked_transformer_cfg, hf_model_name=...) takes them by position or by keyword"
        )
    return None, None, model, tokenizer


# What the HF model decides, whatever a hooked_transformer_cfg says: TransformerLens'
# analysis code reads these (ActivationCache.decompose_resid reads attn_only,
# apply_ln_to_stack normalization_type) and the adapter's names are built from them.
# A difference in these is warned about where the cfg states a value of its own; where
# it holds TransformerLens' default (from_auto_config leaves normalization_type at "LN"),
# and for the details (eps, grouped-query heads ...), the model's value is taken silently.
_ARCHITECTURE = (
    "n_layers", "d_model", "d_vocab", "n_heads", "d_head", "d_mlp", "act_fn", "attn_only",
    "normalization_type", "positional_embedding_type",
)  # fmt: skip
_DETAILS = (
    "n_key_value_heads", "eps", "final_rms", "parallel_attn_mlp", "gated_mlp", "num_experts",
    "experts_per_token", "use_normalization_before_and_after", "original_architecture",
    "dtype", "d_vocab_out",
)  # fmt: skip


def adopt_config(given: Any, derived: Any) -> Any:
    """``given`` (the user's hooked_transformer_cfg; None: ``derived``) with the model's
    architecture, as ``derived`` (read from the model) has it; its other settings stay."""
    if given is None:
        return derived
    defaults = _field_defaults(type(given))
    changed = {}
    for name in (*_ARCHITECTURE, *_DETAILS):
        if not hasattr(given, name) or not hasattr(derived, name):
            continue
        have, want = getattr(given, name), getattr(derived, name)
        if have != want:
            setattr(given, name, want)
            stated = name not in defaults or have != defaults[name]
            if name in _ARCHITECTURE and stated:
                changed[name] = (have, want)
    if changed:
        said = ", ".join(f"{name}={have!r}" for name, (have, _) in changed.items())
        used = ", ".join(f"{name}={want!r}" for name, (_, want) in changed.items())
        warnings.warn(
            f"hooked_transformer_cfg says {said}, but the model has {used}; the adapter's "
            "cfg uses the model's values (TransformerLens' analysis code reads them, e.g. "
            "ActivationCache.decompose_resid and apply_ln_to_stack). Your other settings "
            "(device, n_ctx, ...) are kept.",
            stacklevel=3,
        )
    return given


def _field_defaults(config_class: type) -> dict[str, Any]:
    """The plain defaults of a dataclass config's fields (none for other classes)."""
    if not dataclasses.is_dataclass(config_class):
        return {}
    return {
        field.name: field.default
        for field in dataclasses.fields(config_class)
        if field.default is not dataclasses.MISSING
    }


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
            "n_ctx": _first(auto_config, "max_position_embeddings", "n_positions", default=2048),
            "d_vocab": auto_config.vocab_size,
            "n_heads": n_heads,
            "d_head": _first(auto_config, "head_dim", default=auto_config.hidden_size // n_heads),
            "act_fn": _first(
                auto_config,
                "hidden_activation",
                "hidden_act",
                "activation_function",
                default="gelu",
            ),
            "d_mlp": _first(
                auto_config,
                "intermediate_size",
                "n_inner",
                "ffn_dim",
                default=4 * auto_config.hidden_size,
            ),  # fmt: skip
        }
        values.update(kwargs)
        return TLConfig(**values)
