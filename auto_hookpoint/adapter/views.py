"""How TransformerLens' names see an HF module's tensors: the :class:`SiteView`s.

An HF model computes what TransformerLens hooks, but not always as one tensor of the
same shape: queries come out of a projection as ``[batch pos (head d_head)]`` (or as a
third of a fused ``[q | k | v]`` projection), OPT runs its MLP on ``[batch*pos d]``,
the residual stream between attention and MLP is only the input of the next norm. Each
view here shows such a tensor in TransformerLens' shape (a view of the same storage, so
an in-place edit reaches the model) and writes a replacement back where the model
will use it.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch

from auto_hookpoint.adapter.norms import Affine, normalize
from auto_hookpoint.core.sites import SiteView

# The batch size of the forward running in this context, for views that have to undo
# a model's flattening of batch and position (OPT's MLP); set by the adapter's forward.
CURRENT_BATCH: ContextVar[int | None] = ContextVar("auto_hookpoint_adapter_batch", default=None)


def _unflatten(tensor: torch.Tensor, flat: bool) -> torch.Tensor:
    """``[batch*pos, ...]`` back to ``[batch, pos, ...]`` where the model flattened it."""
    if not flat or tensor.dim() != 2:
        return tensor
    batch = CURRENT_BATCH.get()
    if batch is None:
        raise RuntimeError(
            "this TransformerLens name unflattens [batch*pos, d] tensors and needs the batch "
            "size: run the model through the HookedTransformerAdapter (its forward, "
            "run_with_hooks, run_with_cache or generate), not the HF model directly."
        )
    return tensor.unflatten(0, (batch, -1))


def heads(n_heads: int, d_head: int, *, flat: bool = False) -> SiteView:
    """``[batch pos (head d_head)]`` shown as ``[batch pos head d_head]``."""

    def show(tensor: torch.Tensor) -> torch.Tensor:
        return _unflatten(tensor, flat).unflatten(-1, (n_heads, d_head))

    return SiteView(show, lambda tensor, new: new.reshape(tensor.shape))


def fused_part(start: int, stop: int, n_heads: int, d_head: int, *, per_head: int = 0) -> SiteView:
    """One of q, k, v inside a fused projection's output.

    ``per_head=0``: the output is ``[... q | k | v]`` and the part is ``[start:stop]`` of
    the last dimension (GPT-2, Phi-3). ``per_head=3``: the output is, per head,
    ``[q k v]`` of ``d_head`` each (GPT-NeoX), and the part is ``[start:stop]`` of each
    head's ``3 * d_head``.
    """

    def unfused(tensor: torch.Tensor) -> torch.Tensor:
        if per_head:
            return tensor.unflatten(-1, (n_heads, per_head * d_head))
        return tensor

    def show(tensor: torch.Tensor) -> torch.Tensor:
        part = unfused(tensor)[..., start:stop]
        return part if per_head else part.unflatten(-1, (n_heads, d_head))

    def write_back(tensor: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        updated = unfused(tensor).clone()
        updated[..., start:stop] = new if per_head else new.flatten(-2)
        return updated.reshape(tensor.shape)

    return SiteView(show, write_back)


def part(start: int, stop: int) -> SiteView:
    """``[..., start:stop]`` of a fused projection's output (Phi-3's [gate | up])."""

    def write_back(tensor: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        updated = tensor.clone()
        updated[..., start:stop] = new
        return updated

    return SiteView(lambda tensor: tensor[..., start:stop], write_back)


def unflattened(*, flat: bool) -> SiteView:
    """A ``[batch*pos, d]`` tensor (OPT's MLP) shown as ``[batch pos d]``."""
    return SiteView(
        lambda tensor: _unflatten(tensor, flat), lambda tensor, new: new.reshape(tensor.shape)
    )


def in_place(*, flat: bool = False) -> SiteView:
    """A tensor the model keeps using after the module (the residual stream the next norm
    reads, which the block adds its MLP output to): a replacement is copied into it, so
    every later use sees it, as in TransformerLens."""

    def write_back(tensor: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        # Also when `new` shares the memory (an edit through the view, or a backward
        # hook's wrapper): the copy puts it on the autograd path.
        tensor.copy_(new.reshape(tensor.shape))
        return tensor

    return SiteView(lambda tensor: _unflatten(tensor, flat), write_back)


def norm_scale(eps: float, *, centered: bool, flat: bool = False) -> SiteView:
    """TransformerLens' ``hook_scale`` of a norm, from the norm's input (an INPUT site):
    ``[batch pos 1]``. Read-only: the norm computes with its own scale, so an edit here
    could not reach it."""
    return SiteView(
        lambda tensor: normalize(_unflatten(tensor, flat), eps, centered)[1],
        None,
        "the adapter computes a norm's scale from the norm's input for reading; the norm "
        "computes with its own. Hook the norm's hook_normalized (or the residual stream "
        "before it) to change what it passes on.",
    )


def norm_normalized(
    eps: float, *, centered: bool, affine: Affine | None, flat: bool = False
) -> SiteView:
    """TransformerLens' ``hook_normalized`` (the input over its scale, before the norm's
    weight and bias), recomputed from the norm's input (an OUTPUT site that reads the
    input). A replacement ``new`` makes the norm pass on ``new * w + b``; without a known
    ``affine`` the site is read-only."""

    def show(tensor: torch.Tensor, module_input: torch.Tensor) -> torch.Tensor:
        return normalize(_unflatten(module_input, flat), eps, centered)[0]

    def write_back(tensor: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        assert affine is not None
        w, b = affine()
        return (new * w + b).to(tensor.dtype).reshape(tensor.shape)

    return SiteView(
        show,
        write_back if affine is not None else None,
        "this norm's output also feeds what TransformerLens' norm of this name does not "
        "(one norm before both attention and MLP), or the adapter could not tell how it "
        "applies its weight; hook the attention's or MLP's own inputs (hook_q/k/v, "
        "mlp.hook_pre) instead",
        uses_input=True,
    )
