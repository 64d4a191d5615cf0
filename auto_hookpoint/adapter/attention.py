"""Inside attention: ``hook_rot_q``, ``hook_rot_k``, ``hook_attn_scores``, ``hook_pattern``.

An HF attention module computes its queries and keys, applies the rotary embedding, and
hands them to an attention function it looks up by name in transformers'
``AttentionInterface`` (``sdpa``, ``eager``, ...). The scores and the pattern exist only
inside that function, so the adapter registers its own under
``auto_hookpoint_sdpa`` / ``auto_hookpoint_eager`` (with the mask format of the
original) and switches the model to it:

* while none of these sites is active it calls the original function with the very
  same arguments, so the model computes bit-identically and as fast;
* a hook or cache on ``hook_rot_q`` / ``hook_rot_k`` sees (and may replace) the rotated
  queries / keys, ``[batch pos head d_head]``, before the original function runs;
* a hook or cache on ``hook_attn_scores`` / ``hook_pattern`` makes it compute attention
  as TransformerLens does: scaled scores (soft-capped where the model soft-caps), the
  masked entries set to -inf, softmax in float32, fully masked rows set to 0; each of
  them fires and may be replaced, and the output is computed from what they return.

Each layer's sites are identity modules (:class:`AttentionProbe`) the function calls; the
hook core places its torch hook on them only while a site is active, which is what the
function checks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PREFIX = "auto_hookpoint_"
_ORIGINALS = ("sdpa", "eager")


class AttentionProbe(nn.Module):
    """An identity module the hooked attention function calls, so that a site can fire."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def active(self) -> bool:
        return bool(self._forward_hooks or self._forward_pre_hooks)


@dataclass
class AttentionProbes:
    """The probes of one attention module; ``rot_q``/``rot_k`` only with rotary."""

    scores: AttentionProbe
    pattern: AttentionProbe
    rot_q: AttentionProbe | None = None
    rot_k: AttentionProbe | None = None

    def named(self) -> dict[str, AttentionProbe]:
        names = {"hook_attn_scores": self.scores, "hook_pattern": self.pattern}
        if self.rot_q is not None and self.rot_k is not None:
            names |= {"hook_rot_q": self.rot_q, "hook_rot_k": self.rot_k}
        return names

    def any_active(self) -> bool:
        """The fast path's one question, asked on every attention call."""
        for probe in (self.scores, self.pattern, self.rot_q, self.rot_k):
            if probe is not None and (probe._forward_hooks or probe._forward_pre_hooks):
                return True
        return False


# Where an attention module keeps its probes: a plain attribute (not a submodule, so
# state_dict and named_modules are untouched), copied along by copy.deepcopy.
_PROBES = "_auto_hookpoint_attention_probes"


def _probes_of(module: nn.Module) -> AttentionProbes | None:
    return module.__dict__.get(_PROBES)  # type: ignore[no-any-return]


def unavailable_reason(model: nn.Module) -> str | None:
    """Why these sites cannot be offered for ``model``, or None if they can."""
    try:
        from transformers import AttentionInterface  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError:
        return "this transformers version has no AttentionInterface (it came in 4.48)"
    if not getattr(type(model), "_supports_attention_backend", False) or not hasattr(
        model, "set_attn_implementation"
    ):
        return (
            f"{type(model).__name__} computes attention inline rather than through "
            "transformers' AttentionInterface"
        )
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current not in _ORIGINALS and not str(current).startswith(PREFIX):
        return f"the model runs {current!r} attention; load it with attn_implementation='sdpa'"
    return None


def install(
    model: nn.Module, attention_modules: list[nn.Module], rotary: bool
) -> list[AttentionProbes]:
    """Switch ``model`` to the hooked attention function; one set of probes per module.

    Call only when :func:`unavailable_reason` is None.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    current = str(model.config._attn_implementation)  # type: ignore[union-attr]
    original = current.removeprefix(PREFIX)
    name = PREFIX + original
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, hooked_attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    if current != name:
        model.set_attn_implementation(name)  # type: ignore[operator]
    found = []
    for module in attention_modules:
        probes = _probes_of(module)
        if probes is None:
            probes = AttentionProbes(
                AttentionProbe(),
                AttentionProbe(),
                AttentionProbe() if rotary else None,
                AttentionProbe() if rotary else None,
            )
            module.__dict__[_PROBES] = probes
        found.append(probes)
    return found


def uninstall(model: nn.Module) -> None:
    """Give ``model`` its original attention function back, and drop the probes."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", "")
    if str(current).startswith(PREFIX):
        model.set_attn_implementation(current.removeprefix(PREFIX))  # type: ignore[operator]
    for module in model.modules():
        module.__dict__.pop(_PROBES, None)


_ORIGINALS_FOUND: dict[tuple[type, str], Callable[..., Any]] = {}


def _original(module: nn.Module) -> Callable[..., Any]:
    """The function the module would have called: sdpa, or its model's own eager one."""
    key = (type(module), str(module.config._attn_implementation))  # type: ignore[union-attr]
    found = _ORIGINALS_FOUND.get(key)
    if found is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        implementation = key[1].removeprefix(PREFIX)
        if implementation == "eager":
            own = getattr(sys.modules.get(key[0].__module__), "eager_attention_forward", None)
            found = own if callable(own) else _eager_without_probes
        else:
            found = ALL_ATTENTION_FUNCTIONS[implementation]
        _ORIGINALS_FOUND[key] = found
    return found


def hooked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function registered as ``auto_hookpoint_<original>``; see the module
    docstring. query ``[batch head pos d_head]``, key/value ``[batch kv_head kv_pos d_head]``."""
    probes = _probes_of(module)
    if probes is None or not probes.any_active():
        return _original(module)(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
    if probes.rot_q is not None and probes.rot_q.active():
        query = probes.rot_q(query.transpose(1, 2)).transpose(1, 2)
    if probes.rot_k is not None and probes.rot_k.active():
        key = probes.rot_k(key.transpose(1, 2)).transpose(1, 2)
    if not (probes.scores.active() or probes.pattern.active()):
        return _original(module)(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
    return _eager(module, probes, query, key, value, attention_mask, **kwargs)


def _eager_without_probes(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _eager(module, None, query, key, value, attention_mask, **kwargs)


_UNSUPPORTED = ("s_aux", "sinks")


def _eager(
    module: nn.Module,
    probes: AttentionProbes | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention as TransformerLens computes it, firing the score and pattern sites."""
    unsupported = [k for k in _UNSUPPORTED if kwargs.get(k) is not None]
    if unsupported:
        raise NotImplementedError(
            f"hook_attn_scores / hook_pattern cannot be computed for {type(module).__name__}: "
            f"its attention takes {unsupported}, which the adapter does not model"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    repeats = query.shape[1] // key.shape[1]
    if repeats > 1:  # grouped-query attention: each K/V head serves `repeats` query heads
        key = key.repeat_interleave(repeats, dim=1)
        value = value.repeat_interleave(repeats, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = _allowed(attention_mask, scores)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if probes is not None:
        scores = probes.scores(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    if probes is not None:
        pattern = probes.pattern(pattern)
    weights = nn.functional.dropout(pattern, p=dropout, training=module.training)
    output = torch.matmul(weights.to(value.dtype), value).transpose(1, 2).contiguous()
    return output, pattern


def _allowed(mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """Which key positions each query may attend to, ``[batch|1, 1, q, k]``.

    ``mask`` is what the model's mask function made for the original implementation:
    boolean (sdpa; True = attend), additive float (eager; 0 = attend), or None when
    sdpa's plain causal mask suffices.
    """
    q_len, k_len = scores.shape[-2:]
    if mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device)
        return causal.tril(k_len - q_len)[None, None]
    mask = mask[..., :k_len]
    return mask if mask.dtype == torch.bool else mask == 0
