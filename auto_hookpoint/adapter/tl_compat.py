"""The TransformerLens names the adapter uses, under TransformerLens 3.x and 4.x.

TransformerLens 4 removed ``HookedTransformer`` and ``HookedTransformerConfig`` (its
``TransformerBridge`` wraps HF models itself) and kept ``HookedRootModule``,
``HookPoint``, ``ActivationCache``, ``patching`` and ``transformer_lens.utilities``. The
adapter stands on the kept parts; its ``cfg`` is a ``HookedTransformerConfig`` under 3.x
and a ``TransformerBridgeConfig`` (which takes the same fields) under 4.x.
sae_lens 6 requires TransformerLens 3.x, so training SAEs needs 3.x.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, NamedTuple

import torch
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens import utilities as tl_utils

MAJOR = int(version("transformer_lens").split(".")[0])

try:  # TransformerLens 3.x
    from transformer_lens.config import HookedTransformerConfig as TLConfig
    from transformer_lens.HookedTransformer import Output
except ImportError:  # TransformerLens 4.x
    from transformer_lens.config import TransformerBridgeConfig as TLConfig  # type: ignore

    class Output(NamedTuple):  # type: ignore[no-redef]
        """HookedTransformer's (logits, loss) pair, for return_type="both"."""

        logits: torch.Tensor
        loss: torch.Tensor


USE_DEFAULT_VALUE: Any = tl_utils.USE_DEFAULT_VALUE

__all__ = [
    "MAJOR",
    "USE_DEFAULT_VALUE",
    "ActivationCache",
    "HookedRootModule",
    "Output",
    "TLConfig",
    "tl_utils",
]
