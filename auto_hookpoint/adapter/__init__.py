"""HookedTransformerAdapter: HF language models for sae_lens and TransformerLens code."""

from auto_hookpoint.adapter.adapter import HookedTransformerAdapter
from auto_hookpoint.adapter.architectures import (
    ARCHITECTURES,
    ArchitectureError,
    ArchitectureMapping,
    BlockParts,
)
from auto_hookpoint.adapter.legacy import (
    HookedTransformerAdapterCfg,
    HookedTransformerConfig_From_AutoConfig,
)

__all__ = [
    "ARCHITECTURES",
    "ArchitectureError",
    "ArchitectureMapping",
    "BlockParts",
    "HookedTransformerAdapter",
    "HookedTransformerAdapterCfg",
    "HookedTransformerConfig_From_AutoConfig",
]
