"""Compressing the split activation for the network: none, fp16, bf16 or int8.

``None`` sends the tensor as it is (the result is bit-identical to a local forward).
``"fp16"`` and ``"bf16"`` halve the bytes by casting; ``"int8"`` quarters them with
symmetric absmax quantization per row (one float32 scale per vector along the last
dimension, e.g. per token of a ``[batch, seq, hidden]`` hidden state). The receiver
casts back to the original dtype. Compression is refused, never silently lossy beyond
its rounding, where it would change values more: an activation holding NaN/Inf (int8,
fp16), or with values beyond float16's range (fp16).
"""

from __future__ import annotations

from typing import Literal

import torch

Compression = Literal["fp16", "bf16", "int8"] | None
COMPRESSIONS: tuple[Compression, ...] = (None, "fp16", "bf16", "int8")
_CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_compression(compress: object) -> Compression:
    """``compress`` if it names a compression ("none" is None), else ValueError."""
    if compress == "none":
        return None
    if compress not in COMPRESSIONS:
        raise ValueError(
            f"compress={compress!r} is not one of None, 'fp16', 'bf16', 'int8' "
            "(None sends the activation exactly)"
        )
    return compress  # type: ignore[return-value]


def encode(tensor: torch.Tensor, compress: Compression) -> dict[str, torch.Tensor]:
    """The tensors that carry ``tensor`` compressed: ``{"": data}``, plus ``{"scale": ...}``
    for int8."""
    if compress is None:
        return {"": tensor}
    if not tensor.is_floating_point():
        raise ValueError(
            f"compress={compress!r} needs a floating-point activation, not {tensor.dtype}"
        )
    if compress in _CASTS:
        if compress == "fp16":
            finite = torch.isfinite(tensor)
            if not finite.all():
                raise ValueError(_non_finite(compress))
            biggest = tensor.abs().max().item() if tensor.numel() else 0.0
            if biggest > torch.finfo(torch.float16).max:
                raise ValueError(
                    f"the activation reaches {biggest:.4g}, beyond float16's range "
                    f"({torch.finfo(torch.float16).max:.0f}): use compress='bf16' or 'int8'"
                )
        return {"": tensor.to(_CASTS[compress])}
    if tensor.dim() == 0:
        raise ValueError(
            "compress='int8' quantizes along the last dimension; a 0-d tensor has none"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(_non_finite(compress))
    values = tensor.float()
    scale = values.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = torch.round(values / scale).clamp_(-127, 127).to(torch.int8)
    return {"": quantized, "scale": scale}


def decode(
    parts: dict[str, torch.Tensor], compress: Compression, dtype: torch.dtype
) -> torch.Tensor:
    """The activation again, as ``dtype``, from :func:`encode`'s tensors; ValueError if the
    parts do not fit together."""
    data = parts.get("")
    if data is None:
        raise ValueError("the compressed activation's data tensor is missing")
    if compress is None:
        return data
    if compress in _CASTS:
        if data.dtype != _CASTS[compress]:
            raise ValueError(f"compress={compress!r} data is {data.dtype}, not {_CASTS[compress]}")
        return data.to(dtype)
    scale = parts.get("scale")
    if data.dtype != torch.int8 or scale is None or not scale.is_floating_point():
        raise ValueError("compress='int8' needs int8 data and a floating-point scale tensor")
    if data.dim() == 0 or scale.shape != (*data.shape[:-1], 1):
        raise ValueError(
            f"the int8 scale has shape {list(scale.shape)}; data of shape {list(data.shape)} "
            f"needs {[*data.shape[:-1], 1]}"
        )
    return (data.float() * scale.float()).to(dtype)


def encoded_nbytes(parts: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in parts.values())


def _non_finite(compress: str) -> str:
    return (
        f"the activation holds NaN or Inf, which compress={compress!r} cannot carry faithfully; "
        "send it uncompressed (compress=None) or find where it comes from with find_nonfinite"
    )
