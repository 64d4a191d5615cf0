"""Resume a forward from a banked activation, without recomputing what came before.

Works where the split site is the output of one block of a *stack*: an element of an
``nn.ModuleList`` or ``nn.Sequential`` whose forward feeds each block's output to the
next (``nn.Sequential`` itself, and the decoder layers of HuggingFace language models).
For the duration of the call, blocks ``0..k`` of the stack return the banked activation
instead of computing (their submodules never run), and blocks ``k+1..`` run as usual on
it, so the result equals the un-split forward's. Everything outside the stack (an
embedding, masks, position tables) runs as usual, from the inputs given.

Refused, with a ResumeError that says why: a site that is not a block output, a block
whose output is not a plain tensor, or a forward that does not call the stack's blocks
0..k exactly once each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.sites import SiteKind
from auto_hookpoint.errors import ResumeError, UnknownHookNameError
from auto_hookpoint.split.early_output import EarlyOutput

_STACKS = (nn.ModuleList, nn.Sequential)


def resume_from(
    model: Any, site: str, activation: torch.Tensor | EarlyOutput, *args: Any, **kwargs: Any
) -> Any:
    """Finish ``model(*args, **kwargs)`` from ``activation``, the output of block ``site``."""
    core = core_of(model, "resume_from")
    if not isinstance(activation, (torch.Tensor, EarlyOutput)):
        raise TypeError(
            "resume_from takes the activation as a tensor or an EarlyOutput (from run_until, "
            f"or EarlyOutput.load(path) for a saved one); got {type(activation).__name__}"
        )
    if isinstance(activation, EarlyOutput):
        activation.check_belongs_to(model)
        if activation.site != site:
            raise ResumeError(f"the EarlyOutput was split at {activation.site!r}, not {site!r}")
        if activation.output_path:
            raise ResumeError(
                f"the blocks of this model return a structure (the activation at {site!r} was "
                f"item {activation.output_path} of it), not a plain tensor, so which values the "
                "next block needs cannot be known; resume_from needs blocks that return their "
                "hidden states as a tensor (as transformers 5 decoder layers do)"
            )
        activation = activation.activation
    if site not in core.sites:
        raise UnknownHookNameError(site, core.sites)
    stack, index = _stack_and_index(model, core.sites[site])
    _check_dtype(stack, index, activation)
    skipped = list(stack.children())[: index + 1]
    calls = [0] * len(skipped)
    with _standing_in(skipped, activation, calls):
        try:
            output = model(*args, **kwargs)
        except ResumeError:
            raise
        except Exception as error:
            raise ResumeError(
                f"the forward failed after resuming from {site!r} with an activation of shape "
                f"{list(activation.shape)} {activation.dtype}: {type(error).__name__}: {error}. "
                "The activation must be what that site produced for these same inputs."
            ) from error
    if calls != [1] * len(skipped):
        raise ResumeError(
            f"cannot resume exactly from {site!r}: the forward called blocks 0..{index} of its "
            f"stack {calls} times instead of once each, in order, so their outputs are not "
            "simply chained"
        )
    return output


def _stack_and_index(model: nn.Module, site: Any) -> tuple[nn.Module, int]:
    path = site.module_path
    parent_path, _, last = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if site.kind is not SiteKind.OUTPUT or not isinstance(parent, _STACKS) or not last.isdigit():
        blocks = [
            name
            for name, s in _block_sites(model)
            if path.startswith(name.removesuffix("hook_point"))
        ]
        hint = f" It lies inside block {blocks[0]!r}." if blocks else ""
        raise ResumeError(
            f"resume_from needs the output of a block of a stack (an element of a ModuleList "
            f"or Sequential, such as 'model.layers.1.hook_point'); {site.name!r} is not one.{hint} "
            "Resuming from inside a block cannot be exact: the rest of that block needs "
            "values (its input, for the residual sum) that were not banked."
        )
    return parent, int(last)


def _block_sites(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, module in model.named_modules():
        if isinstance(module, _STACKS):
            for name, block in module.named_children():
                yield f"{path}.{name}.hook_point" if path else f"{name}.hook_point", block


def _check_dtype(stack: nn.Module, index: int, activation: torch.Tensor) -> None:
    blocks = list(stack.children())
    after = blocks[index + 1] if index + 1 < len(blocks) else None
    param = next((p for p in after.parameters() if p.is_floating_point()), None) if after else None
    if param is not None and activation.is_floating_point() and activation.dtype != param.dtype:
        raise ResumeError(
            f"the activation is {activation.dtype} but the blocks after it compute in "
            f"{param.dtype}; convert it with .to({param.dtype}) first"
        )


@contextlib.contextmanager
def _standing_in(
    blocks: list[nn.Module], activation: torch.Tensor, calls: list[int]
) -> Iterator[None]:
    """Make each block return ``activation`` instead of computing, for the duration."""

    def stand_in(position: int) -> Any:
        def forward(*args: Any, **_kwargs: Any) -> torch.Tensor:
            calls[position] += 1
            # A stack that unpacks its blocks' outputs (layer_outputs[0]) would hand this
            # block something other than what the previous stand-in returned.
            if position and (not args or args[0] is not activation):
                raise ResumeError(
                    "the stack does not pass each block's output straight to the next block "
                    "(its blocks return structures it unpacks), so it cannot be resumed exactly"
                )
            return activation

        return forward

    for position, block in enumerate(blocks):
        if "forward" in block.__dict__:
            raise ResumeError(f"block {position} already has its forward replaced; not resuming")
    try:
        for position, block in enumerate(blocks):
            block.__dict__["forward"] = stand_in(position)  # the instance's, not the class's
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
