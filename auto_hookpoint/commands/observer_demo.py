"""The observers run on a model, for ``auto-hookpoint memory|trace|nonfinite``."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from auto_hookpoint.commands import CommandError, load_causal_lm


def _inputs(tokenizer: Any, text: str) -> dict[str, torch.Tensor]:
    return dict(tokenizer(text, return_tensors="pt"))


def run_trace(model_dir: Path | None, text: str, out: Path) -> None:
    from auto_hookpoint.observers.trace import trace

    model, tokenizer, label = load_causal_lm(model_dir)
    inputs = _inputs(tokenizer, text)
    with torch.no_grad():
        model(**inputs)  # warm up, so the trace shows steady-state times
        with trace(model) as recorded:
            model.generate(inputs["input_ids"], max_new_tokens=4, min_new_tokens=4, do_sample=False)
    recorded.save_chrome_trace(out)
    print(f"{label}: {len(recorded.events)} module calls over generate(4 tokens)\n")
    print(recorded.table(15))
    print(f"\nChrome trace written to {out} (open it in Perfetto or chrome://tracing)")


def run_memory(model_dir: Path | None, text: str, out: Path) -> None:
    from auto_hookpoint.observers.memory import memory_profile

    model, tokenizer, label = load_causal_lm(model_dir)
    with torch.no_grad(), memory_profile(model) as mem:
        model(**_inputs(tokenizer, text))
    print(f"{label}:\n{mem.table(15)}")
    try:
        mem.save_bar_chart(out)
        print(f"\nbar chart written to {out}")
    except ImportError as error:
        print(f"\n(no chart: {error})")


def run_nonfinite(model_dir: Path | None, text: str, poison: str | None) -> None:
    from auto_hookpoint.observers.numerics import find_nonfinite

    model, tokenizer, label = load_causal_lm(model_dir)
    if poison:
        with torch.no_grad():
            _weight_of(model, poison)[0, 0] = float("nan")
        print(f"{label}: set one weight of {poison!r} to NaN")
    with find_nonfinite(model) as found:
        output = model(**_inputs(tokenizer, text), labels=_inputs(tokenizer, text)["input_ids"])
        output.loss.backward()
    if not found.findings:
        print(f"{label}: no NaN or Inf, forward or backward")
    for finding in found.findings[:2]:
        print(f"first {finding.direction} producer: {finding}")


def _weight_of(model: Any, path: str) -> torch.Tensor:
    """The ``weight`` parameter of the module at ``path``, or a CommandError naming the
    closest module paths that have one."""
    with_weight = [
        p for p, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    if path not in with_weight:
        close = difflib.get_close_matches(path, with_weight, n=3, cutoff=0.5) or with_weight[:3]
        raise CommandError(
            f"--poison {path!r}: the model has no module of that path with a weight; "
            f"give the path of one that has, such as {', '.join(map(repr, close))}"
        )
    return model.get_submodule(path).weight  # type: ignore[no-any-return]
