"""Where the parts TransformerLens names live in each HuggingFace decoder family.

Paths are relative to the HF model (``AutoModelForCausalLM``). ``attn`` and ``mlp`` are
relative to one block. A family not in the table is detected from the model itself
(input/output embeddings, the longest ModuleList, a final norm beside it); anything else
takes an :class:`ArchitectureMapping` passed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from auto_hookpoint.errors import AutoHookError


class ArchitectureError(AutoHookError, ValueError):
    """A part of the model the adapter needs was not found; the message says which."""


@dataclass(frozen=True)
class ArchitectureMapping:
    embed: str  # token embedding (nn.Embedding)
    blocks: str  # the ModuleList of decoder blocks
    ln_final: str | None  # the norm after the last block
    unembed: str  # the LM head (a Linear whose weight is d_vocab x d_model)
    attn: str | None = None  # in a block: the attention module
    mlp: str | None = None  # in a block: the MLP (or MoE) module
    pos_embed: str | None = None  # learned position embedding, if any


_LLAMA_LIKE = ArchitectureMapping(
    "model.embed_tokens", "model.layers", "model.norm", "lm_head", "self_attn", "mlp"
)

ARCHITECTURES: dict[str, ArchitectureMapping] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "phi": replace(_LLAMA_LIKE, ln_final="model.final_layernorm"),
    "gpt2": ArchitectureMapping(
        "transformer.wte",
        "transformer.h",
        "transformer.ln_f",
        "lm_head",
        "attn",
        "mlp",
        pos_embed="transformer.wpe",
    ),
    "gpt_neox": ArchitectureMapping(
        "gpt_neox.embed_in",
        "gpt_neox.layers",
        "gpt_neox.final_layer_norm",
        "lm_head",
        "attention",
        "mlp",
    ),
    "opt": ArchitectureMapping(
        "model.decoder.embed_tokens",
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        "lm_head",
        "self_attn",
        None,
        pos_embed="model.decoder.embed_positions",
    ),
}


def resolve_mapping(
    model: nn.Module, mapping: ArchitectureMapping | None = None
) -> ArchitectureMapping:
    """The mapping for ``model``: the one given, its family's, or one detected from it.

    Raises ArchitectureError naming the part that is missing and how to pass it.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if mapping is None:
        mapping = ARCHITECTURES.get(model_type) if model_type else None
        if mapping is not None:
            mapping = _embeddings_from_hf(model, mapping)
    if mapping is None:
        mapping = _detect(model, model_type)
    _check(model, mapping, model_type)
    return mapping


def _embeddings_from_hf(model: nn.Module, mapping: ArchitectureMapping) -> ArchitectureMapping:
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


def _detect(model: nn.Module, model_type: str | None) -> ArchitectureMapping:
    paths = {id(m): p for p, m in model.named_modules()}
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    embed = paths.get(id(get_in())) if callable(get_in) and get_in() is not None else None
    unembed = paths.get(id(get_out())) if callable(get_out) and get_out() is not None else None
    stacks = [
        (len(m._modules), p) for p, m in model.named_modules() if isinstance(m, nn.ModuleList)
    ]
    blocks = max(stacks)[1] if stacks else None
    ln_final = None
    if blocks is not None:
        parent = blocks.rpartition(".")[0]
        for path in paths.values():
            if path.rpartition(".")[0] == parent and any(
                k in path.rpartition(".")[2].lower() for k in ("norm", "ln_f")
            ):
                ln_final = path
    for part, found in (("token embedding", embed), ("block stack", blocks), ("LM head", unembed)):
        if found is None:
            raise ArchitectureError(
                f"could not find the {part} of this {model_type or type(model).__name__} model. "
                "Pass mapping=ArchitectureMapping(embed=..., blocks=..., ln_final=..., "
                "unembed=...) with the module paths of model.named_modules()."
            )
    assert embed is not None and blocks is not None and unembed is not None
    first_block = dict(model.get_submodule(blocks).named_children()).get("0")
    children = [n for n, _ in first_block.named_children()] if first_block is not None else []
    attn = next((n for n in children if "attn" in n.lower() or "attention" in n.lower()), None)
    mlp = next((n for n in children if "mlp" in n.lower() or "feed_forward" in n.lower()), None)
    return ArchitectureMapping(embed, blocks, ln_final, unembed, attn, mlp)


def _check(model: nn.Module, mapping: ArchitectureMapping, model_type: str | None) -> None:
    label = model_type or type(model).__name__
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
