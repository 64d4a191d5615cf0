"""Find the parts of an HF causal LM whose family is not in the adapter's table.

The model-level parts come from the model itself: its input and output embeddings, the
longest ``ModuleList`` (the blocks), a norm beside it (the final norm), and a learned
position embedding beside the token embedding. Inside a block, the norms are told
apart by the names HF families give them (pre-norm, Gemma-2 style sandwich norms,
OLMo-2 style post-norms); the attention and MLP internals by the usual projection
names. Whatever is not recognised is left out, and :func:`unsure_parts` says what.

A detected mapping is then checked on a tiny forward by the adapter
(:mod:`auto_hookpoint.adapter.selfcheck`) before it offers the names.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from auto_hookpoint.adapter.architectures import ArchitectureError, ArchitectureMapping, BlockParts

_ATTENTION = ("self_attn", "attention", "attn", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn")
_OUT_PROJ = ("o_proj", "dense", "out_proj", "c_proj")
# (up or gate projection, its up partner in gated MLPs, down projection)
_MLP_PROJ = (
    ("gate_proj", "up_proj", "down_proj"),
    ("fc1", None, "fc2"),
    ("c_fc", None, "c_proj"),
    ("dense_h_to_4h", None, "dense_4h_to_h"),
    ("w1", "w3", "w2"),
)
_POS_EMBED = ("wpe", "embed_positions", "position_embeddings", "pos_embed")


def detect_mapping(model: nn.Module, label: str) -> ArchitectureMapping:
    """The model-level parts and the block parts found in ``model``."""
    paths = {id(m): p for p, m in model.named_modules()}
    embed = _path_of(model, "get_input_embeddings", paths)
    unembed = _path_of(model, "get_output_embeddings", paths)
    stacks = [
        (len(m._modules), p) for p, m in model.named_modules() if isinstance(m, nn.ModuleList)
    ]
    blocks = max(stacks)[1] if stacks else None
    for part, found in (("token embedding", embed), ("block stack", blocks), ("LM head", unembed)):
        if found is None:
            raise ArchitectureError(
                f"could not find the {part} of this {label} model. "
                "Pass mapping=ArchitectureMapping(embed=..., blocks=..., ln_final=..., "
                "unembed=...) with the module paths of model.named_modules()."
            )
    assert embed is not None and blocks is not None and unembed is not None
    parent = blocks.rpartition(".")[0]
    siblings = [p for p in paths.values() if p.rpartition(".")[0] == parent and p != blocks]
    ln_final = next(
        (p for p in siblings if any(k in p.rpartition(".")[2].lower() for k in ("norm", "ln_f"))),
        None,
    )
    pos_embed = _pos_embed(model, embed, unembed, paths)
    block = model.get_submodule(f"{blocks}.0")
    children = _children(block)
    attn = next((n for n in _ATTENTION if n in children), None)
    mlp = next((n for n in _MLP if n in children), None)
    parts = detect_block_parts(block)
    return ArchitectureMapping(embed, blocks, ln_final, unembed, attn, mlp, pos_embed, parts)


def _path_of(model: nn.Module, getter: str, paths: dict[int, str]) -> str | None:
    get = getattr(model, getter, None)
    found = get() if callable(get) else None
    return paths.get(id(found)) if found is not None else None


def _pos_embed(model: nn.Module, embed: str, unembed: str, paths: dict[int, str]) -> str | None:
    """A learned position embedding beside the token embedding (GPT-2 and GPT-Neo's wpe,
    OPT's embed_positions), recognised by its name and type."""
    parent = embed.rpartition(".")[0]
    for path in paths.values():
        if path.rpartition(".")[0] != parent or path in (embed, unembed):
            continue
        module = model.get_submodule(path)
        if isinstance(module, nn.Embedding) and path.rpartition(".")[2] in _POS_EMBED:
            return path
    return None


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _norm_names(block: nn.Module) -> set[str]:
    return {
        name
        for name, child in block.named_children()
        if "norm" in type(child).__name__.lower() or "norm" in name or name.startswith("ln")
    }


def detect_block_parts(block: nn.Module) -> BlockParts:
    """The parts of one decoder block, recognised by the names HF families use."""
    children = _children(block)
    attn = next((n for n in _ATTENTION if n in children), None)
    mlp = next((n for n in _MLP if n in children), None)
    norms = _norm_names(block)
    layout: dict[str, str | None] = {"attn_out": attn, "mlp_out": mlp}
    layout.update(_norm_layout(norms, mlp))
    parts = BlockParts(**layout)  # type: ignore[arg-type]
    if attn is not None:
        inner = _children(children[attn])
        if {"q_proj", "k_proj", "v_proj"} <= inner.keys():
            out = next((o for o in _OUT_PROJ if o in inner), None)
            parts = _with(
                parts,
                q=f"{attn}.q_proj",
                k=f"{attn}.k_proj",
                v=f"{attn}.v_proj",
                o=f"{attn}.{out}" if out else None,
                q_norm=f"{attn}.q_norm" if "q_norm" in inner else None,
                k_norm=f"{attn}.k_norm" if "k_norm" in inner else None,
            )
    if mlp is not None:
        inner = _children(children[mlp])
        for pre, pre_linear, post in _MLP_PROJ:
            if pre in inner and post in inner and (pre_linear is None or pre_linear in inner):
                parts = _with(
                    parts,
                    mlp_pre=f"{mlp}.{pre}",
                    mlp_pre_linear=f"{mlp}.{pre_linear}" if pre_linear else None,
                    mlp_post=f"{mlp}.{post}",
                )
                break
    return parts


def _norm_layout(norms: set[str], mlp: str | None) -> dict[str, str | None]:
    """TransformerLens' roles for the block's norms, from their names."""
    if {
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    } <= norms:  # Gemma-2/3: a norm before and after each sublayer
        return {
            "ln1": "input_layernorm",
            "ln2": "pre_feedforward_layernorm",
            "ln1_post": "post_attention_layernorm",
            "ln2_post": "post_feedforward_layernorm",
            "attn_out": "post_attention_layernorm",
            "mlp_out": "post_feedforward_layernorm",
            "resid_mid": "pre_feedforward_layernorm",
        }
    if {"post_attention_layernorm", "post_feedforward_layernorm"} <= norms and not (
        norms & {"input_layernorm", "pre_feedforward_layernorm"}
    ):  # OLMo-2: the sublayer outputs are normalised, TransformerLens calls them ln1/ln2
        return {
            "ln1": "post_attention_layernorm",
            "ln2": "post_feedforward_layernorm",
            "attn_out": "post_attention_layernorm",
            "mlp_out": "post_feedforward_layernorm",
            "resid_mid": mlp,
        }
    for ln1, ln2 in (
        ("input_layernorm", "post_attention_layernorm"),
        ("ln_1", "ln_2"),
        ("self_attn_layer_norm", "final_layer_norm"),
    ):
        if {ln1, ln2} == norms:
            return {"ln1": ln1, "ln2": ln2, "resid_mid": ln2}
    if len(norms) == 1:  # one norm feeding attention and MLP (parallel blocks)
        return {"ln1": next(iter(norms))}
    return {}


def _with(parts: BlockParts, **values: str | None) -> BlockParts:
    return replace(parts, **values)  # type: ignore[arg-type]


def unsure_parts(block: nn.Module, parts: BlockParts) -> list[str]:
    """Norms of the block whose TransformerLens role was not recognised."""
    placed = {p.split(".")[0] for p in parts.paths().values()}
    return sorted(_norm_names(block) - placed)
