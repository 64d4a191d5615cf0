"""Check a detected mapping on a tiny forward before trusting it.

For a family the adapter's table does not list, the parts come from names
(:mod:`auto_hookpoint.adapter.detect`). Before offering TransformerLens' names there,
one forward on a few tokens confirms what TransformerLens guarantees of them:

* every name fires;
* the residual stream adds up: ``resid_post = resid_pre + attn_out + mlp_out`` and
  ``resid_mid = resid_pre + attn_out`` in each block, ``resid_pre`` of block 0 is
  ``hook_embed`` (+ ``hook_pos_embed``), and the logits are ``ln_final`` output times
  ``W_U`` plus ``b_U``.

Names that fail are removed, and a warning says which, why, and what to pass in
``mapping=`` to name the parts by hand.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.cache import cached_forward


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)


def check_detected(adapter: Any, names: list[str]) -> None:
    """Remove from ``adapter`` the detected names the forward does not confirm; warn."""
    core = core_of(adapter.model)
    tokens = torch.arange(1, 5)[None] % adapter.cfg.d_vocab
    final_norm = f"{adapter.mapping.ln_final}.hook_point" if adapter.mapping.ln_final else ""
    watched = [*names, final_norm] if final_norm in core.sites else names
    try:
        _, cache = cached_forward(core, watched, lambda: adapter(tokens))
    except Exception as error:  # noqa: BLE001 - any failure means: do not trust the names
        reason = f"a forward with them raised {type(error).__name__}: {error}"
        kept = ("hook_resid_pre", "hook_resid_post")
        _drop(adapter, {n: reason for n in names if not n.endswith(kept)})
        return
    failed = {name: "it never fired" for name in names if name not in cache}
    for layer in range(adapter.cfg.n_layers):
        _check_block(cache, f"blocks.{layer}", failed)
    embed = cache.get("hook_embed")
    if embed is not None and "blocks.0.hook_resid_pre" in cache:
        total = embed + cache.get("hook_pos_embed", torch.zeros_like(embed))
        if not _close(total, cache["blocks.0.hook_resid_pre"]):
            failed["hook_embed"] = failed["hook_pos_embed"] = "they do not add up to resid_pre"
    head_input = cache.get("unembed.hook_in")
    if final_norm in cache and head_input is not None and not _close(cache[final_norm], head_input):
        reason = "the final norm's output is not what the LM head reads"
        failed["ln_final.hook_normalized"] = failed["ln_final.hook_scale"] = reason
    _drop(adapter, {n: r for n, r in failed.items() if n in core.sites})


def _check_block(cache: dict[str, torch.Tensor], block: str, failed: dict[str, str]) -> None:
    pre, post = cache.get(f"{block}.hook_resid_pre"), cache.get(f"{block}.hook_resid_post")
    attn, mlp = cache.get(f"{block}.hook_attn_out"), cache.get(f"{block}.hook_mlp_out")
    mid = cache.get(f"{block}.hook_resid_mid")
    if pre is None or post is None or attn is None:
        return
    if mid is not None and not _close(pre + attn, mid):
        failed[f"{block}.hook_resid_mid"] = "resid_pre + attn_out is not resid_mid"
    if mlp is not None and not _close(pre + attn + mlp, post):
        for name in ("hook_attn_out", "hook_mlp_out", "hook_resid_mid"):
            failed[f"{block}.{name}"] = "resid_pre + attn_out + mlp_out is not resid_post"


def _drop(adapter: Any, failed: dict[str, str]) -> None:
    """Remove the ``failed`` names (name: why) and say so, once."""
    if not failed:
        return
    core = core_of(adapter.model)
    for name, reason in failed.items():
        core.remove_site(name)
        generic = "blocks.0." + name.split(".", 2)[2] if name.startswith("blocks.") else name
        adapter.unavailable_hook_names.setdefault(generic, f"detection unsure: {reason}")
    shown = "; ".join(f"{n} ({r})" for n, r in list(failed.items())[:4])
    more = f" and {len(failed) - 4} more" if len(failed) > 4 else ""
    warnings.warn(
        f"HookedTransformerAdapter detected the parts of this {type(adapter.model).__name__} "
        f"(its family is not in the adapter's table) but a check forward did not confirm "
        f"{shown}{more}. Those names are not offered. Name the parts by hand with "
        "mapping=ArchitectureMapping(embed=..., blocks=..., ln_final=..., unembed=..., "
        "parts=BlockParts(attn_out=..., mlp_out=..., resid_mid=..., ...)) (module paths; "
        "BlockParts' are relative to a block).",
        stacklevel=3,
    )
