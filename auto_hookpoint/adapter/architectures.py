"""Where the parts TransformerLens names live in an HF causal LM.

:class:`ArchitectureMapping` names the model-level parts (embeddings, block stack,
final norm, LM head) and :class:`BlockParts` the parts inside one decoder block, each by
module path. :data:`ARCHITECTURES` holds them for the families whose every name is
proven against TransformerLens' own ``HookedTransformer`` on the same weights (the
parity suite in ``tests/test_adapter_parity.py``); other families are detected by
:mod:`auto_hookpoint.adapter.detect`, and anything else takes a mapping passed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from torch import nn

from auto_hookpoint.errors import AutoHookError


class ArchitectureError(AutoHookError, ValueError):
    """A part of the model the adapter needs was not found; the message says which."""


@dataclass(frozen=True)
class BlockParts:
    """Where TransformerLens' per-block names live in one decoder block.

    Each field is a module path relative to the block (``"self_attn.q_proj"``), or None
    where the architecture has no such part: the names that need it are then not
    offered (``docs/adapter.md`` lists them per family, with why).
    """

    ln1: str | None = None  # TL's ln1 (hook_scale from its input, hook_normalized its output)
    ln2: str | None = None  # TL's ln2
    ln1_post: str | None = None  # Gemma-2/3: the norm applied to the attention output
    ln2_post: str | None = None  # Gemma-2/3: the norm applied to the MLP output
    attn_out: str | None = None  # its output is hook_attn_out: what attention adds
    mlp_out: str | None = None  # its output is hook_mlp_out: what the MLP adds
    resid_mid: str | None = None  # its input is hook_resid_mid; None in parallel blocks
    q: str | None = None  # projections whose outputs are hook_q / hook_k / hook_v
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # or one fused projection, laid out as qkv_layout says
    qkv_layout: Literal["split", "heads"] = "split"  # [q|k|v] (GPT-2) or per head (GPT-NeoX)
    q_norm: str | None = None  # norms applied to the queries / keys (OLMo-2, Gemma-3)
    k_norm: str | None = None
    o: str | None = None  # the output projection: its input is hook_z
    pattern: str | None = None  # a module whose output is the attention pattern (GPT-Neo)
    mlp_pre: str | None = None  # its output is mlp.hook_pre (the gate in gated MLPs)
    mlp_pre_linear: str | None = None  # its output is mlp.hook_pre_linear (gated MLPs)
    mlp_post: str | None = None  # its input is mlp.hook_post
    mlp_gate_up: str | None = None  # a fused [gate | up] projection (Phi-3): pre | pre_linear
    flat_mlp: bool = False  # OPT runs its MLP part on [batch*pos, d] tensors
    parallel: bool = False  # attention and MLP both read the block input (Phi, GPT-J)

    def paths(self) -> dict[str, str]:
        """Every module path named, by field."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "qkv_layout" and isinstance(value := getattr(self, f.name), str)
        }


@dataclass(frozen=True)
class ArchitectureMapping:
    embed: str  # token embedding (nn.Embedding)
    blocks: str  # the ModuleList of decoder blocks
    ln_final: str | None  # the norm after the last block
    unembed: str  # the LM head (a Linear whose weight is d_vocab x d_model)
    attn: str | None = None  # in a block: the attention module (hook_attn_out, without parts)
    mlp: str | None = None  # in a block: the MLP (or MoE) module (hook_mlp_out, without parts)
    pos_embed: str | None = None  # learned position embedding, if any
    parts: BlockParts | None = None  # the parts inside a block; None: attn and mlp only

    def block_parts(self) -> BlockParts:
        """``parts``, or (for a mapping given without) the attention and MLP outputs."""
        return self.parts or BlockParts(attn_out=self.attn, mlp_out=self.mlp)


# Pre-norm blocks: ln1 before attention, ln2 (whose input is resid_mid) before the MLP.
def _pre_norm(ln1: str, ln2: str, attn: str, mlp: str | None, **parts: Any) -> BlockParts:
    return BlockParts(
        ln1=ln1, ln2=ln2, attn_out=attn, mlp_out=mlp, resid_mid=ln2, **parts
    )  # fmt: skip


_LLAMA_PARTS = _pre_norm(
    "input_layernorm", "post_attention_layernorm", "self_attn", "mlp",
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    mlp_pre="mlp.gate_proj", mlp_pre_linear="mlp.up_proj", mlp_post="mlp.down_proj",
)  # fmt: skip
# Gemma-2 and -3 normalise each sublayer's output before adding it to the residual
# stream; TransformerLens' hook_attn_out / hook_mlp_out are after those norms.
_SANDWICH_PARTS = replace(
    _LLAMA_PARTS,
    ln2="pre_feedforward_layernorm",
    ln1_post="post_attention_layernorm",
    ln2_post="post_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    resid_mid="pre_feedforward_layernorm",
)
_LLAMA_LIKE = ArchitectureMapping(
    "model.embed_tokens", "model.layers", "model.norm", "lm_head", "self_attn", "mlp",
    parts=_LLAMA_PARTS,
)  # fmt: skip
_GPT2_LIKE = ArchitectureMapping(
    "transformer.wte", "transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp",
    pos_embed="transformer.wpe",
)  # fmt: skip
_GPT2_PARTS = _pre_norm("ln_1", "ln_2", "attn", "mlp", mlp_pre="mlp.c_fc", mlp_post="mlp.c_proj")
_NEO_ATTENTION = "attn.attention"  # GPT-Neo's attention wraps the module that computes it

ARCHITECTURES: dict[str, ArchitectureMapping] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": replace(_LLAMA_LIKE, parts=_SANDWICH_PARTS),
    # An MoE block: the experts have no TransformerLens MLP names.
    "mixtral": replace(
        _LLAMA_LIKE, parts=replace(_LLAMA_PARTS, mlp_pre=None, mlp_pre_linear=None, mlp_post=None)
    ),
    "phi": replace(
        _LLAMA_LIKE,
        ln_final="model.final_layernorm",
        parts=replace(  # one norm feeds attention and MLP: no ln2, no resid_mid
            _LLAMA_PARTS,
            ln2=None,
            resid_mid=None,
            o="self_attn.dense",
            mlp_pre="mlp.fc1",
            mlp_pre_linear=None,
            mlp_post="mlp.fc2",
            parallel=True,
        ),
    ),  # fmt: skip
    "phi3": replace(
        _LLAMA_LIKE,
        parts=replace(
            _LLAMA_PARTS,
            q=None,
            k=None,
            v=None,
            qkv="self_attn.qkv_proj",
            mlp_pre=None,
            mlp_pre_linear=None,
            mlp_gate_up="mlp.gate_up_proj",
        ),
    ),  # fmt: skip
    "gpt2": replace(_GPT2_LIKE, parts=replace(_GPT2_PARTS, qkv="attn.c_attn", o="attn.c_proj")),
    "gpt_neo": replace(
        _GPT2_LIKE,
        parts=replace(
            _GPT2_PARTS,
            q=f"{_NEO_ATTENTION}.q_proj",
            k=f"{_NEO_ATTENTION}.k_proj",
            v=f"{_NEO_ATTENTION}.v_proj",
            o=f"{_NEO_ATTENTION}.out_proj",
            pattern=f"{_NEO_ATTENTION}.attn_dropout",
        ),
    ),  # fmt: skip
    "gpt_neox": ArchitectureMapping(
        "gpt_neox.embed_in",
        "gpt_neox.layers",
        "gpt_neox.final_layer_norm",
        "lm_head",
        "attention",
        "mlp",
        parts=_pre_norm(
            "input_layernorm",
            "post_attention_layernorm",
            "attention",
            "mlp",
            qkv="attention.query_key_value",
            qkv_layout="heads",
            o="attention.dense",
            mlp_pre="mlp.dense_h_to_4h",
            mlp_post="mlp.dense_4h_to_h",
        ),
    ),  # fmt: skip
    "opt": ArchitectureMapping(
        "model.decoder.embed_tokens",
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        "lm_head",
        "self_attn",
        None,
        pos_embed="model.decoder.embed_positions",
        parts=_pre_norm(
            "self_attn_layer_norm",
            "final_layer_norm",
            "self_attn",
            "fc2",
            q="self_attn.q_proj",
            k="self_attn.k_proj",
            v="self_attn.v_proj",
            o="self_attn.out_proj",
            mlp_pre="fc1",
            mlp_post="fc2",
            flat_mlp=True,
        ),
    ),  # fmt: skip
}


def for_config(mapping: ArchitectureMapping, config: Any) -> ArchitectureMapping:
    """Adjust a family's mapping to one model's config: GPT-NeoX and StableLM blocks are
    parallel when ``use_parallel_residual`` says so (no hook_resid_mid then); OPT-350m
    normalises after each sublayer, which TransformerLens' names do not describe."""
    parts = mapping.parts
    if parts is None:
        return mapping
    if getattr(config, "use_parallel_residual", False):
        parts = replace(parts, parallel=True)
    if parts.parallel:
        parts = replace(parts, resid_mid=None)
    if getattr(config, "do_layer_norm_before", True) is False:
        parts = BlockParts(q=parts.q, k=parts.k, v=parts.v, o=parts.o)
    return replace(mapping, parts=parts)


def embeddings_from_hf(model: nn.Module, mapping: ArchitectureMapping) -> ArchitectureMapping:
    """Where the table's embedding or head path is not in this transformers version
    (GPT-NeoX's head was `embed_out` before 5.0), ask the model itself."""
    paths = {id(m): p for p, m in model.named_modules()}
    for part, getter in (("embed", "get_input_embeddings"), ("unembed", "get_output_embeddings")):
        try:
            model.get_submodule(getattr(mapping, part))
        except AttributeError:
            found = getattr(model, getter, lambda: None)()
            if found is not None and id(found) in paths:
                mapping = replace(mapping, **{part: paths[id(found)]})
    return mapping


def check_mapping(model: nn.Module, mapping: ArchitectureMapping, label: str) -> None:
    """Raise ArchitectureError naming any path of ``mapping`` that ``model`` lacks."""
    for part in ("embed", "blocks", "ln_final", "unembed", "pos_embed"):
        path = getattr(mapping, part)
        if path is None:
            continue
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ArchitectureError(
                f"the {part} of this {label} model was expected at {path!r}, but there is no "
                f"such module. Pass mapping=ArchitectureMapping(...) with the right path."
            ) from None
        if part == "blocks" and not isinstance(module, nn.ModuleList):
            raise ArchitectureError(
                f"{path!r} ({part}) is a {type(module).__name__}, not a ModuleList"
            )
    first_block = model.get_submodule(f"{mapping.blocks}.0")
    for part in ("attn", "mlp"):
        path = getattr(mapping, part)
        if path is not None and not hasattr(first_block, path.split(".")[0]):
            raise ArchitectureError(f"block 0 of {mapping.blocks!r} has no {part} module {path!r}")
    for part, path in (mapping.parts.paths() if mapping.parts else {}).items():
        try:
            first_block.get_submodule(path)
        except AttributeError:
            raise ArchitectureError(
                f"block 0 of {mapping.blocks!r} has no module {path!r} (BlockParts.{part}) in "
                f"this {label} model. Pass mapping=ArchitectureMapping(..., parts=BlockParts("
                "...)) with paths relative to a block."
            ) from None
