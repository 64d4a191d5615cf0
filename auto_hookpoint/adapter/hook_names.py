"""TransformerLens' hook names on an HF model: sites of the hook core, next to its own.

Each name is an alias site on the HF module whose output (or input) is what
TransformerLens means by the name, shown in TransformerLens' shape where the model's
differs (:mod:`auto_hookpoint.adapter.views`); the attention internals are probes of
the hooked attention function (:mod:`auto_hookpoint.adapter.attention`). Where an
architecture has no exact counterpart the name is left out and the reason recorded
(:attr:`TransformerLensNames.unavailable`); ``docs/adapter.md`` lists them per family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auto_hookpoint.adapter import attention, views
from auto_hookpoint.adapter.architectures import ArchitectureMapping, BlockParts
from auto_hookpoint.adapter.norms import is_rms_norm, norm_affine, norm_eps
from auto_hookpoint.core.hook_core import HookCore
from auto_hookpoint.core.sites import SiteKind, SiteView

INPUT, OUTPUT = SiteKind.INPUT, SiteKind.OUTPUT


@dataclass
class TransformerLensNames:
    """The names added (in firing order) and, for names TransformerLens has but this
    architecture cannot offer exactly, why (keyed by the name in layer 0, ``blocks.0.…``)."""

    added: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


class _Builder:
    def __init__(self, core: HookCore, model: nn.Module, mapping: ArchitectureMapping, cfg: Any):
        self.core, self.model, self.mapping, self.cfg = core, model, mapping, cfg
        self.result = TransformerLensNames()

    def add(
        self,
        name: str,
        path: str,
        kind: SiteKind,
        view: SiteView | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if name not in self.core.sites:  # an adapter made again on the same model
            self.core.add_site(name, path, kind, view=view, module=module)
        self.result.added.append(name)

    def missing(self, layer: int, name: str, reason: str) -> None:
        if layer == 0:
            self.result.unavailable[f"blocks.0.{name}"] = reason

    def norm(self, prefix: str, path: str, *, flat: bool = False, shared: bool = False) -> None:
        """``<prefix>.hook_scale`` (read-only, from the input) and ``.hook_normalized``.

        ``shared``: the norm's output feeds more than TransformerLens' norm of that name
        does (Phi's one norm feeds attention and MLP, TransformerLens' ln1 only
        attention), so an edit could not mean the same: hook_normalized is read-only.
        """
        module = self.model.get_submodule(path)
        eps, centered = norm_eps(module), not is_rms_norm(module)
        affine = None if shared else norm_affine(module, eps, centered)
        scale = views.norm_scale(eps, centered=centered, flat=flat)
        self.add(f"{prefix}.hook_scale", path, INPUT, scale)
        normalized = views.norm_normalized(eps, centered=centered, affine=affine, flat=flat)
        self.add(f"{prefix}.hook_normalized", path, OUTPUT, normalized)


def add_transformer_lens_names(
    core: HookCore, model: nn.Module, mapping: ArchitectureMapping, cfg: Any
) -> TransformerLensNames:
    """Add TransformerLens' names for ``model`` to ``core``; see the module docstring."""
    build = _Builder(core, model, mapping, cfg)
    build.add("hook_embed", mapping.embed, OUTPUT)
    if mapping.pos_embed:
        build.add("hook_pos_embed", mapping.pos_embed, OUTPUT)
    probes = _attention_probes(build)
    for layer in range(cfg.n_layers):
        _add_block(build, layer, probes[layer] if probes else None)
    if mapping.ln_final:
        build.norm("ln_final", mapping.ln_final)
    build.add("unembed.hook_in", mapping.unembed, INPUT)
    build.add("unembed.hook_out", mapping.unembed, OUTPUT)
    return build.result


def _attention_probes(build: _Builder) -> list[attention.AttentionProbes] | None:
    mapping, model = build.mapping, build.model
    parts = mapping.block_parts()
    if parts.pattern is not None:
        return None  # the architecture's own pattern module (GPT-Neo); scores are inline
    reason = attention.unavailable_reason(model)
    if reason is None and mapping.attn is None:
        reason = "the attention module of a block is not known (ArchitectureMapping.attn)"
    if reason is not None:
        names = ["attn.hook_attn_scores", "attn.hook_pattern"]
        if build.cfg.positional_embedding_type == "rotary":
            names += ["attn.hook_rot_q", "attn.hook_rot_k"]
        for name in names:
            build.missing(0, name, reason)
        return None
    modules = [
        model.get_submodule(f"{mapping.blocks}.{i}.{mapping.attn}")
        for i in range(build.cfg.n_layers)
    ]
    rotary = build.cfg.positional_embedding_type == "rotary"
    return attention.install(model, modules, rotary)


def _add_block(build: _Builder, layer: int, probes: attention.AttentionProbes | None) -> None:
    cfg, parts = build.cfg, build.mapping.block_parts()
    block = f"{build.mapping.blocks}.{layer}"
    name = f"blocks.{layer}"
    build.add(f"{name}.hook_resid_pre", block, INPUT)
    if parts.ln1:
        shared = parts.parallel and parts.ln2 is None
        build.norm(f"{name}.ln1", f"{block}.{parts.ln1}", shared=shared)
    _add_qkv(build, layer, parts, block)
    if probes is not None:
        label = f"{block}.{build.mapping.attn}"
        for site, probe in probes.named().items():
            build.add(f"{name}.attn.{site}", label, OUTPUT, module=probe)
    elif parts.pattern:
        build.add(f"{name}.attn.hook_pattern", f"{block}.{parts.pattern}", OUTPUT)
        build.missing(layer, "attn.hook_attn_scores", "GPT-Neo computes the scores inline")
    if parts.o:
        heads = views.heads(cfg.n_heads, cfg.d_head)
        build.add(f"{name}.attn.hook_z", f"{block}.{parts.o}", INPUT, heads)
    if parts.ln1_post:
        build.norm(f"{name}.ln1_post", f"{block}.{parts.ln1_post}")
    if parts.attn_out:
        build.add(f"{name}.hook_attn_out", f"{block}.{parts.attn_out}", OUTPUT)
    flat = parts.flat_mlp
    if parts.resid_mid:
        build.add(f"{name}.hook_resid_mid", f"{block}.{parts.resid_mid}", INPUT,
                  views.in_place(flat=flat))  # fmt: skip
    if parts.ln2:
        build.norm(f"{name}.ln2", f"{block}.{parts.ln2}", flat=flat)
    elif parts.parallel and parts.ln1:
        build.missing(layer, "ln2.hook_normalized", "one norm feeds both attention and MLP")
    if parts.mlp_gate_up:  # [gate | up]
        fused = f"{block}.{parts.mlp_gate_up}"
        build.add(f"{name}.mlp.hook_pre", fused, OUTPUT, views.part(0, cfg.d_mlp))
        build.add(
            f"{name}.mlp.hook_pre_linear", fused, OUTPUT, views.part(cfg.d_mlp, 2 * cfg.d_mlp)
        )
    for site, path, kind in (
        ("mlp.hook_pre", parts.mlp_pre, OUTPUT),
        ("mlp.hook_pre_linear", parts.mlp_pre_linear, OUTPUT),
        ("mlp.hook_post", parts.mlp_post, INPUT),
    ):
        if path:
            build.add(f"{name}.{site}", f"{block}.{path}", kind, views.unflattened(flat=flat))
    if parts.ln2_post:
        build.norm(f"{name}.ln2_post", f"{block}.{parts.ln2_post}")
    if parts.mlp_out:
        build.add(f"{name}.hook_mlp_out", f"{block}.{parts.mlp_out}", OUTPUT,
                  views.unflattened(flat=flat))  # fmt: skip
    build.add(f"{name}.hook_resid_post", block, OUTPUT)


def _add_qkv(build: _Builder, layer: int, parts: BlockParts, block: str) -> None:
    cfg = build.cfg
    n_heads, d_head = cfg.n_heads, cfg.d_head
    n_kv = cfg.n_key_value_heads or n_heads
    name = f"blocks.{layer}.attn"
    for which, path in (("q_norm", parts.q_norm), ("k_norm", parts.k_norm)):
        if not path:
            continue
        weight = build.model.get_submodule(f"{block}.{path}").weight
        assert isinstance(weight, torch.Tensor)
        if weight.shape[0] == d_head:
            # Per head (Gemma-3, Qwen-3): TransformerLens shows [batch*pos*head, d_head];
            # HF models lay the heads out differently ([batch head pos d] or [batch pos
            # head d]) and the site cannot tell which.
            for site in ("hook_scale", "hook_normalized"):
                build.missing(layer, f"attn.{which}.{site}", "a per-head q/k norm")
            continue
        build.norm(f"{name}.{which}", f"{block}.{path}")  # over all heads at once (OLMo-2)
    if parts.q and parts.k and parts.v:
        for site, path, heads in (
            ("q", parts.q, n_heads),
            ("k", parts.k, n_kv),
            ("v", parts.v, n_kv),
        ):
            build.add(f"{name}.hook_{site}", f"{block}.{path}", OUTPUT, views.heads(heads, d_head))
    elif parts.qkv and parts.qkv_layout == "heads":  # GPT-NeoX: per head [q k v]
        for index, site in enumerate("qkv"):
            view = views.fused_part(
                index * d_head, (index + 1) * d_head, n_heads, d_head, per_head=3
            )
            build.add(f"{name}.hook_{site}", f"{block}.{parts.qkv}", OUTPUT, view)
    elif parts.qkv:  # GPT-2, Phi-3: [q | k | v]
        sizes = (n_heads * d_head, n_kv * d_head, n_kv * d_head)
        start = 0
        for site, size, heads in zip("qkv", sizes, (n_heads, n_kv, n_kv), strict=True):
            view = views.fused_part(start, start + size, heads, d_head)
            build.add(f"{name}.hook_{site}", f"{block}.{parts.qkv}", OUTPUT, view)
            start += size
