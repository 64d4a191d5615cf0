"""Hooks and observers across ``generate()``: the decoding step, and a generation trace.

    with generation_trace(model, tokenizer, k=5) as gen:
        out = model.generate(ids, max_new_tokens=5)
    for step in gen.steps:      # step index, prefill or decode, chosen token, top-k, entropy
        print(step)

Inside the ``with`` block, ``current_step()`` tells a hook which forward call of the
generation it is in: ``GenerationStep(index=0, prefill=True)`` for the prompt, then
``index=1, 2, ...`` (``prefill=False``) for each decoding step. The step is counted per
thread or task, from the model's root forward calls.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site, site_name
from auto_hookpoint.core.structure import Path


@dataclass(frozen=True)
class GenerationStep:
    index: int
    prefill: bool


_STEP: ContextVar[GenerationStep | None] = ContextVar(
    "auto_hookpoint_generation_step", default=None
)


def current_step() -> GenerationStep | None:
    """The step of the generation being traced in this context, or None outside one."""
    return _STEP.get()


@dataclass
class StepRecord:
    index: int
    prefill: bool
    positions: int  # tokens fed to the model at this step
    top_k: list[tuple[str, float]]  # next-token candidates and their probabilities
    entropy: float  # of the next-token distribution, in nats
    chosen: str | None = None  # the token generate() picked (known once the next step starts)
    chosen_id: int | None = None

    def __str__(self) -> str:
        kind = "prefill" if self.prefill else "decode"
        top = ", ".join(f"{t!r} {p:.2f}" for t, p in self.top_k)
        return (
            f"step {self.index} ({kind}, {self.positions} tokens): chose {self.chosen!r}; "
            f"top: {top}; entropy {self.entropy:.3f}"
        )


@dataclass
class GenerationTrace(Observer):
    tokenizer: Any = None
    k: int = 5
    steps: list[StepRecord] = field(default_factory=list)
    _tokens: list[torch.Tensor] = field(default_factory=list)

    def on_enter(self, site: Site, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        index = len(self.steps)
        _STEP.set(GenerationStep(index, index == 0))
        if self.steps and isinstance(ids, torch.Tensor):  # this step's input is the last choice
            self._choose(self.steps[-1], int(ids[0, -1]))
        self._positions = ids.shape[-1] if isinstance(ids, torch.Tensor) else 0

    def on_output(self, site: Site, tensor: Any, path: Path = ()) -> None:
        logits = tensor[0, -1].float() if tensor.dim() == 3 else tensor[0].float()
        probs = torch.softmax(logits, dim=-1)
        top = torch.topk(probs, min(self.k, probs.numel()))
        entropy = float(-(probs * torch.log(probs.clamp_min(1e-30))).sum())
        index = len(self.steps)
        self.steps.append(
            StepRecord(
                index,
                index == 0,
                self._positions,
                [
                    (self._text(int(i)), float(p))
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
                entropy if math.isfinite(entropy) else float("nan"),
            )  # fmt: skip
        )

    def finish(self, sequences: torch.Tensor) -> None:
        """Fill in the last step's chosen token from generate()'s output."""
        if self.steps and self.steps[-1].chosen_id is None:
            self._choose(self.steps[-1], int(sequences[0, -1]))

    def _choose(self, step: StepRecord, token: int) -> None:
        step.chosen_id, step.chosen = token, self._text(token)

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else str(token)


@contextlib.contextmanager
def generation_trace(
    model: nn.Module, tokenizer: Any = None, k: int = 5
) -> Iterator[GenerationTrace]:
    """Trace the next-token choice of every forward call (generation step) in this context.

    Watches the root output (the logits: the first tensor of a causal LM's output)."""
    core = core_of(model, "generation_trace")
    if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(
            "generation_trace's tokenizer decodes the chosen tokens: pass the model's "
            f"tokenizer (with a decode method) or None; got {type(tokenizer).__name__}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (top tokens recorded per step) is a whole number >= 1, not {k!r}")
    recorder = GenerationTrace(tokenizer, k)
    token = _STEP.set(None)
    try:
        with core.observing(recorder, [site_name("")]):
            yield recorder
    finally:
        _STEP.reset(token)
