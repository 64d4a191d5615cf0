"""Resume a forward from a banked activation, without recomputing what came before.

Works where the split site is the output of block ``k`` of a *stack*: an element of an
``nn.ModuleList`` or ``nn.Sequential`` whose forward feeds each block's output to the
next (``nn.Sequential`` itself, and the decoder layers of HuggingFace language models).
For the call, blocks ``0..k`` answer without computing: block ``k`` with (a copy of) the
activation, an earlier block with its own banked output if the EarlyOutput has one.
Blocks ``k+1..`` run as usual on it. Everything outside the stack (an embedding, masks,
position tables) runs as usual from the inputs given. Also on a model dispatched by
accelerate: the skipped blocks' weights are never loaded.

What fires: the sites of blocks ``0..k`` and of everything inside them stay silent (they
are not computed); every other site fires as in the un-split forward, with the same
values.

What is returned is the model's output, equal to the un-split forward's in every value.
On HuggingFace outputs: ``past_key_values`` is ``None`` (blocks ``0..k`` compute no keys and
values); ``hidden_states`` are returned when blocks ``0..k-1`` were banked too.

Refused, with a ResumeError that says why, before anything runs: a site that is not a
block output; an activation whose dtype, device, shape or batch size is not that of the
block output for these inputs; ``use_cache=True``, a ``past_key_values`` to continue from,
``output_attentions`` or ``output_router_logits`` (values of the skipped blocks), and
``output_hidden_states`` unless blocks ``0..k-1`` were banked (asked in the call). After
the forward: a stack that does not call blocks ``0..k`` exactly once each, chaining their
outputs; any output that holds a value only a skipped block could have produced; the
same per-layer values asked for by the model's config (an output's ``attentions``,
``router_logits``, ``hidden_states`` fields, or the config's flags for a tuple output).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, MutableMapping
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.context import not_traced
from auto_hookpoint.core.devices import execution_device, tensors_of
from auto_hookpoint.core.muting import muted
from auto_hookpoint.core.sites import Site, SiteKind
from auto_hookpoint.core.structure import tensors_with_paths
from auto_hookpoint.errors import ResumeError, UnknownHookNameError
from auto_hookpoint.split.early_output import EarlyOutput
from auto_hookpoint.split.inputs import input_mismatch, input_shapes
from auto_hookpoint.split.stand_in import standing_in

_STACKS = (nn.ModuleList, nn.Sequential)
# Flags of HuggingFace forwards that ask for values the skipped blocks would compute.
_SKIPPED_VALUES = ("output_attentions", "output_router_logits")
_PER_LAYER_FIELDS = ("attentions", "cross_attentions", "router_logits")


@not_traced
def resume_from(
    model: Any, site: str, activation: torch.Tensor | EarlyOutput, *args: Any, **kwargs: Any
) -> Any:
    """Finish ``model(*args, **kwargs)`` from ``activation``, the output of block ``site``.

    ``activation`` is an :class:`EarlyOutput` from ``run_until`` (checked against the
    model and the inputs) or a tensor (checked for dtype, device and batch size).
    """
    core = core_of(model, "resume_from")
    if not isinstance(activation, (torch.Tensor, EarlyOutput)):
        raise TypeError(
            "resume_from takes the activation as a tensor or an EarlyOutput (from run_until, "
            f"or EarlyOutput.load(path) for a saved one); got {type(activation).__name__}"
        )
    early = activation if isinstance(activation, EarlyOutput) else None
    tensor = activation.activation if isinstance(activation, EarlyOutput) else activation
    if early is not None:
        early.check_belongs_to(model)
        if early.site != site:
            raise ResumeError(f"the EarlyOutput was split at {early.site!r}, not {site!r}")
        if early.output_path:
            raise ResumeError(
                f"the blocks of this model return a structure (the activation at {site!r} was "
                f"item {early.output_path} of it), not a plain tensor, so which values the "
                "next block needs cannot be known; resume_from needs blocks that return their "
                "hidden states as a tensor (as transformers 5 decoder layers do)"
            )
        mismatch = input_mismatch(early.inputs, input_shapes(model, args, kwargs))
        if mismatch:
            raise ResumeError(f"these are not the inputs the activation was banked for: {mismatch}")
    if site not in core.sites:
        raise UnknownHookNameError(site, core.sites)
    stack, stack_path, index = _stack_and_index(model, core.sites[site])
    blocks = list(stack.children())
    _check_dtype(blocks, index, tensor)
    _check_device(blocks[index], f"{stack_path}.{index}".lstrip("."), tensor)
    recorded = early is not None and bool(early.inputs)
    plan = _Plan(blocks[: index + 1], tensor, early, core.sites, raw=not recorded)
    _refuse_what_cannot_be_known(kwargs, plan, stack_path)
    with _resuming(plan):
        try:
            output = model(*args, **kwargs)
        except ResumeError:
            raise
        except Exception as error:
            raise ResumeError(
                f"the forward failed after resuming from {site!r} with an activation of shape "
                f"{list(tensor.shape)} {tensor.dtype}: {type(error).__name__}: {error}. "
                "The activation must be what that site produced for these same inputs."
            ) from error
    if plan.calls != [1] * len(plan.blocks):
        raise ResumeError(
            f"cannot resume exactly from {site!r}: the forward called blocks 0..{index} of its "
            f"stack {plan.calls} times instead of once each, in order, so their outputs are not "
            "simply chained"
        )
    return plan.exact_output(model, output, stack_path)


@contextlib.contextmanager
def _resuming(plan: _Plan) -> Iterator[None]:
    answers = {block: plan.answerer(position) for position, block in enumerate(plan.blocks)}
    with standing_in(answers), muted(plan.blocks):
        yield


class _Plan:
    """What blocks 0..k answer, and what they were asked, for one resume."""

    def __init__(
        self,
        blocks: list[nn.Module],
        activation: torch.Tensor,
        early: EarlyOutput | None,
        sites: Any,
        raw: bool,  # no record of the inputs it was banked for: check its batch size here
    ):
        self.blocks = blocks
        self.activation = activation
        self.raw = raw
        self.calls = [0] * len(blocks)
        self.answered: list[Any] = [None] * len(blocks)
        self.banked = [_banked_output(early, block, sites) for block in blocks[:-1]]
        self.unbanked = [i for i, tensor in enumerate(self.banked) if tensor is None]
        self._placeholder: torch.Tensor | None = None

    def answerer(self, position: int) -> Any:
        return lambda args, kwargs: self.answer(position, args, kwargs)

    def answer(self, position: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls[position] += 1
        received = args[0] if args else kwargs.get("hidden_states")
        if position == 0:
            self._check_stack_input(received)
        elif received is not self.answered[position - 1]:
            # A stack that unpacks its blocks' outputs (layer_outputs[0]) hands this block
            # something other than what the previous block answered.
            raise ResumeError(
                "the stack does not pass each block's output straight to the next block "
                "(its blocks return structures it unpacks), so it cannot be resumed exactly"
            )
        # Copies: the forward may change a block's output in place, and the banked
        # tensors must stay as they are (to resume again from the same EarlyOutput).
        if position == len(self.blocks) - 1:
            answer = self.activation.clone()
        elif self.banked[position] is not None:
            answer = self.banked[position].clone()  # type: ignore[union-attr]
        else:
            answer = self._unknown()
        self.answered[position] = answer
        return answer

    def _unknown(self) -> torch.Tensor:
        """What a skipped block whose output was not banked answers: a NotComputed tensor
        (NaN, for floats), a distinct object per block; exact_output refuses an output
        holding anything computed from one."""
        if self._placeholder is None:
            fill = float("nan") if self.activation.is_floating_point() else 0
            self._placeholder = torch.full_like(self.activation, fill)
        view = self._placeholder.view_as(self._placeholder)  # a plain view: no dispatch
        return view.as_subclass(NotComputed)

    def _check_stack_input(self, received: Any) -> None:
        """A raw tensor (no record of its inputs): its batch size must be the stack's."""
        tensor = self.activation
        if (
            self.raw
            and isinstance(received, torch.Tensor)
            and received.dim() >= 1
            and tensor.dim() >= 1
            and received.shape[0] != tensor.shape[0]
        ):
            raise ResumeError(
                f"the activation has batch size {tensor.shape[0]} (shape {list(tensor.shape)}) "
                f"but the stack's input for these inputs has {received.shape[0]} (shape "
                f"{list(received.shape)}): it was not banked for these inputs"
            )

    def exact_output(self, model: Any, output: Any, stack_path: str) -> Any:
        """``output``, refused if it holds a value only a skipped block could give, with
        HuggingFace caches (incomplete: blocks 0..k computed no keys or values) dropped."""
        if any(isinstance(self.answered[i], NotComputed) for i in self.unbanked):
            for path, tensor in tensors_with_paths(output):
                if isinstance(tensor, NotComputed):
                    raise ResumeError(
                        f"the output holds, at {path or 'its root'}, a value computed from the "
                        f"output of a skipped block that was not banked (blocks {self.unbanked} "
                        f"of {stack_path or 'the stack'}); bank them with run_until(..., "
                        "bank=[...]) to resume exactly"
                    )
        if isinstance(output, MutableMapping):  # a ModelOutput: its fields say what it holds
            caches = []
            for key, value in output.items():
                if value is None:
                    continue
                if key in _PER_LAYER_FIELDS:
                    raise ResumeError(_per_layer_message(key, len(self.blocks) - 1))
                if key == "hidden_states" and self.unbanked:
                    raise ResumeError(_hidden_states_message(self, stack_path))
                if _is_cache(value):
                    caches.append(key)
            for key in caches:
                output[key] = None
            return output
        # A tuple (return_dict=False) does not name its items: ask the config instead.
        config = getattr(model, "config", None)
        for flag in _SKIPPED_VALUES:
            if getattr(config, flag, False):
                raise ResumeError(
                    _per_layer_message(flag.removeprefix("output_"), len(self.blocks) - 1)
                )
        if self.unbanked and getattr(config, "output_hidden_states", False):
            raise ResumeError(_hidden_states_message(self, stack_path))
        if isinstance(output, tuple) and any(_is_cache(item) for item in output):
            items = [None if _is_cache(item) else item for item in output]
            return type(output)(items) if type(output) is not tuple else tuple(items)
        return output


class NotComputed(torch.Tensor):
    """The output of a skipped block that was not banked. Through ``__torch_function__``
    everything computed from it (a copy, a stack, a device move) is a NotComputed too,
    so an output that depends on it is found and refused."""


def _banked_output(early: EarlyOutput | None, block: nn.Module, sites: Any) -> torch.Tensor | None:
    """Block ``block``'s output in ``early``, under its own site or an alias."""
    if early is None:
        return None
    for name, tensor in early.activations.items():
        site = sites.get(name)
        if site is not None and site.kind is SiteKind.OUTPUT and site.module is block:
            return tensor
    return None


def _refuse_what_cannot_be_known(kwargs: dict[str, Any], plan: _Plan, stack_path: str) -> None:
    last = len(plan.blocks) - 1
    if kwargs.get("past_key_values") is not None:
        raise ResumeError(
            f"resume_from cannot continue from past_key_values: blocks 0..{last} are not "
            "computed, so their keys and values would be missing from the cache (and the "
            "cache you passed would be left half-updated). Resume without it."
        )
    if kwargs.get("use_cache") is True:
        raise ResumeError(
            f"resume_from cannot return a KV cache: blocks 0..{last} are not computed, so "
            "their keys and values are not known. Call without use_cache=True (the output's "
            "past_key_values is then None)."
        )
    for flag in _SKIPPED_VALUES:
        if kwargs.get(flag):
            raise ResumeError(_per_layer_message(flag.removeprefix("output_"), last))
    if plan.unbanked and kwargs.get("output_hidden_states"):
        raise ResumeError(_hidden_states_message(plan, stack_path))


def _per_layer_message(what: str, last: int) -> str:
    return (
        f"resume_from cannot return {what}: blocks 0..{last} are not computed, so theirs are "
        f"not known. Call without output_{what}=True (and without it in the model's config)."
    )


def _hidden_states_message(plan: _Plan, stack_path: str) -> str:
    names = [f"{stack_path}.{i}.hook_point".lstrip(".") for i in plan.unbanked]
    return (
        f"resume_from cannot return hidden_states: the outputs of blocks {plan.unbanked} are "
        f"not computed and were not banked. Bank them, run_until(site, ..., bank={names}), "
        "and resume from that EarlyOutput, or call without output_hidden_states."
    )


def _is_cache(value: Any) -> bool:
    # By class name, so that this module does not import transformers.
    cls = type(value)
    known = _CACHE_CLASSES.get(cls)
    if known is None:
        known = _CACHE_CLASSES[cls] = any(base.__name__ == "Cache" for base in cls.__mro__)
    return known


_CACHE_CLASSES: dict[type, bool] = {}


# The stack of each block-output site (finding it costs more than a small forward).
_STACK_OF: weakref.WeakKeyDictionary[Site, tuple[nn.Module, str, int]] = weakref.WeakKeyDictionary()


def _stack_and_index(model: nn.Module, site: Site) -> tuple[nn.Module, str, int]:
    found = _STACK_OF.get(site)
    if found is None:
        found = _STACK_OF[site] = _find_stack(model, site)
    return found


def _find_stack(model: nn.Module, site: Site) -> tuple[nn.Module, str, int]:
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
    return parent, parent_path, int(last)


def _block_sites(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for path, module in model.named_modules():
        if isinstance(module, _STACKS):
            for name, block in module.named_children():
                yield f"{path}.{name}.hook_point" if path else f"{name}.hook_point", block


def _check_dtype(blocks: list[nn.Module], index: int, activation: torch.Tensor) -> None:
    after = index + 1 < len(blocks)
    block = blocks[index + 1 if after else index]
    param = next((p for p in tensors_of(block, buffers=False) if p.is_floating_point()), None)
    if param is not None and activation.is_floating_point() and activation.dtype != param.dtype:
        raise ResumeError(
            f"the activation is {activation.dtype} but "
            f"{'the blocks after it compute' if after else 'its block computes'} in "
            f"{param.dtype} (the dtype differs); convert it with .to({param.dtype}) first"
        )


def _check_device(block: nn.Module, path: str, activation: torch.Tensor) -> None:
    device = execution_device(block)
    if device is None:
        return
    here = activation.device
    same = here.type == device.type and (
        here.index is None or device.index is None or here.index == device.index
    )
    if not same:
        raise ResumeError(
            f"the activation is on {here} but block {path!r} computes on {device} (the device "
            f"differs); move it with .to({str(device)!r}) first (EarlyOutput.load(path, "
            f"device={str(device)!r}) reads it there)"
        )
