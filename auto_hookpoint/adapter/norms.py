"""What TransformerLens' norm names need to know about an HF norm module.

TransformerLens' ``LayerNorm`` / ``RMSNorm`` expose ``hook_scale`` (the root mean square,
after centering for LayerNorm, plus eps) and ``hook_normalized`` (the input divided by
it, *before* the weight and bias). An HF norm computes ``normalized * w + b`` in one
go; the adapter recomputes ``normalized`` from the norm's input and, when a hook
replaces it, gives the module ``new * w + b`` instead of its own output. ``w`` and ``b``
are found by trying the conventions HF norms use (``weight`` and ``bias``; Gemma's
``1 + weight``) on a probe input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Affine = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def is_rms_norm(module: nn.Module) -> bool:
    """RMSNorm-style (no centering), as opposed to LayerNorm."""
    name = type(module).__name__.lower()
    return "rms" in name or not (isinstance(module, nn.LayerNorm) or "layernorm" in name)


def norm_eps(module: nn.Module, default: float = 1e-5) -> float:
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return default


def normalize(x: torch.Tensor, eps: float, centered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized, scale) as TransformerLens computes them (in float32 below it)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    if centered:
        x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale, scale


def norm_affine(module: nn.Module, eps: float, centered: bool) -> Affine | None:
    """The norm's ``(w, b)`` as live tensors, or None if neither convention fits."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    bias = getattr(module, "bias", None)

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        return weight, bias if isinstance(bias, torch.Tensor) else torch.zeros_like(weight)

    def plus_one() -> tuple[torch.Tensor, torch.Tensor]:
        w, b = plain()
        return 1 + w.float(), b.float()

    try:
        with torch.no_grad():
            x = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0))
            x = x.to(device=weight.device, dtype=weight.dtype)
            out = module(x).float()
            normalized = normalize(x, eps, centered)[0].float()
            for affine in (plain, plus_one):
                w, b = affine()
                if torch.allclose(normalized * w.float() + b.float(), out, rtol=1e-3, atol=1e-3):
                    return affine
    except Exception:  # noqa: BLE001 - a norm that cannot be probed stays read-only
        return None
    return None
