"""HookedTransformer's weight names, as views of the HF model's parameters.

``W_E``, ``W_pos``, ``W_U``, ``b_U``, the stacked ``W_Q`` ... ``b_out``, and ``blocks[i]``
with ``.attn.W_Q/W_K/W_V/W_O/b_*`` and ``.mlp.W_in/W_gate/W_out/b_in/b_out``, in
TransformerLens' shapes and with the values TransformerLens' weight converters give for
the same model (the parity suite compares them). They are computed on each access from
the live parameters (views where the layout allows; on a model offloaded by accelerate,
from where accelerate keeps them), so they follow training and ``.to()``. A part the
architecture lacks (no bias) is zeros, as in TransformerLens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from auto_hookpoint.adapter.architectures import ArchitectureMapping, BlockParts
from auto_hookpoint.core.devices import resting_tensor


def _in_out(module: nn.Module) -> torch.Tensor:
    """The weight as ``[in, out]``: a Linear stores ``[out, in]``, GPT-2's Conv1D ``[in, out]``
    (where accelerate keeps it, if offloaded)."""
    weight = resting_tensor(module, "weight")
    return weight if type(module).__name__ == "Conv1D" else weight.T


def _bias(module: nn.Module, size: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(getattr(module, "bias", None), torch.Tensor):
        return like.new_zeros(size)
    return resting_tensor(module, "bias")


class AttentionWeights:
    """``blocks[i].attn``: W_Q ``[head d_model d_head]``, W_K/W_V (repeated to every query
    head under grouped-query attention; ``_W_K``/``_W_V`` are the K/V heads' own),
    W_O ``[head d_head d_model]``, and their biases."""

    def __init__(self, block: nn.Module, parts: BlockParts, cfg: Any):
        self._block, self._parts, self._cfg = block, parts, cfg

    def _part(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W ``[head d_model d_head]``, b ``[head d_head]``) of q, k or v."""
        cfg, parts = self._cfg, self._parts
        n_kv = cfg.n_key_value_heads or cfg.n_heads
        heads = cfg.n_heads if which == "q" else n_kv
        d_head = cfg.d_head
        path = getattr(parts, which)
        if path is not None:
            module = self._block.get_submodule(path)
            weight = _in_out(module)
            bias = _bias(module, heads * d_head, weight)
        elif parts.qkv is not None:
            module = self._block.get_submodule(parts.qkv)
            fused, index = _in_out(module), "qkv".index(which)
            fused_bias = _bias(module, fused.shape[1], fused)
            if parts.qkv_layout == "heads":  # GPT-NeoX: per head [q k v]
                cols = slice(index * d_head, (index + 1) * d_head)
                weight = fused.unflatten(1, (heads, 3 * d_head))[:, :, cols].flatten(1)
                bias = fused_bias.unflatten(0, (heads, 3 * d_head))[:, cols].flatten()
            else:  # [q | k | v]
                sizes = [cfg.n_heads * d_head, n_kv * d_head, n_kv * d_head]
                start = sum(sizes[:index])
                weight = fused[:, start : start + sizes[index]]
                bias = fused_bias[start : start + sizes[index]]
        else:
            raise AttributeError(f"this architecture's attention has no {which} projection")
        return weight.unflatten(1, (heads, d_head)).permute(1, 0, 2), bias.unflatten(
            0, (heads, d_head)
        )

    def _repeat(self, tensor: torch.Tensor) -> torch.Tensor:
        repeats = self._cfg.n_heads // (self._cfg.n_key_value_heads or self._cfg.n_heads)
        return tensor.repeat_interleave(repeats, dim=0) if repeats > 1 else tensor

    @property
    def W_Q(self) -> torch.Tensor:  # noqa: N802
        return self._part("q")[0]

    @property
    def b_Q(self) -> torch.Tensor:  # noqa: N802
        return self._part("q")[1]

    @property
    def _W_K(self) -> torch.Tensor:  # noqa: N802
        return self._part("k")[0]

    @property
    def _b_K(self) -> torch.Tensor:  # noqa: N802
        return self._part("k")[1]

    @property
    def _W_V(self) -> torch.Tensor:  # noqa: N802
        return self._part("v")[0]

    @property
    def _b_V(self) -> torch.Tensor:  # noqa: N802
        return self._part("v")[1]

    @property
    def W_K(self) -> torch.Tensor:  # noqa: N802
        return self._repeat(self._W_K)

    @property
    def b_K(self) -> torch.Tensor:  # noqa: N802
        return self._repeat(self._b_K)

    @property
    def W_V(self) -> torch.Tensor:  # noqa: N802
        return self._repeat(self._W_V)

    @property
    def b_V(self) -> torch.Tensor:  # noqa: N802
        return self._repeat(self._b_V)

    def _o(self) -> nn.Module:
        if self._parts.o is None:
            raise AttributeError("this architecture's attention output projection is not known")
        return self._block.get_submodule(self._parts.o)

    @property
    def W_O(self) -> torch.Tensor:  # noqa: N802
        return _in_out(self._o()).unflatten(0, (self._cfg.n_heads, self._cfg.d_head))

    @property
    def b_O(self) -> torch.Tensor:  # noqa: N802
        weight = _in_out(self._o())
        return _bias(self._o(), weight.shape[1], weight)


class MLPWeights:
    """``blocks[i].mlp``: W_in ``[d_model d_mlp]`` (the up projection of a gated MLP),
    W_gate (gated MLPs), W_out ``[d_mlp d_model]``, b_in, b_out."""

    def __init__(self, block: nn.Module, parts: BlockParts):
        self._block, self._parts = block, parts

    def _module(self, path: str | None, what: str) -> nn.Module:
        if path is None:
            raise AttributeError(f"this architecture's MLP has no {what} the adapter knows of")
        return self._block.get_submodule(path)

    def _input(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W ``[d_model d_mlp]``, b) of the MLP's ``"in"`` or ``"gate"`` projection."""
        parts = self._parts
        if parts.mlp_gate_up is not None:  # Phi-3: [gate | up]
            fused = self._module(parts.mlp_gate_up, "input projection")
            weight = _in_out(fused)
            bias = _bias(fused, weight.shape[1], weight)
            half = 0 if which == "gate" else 1
            return weight.chunk(2, dim=1)[half], bias.chunk(2)[half]
        gated = parts.mlp_pre_linear is not None
        if which == "gate" and not gated:
            raise AttributeError("this MLP is not gated: it has no W_gate")
        path = parts.mlp_pre if which == "gate" or not gated else parts.mlp_pre_linear
        module = self._module(path, "input projection")
        weight = _in_out(module)
        return weight, _bias(module, weight.shape[1], weight)

    @property
    def W_in(self) -> torch.Tensor:  # noqa: N802
        return self._input("in")[0]

    @property
    def b_in(self) -> torch.Tensor:  # noqa: N802
        return self._input("in")[1]

    @property
    def W_gate(self) -> torch.Tensor:  # noqa: N802
        return self._input("gate")[0]

    @property
    def W_out(self) -> torch.Tensor:  # noqa: N802
        return _in_out(self._module(self._parts.mlp_post, "output projection"))

    @property
    def b_out(self) -> torch.Tensor:  # noqa: N802
        weight = self.W_out
        return _bias(
            self._module(self._parts.mlp_post, "output projection"), weight.shape[1], weight
        )


class BlockWeights:
    """``blocks[i]``: ``.attn`` and ``.mlp`` weights in TransformerLens' names."""

    def __init__(self, block: nn.Module, parts: BlockParts, cfg: Any):
        self.attn = AttentionWeights(block, parts, cfg)
        self.mlp = MLPWeights(block, parts)


class WeightsMixin:
    """HookedTransformer's weight properties, for a class with ``model``, ``mapping``, ``cfg``."""

    model: Any
    mapping: ArchitectureMapping
    cfg: Any

    @property
    def blocks(self) -> list[BlockWeights]:
        parts = self.mapping.block_parts()
        stack = self.model.get_submodule(self.mapping.blocks)
        return [BlockWeights(block, parts, self.cfg) for block in stack]

    @property
    def ln_final(self) -> nn.Module:
        """The final norm (the HF module): ``ActivationCache.accumulated_resid`` applies it,
        weights and all, for the logit lens, as TransformerLens applies its ``ln_final``."""
        if not self.mapping.ln_final:
            raise AttributeError(f"{self.cfg.original_architecture} has no final norm")
        return self.model.get_submodule(self.mapping.ln_final)  # type: ignore[no-any-return]

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802
        """The token embedding ``[d_vocab d_model]``, scaled as the model scales it (Gemma)."""
        embed = self.model.get_submodule(self.mapping.embed)
        scale = getattr(embed, "embed_scale", None)
        weight = resting_tensor(embed, "weight")
        return weight if scale is None else weight * scale.to(weight)

    @property
    def W_pos(self) -> torch.Tensor:  # noqa: N802
        """The learned position embedding ``[n_ctx d_model]`` (without OPT's offset rows)."""
        if not self.mapping.pos_embed:
            raise AttributeError(
                f"{self.cfg.original_architecture} has no learned position embedding"
            )
        module = self.model.get_submodule(self.mapping.pos_embed)
        return resting_tensor(module, "weight")[getattr(module, "offset", 0) :]

    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802
        """The unembedding ``[d_model d_vocab]``."""
        return resting_tensor(self.model.get_submodule(self.mapping.unembed), "weight").T

    @property
    def b_U(self) -> torch.Tensor:  # noqa: N802
        head = self.model.get_submodule(self.mapping.unembed)
        weight = resting_tensor(head, "weight")
        return _bias(head, weight.shape[0], weight)

    def _stacked(self, part: str, name: str) -> torch.Tensor:
        return torch.stack([getattr(getattr(block, part), name) for block in self.blocks])

    W_Q = property(lambda self: self._stacked("attn", "W_Q"))
    W_K = property(lambda self: self._stacked("attn", "W_K"))
    W_V = property(lambda self: self._stacked("attn", "W_V"))
    W_O = property(lambda self: self._stacked("attn", "W_O"))
    b_Q = property(lambda self: self._stacked("attn", "b_Q"))
    b_K = property(lambda self: self._stacked("attn", "b_K"))
    b_V = property(lambda self: self._stacked("attn", "b_V"))
    b_O = property(lambda self: self._stacked("attn", "b_O"))
    W_in = property(lambda self: self._stacked("mlp", "W_in"))
    W_gate = property(lambda self: self._stacked("mlp", "W_gate"))
    W_out = property(lambda self: self._stacked("mlp", "W_out"))
    b_in = property(lambda self: self._stacked("mlp", "b_in"))
    b_out = property(lambda self: self._stacked("mlp", "b_out"))

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor:
        """The sum of the attention (and MLP) output biases before ``layer``, as
        HookedTransformer.accumulated_bias (used by get_full_resid_decomposition)."""
        blocks = self.blocks
        total = torch.zeros(self.cfg.d_model, device=self.W_U.device, dtype=self.W_U.dtype)
        for block in blocks[:layer]:
            total = total + block.attn.b_O
            if include_mlp_biases:
                total = total + block.mlp.b_out
        if mlp_input:
            total = total + blocks[layer].attn.b_O
        return total
