"""Split computing, shown end to end: the first half here, the second in another process.

Used by ``auto-hookpoint split`` and ``examples/split_computing.py``. The second
process rebuilds the same model (the seeded demo model, or the same local folder),
loads the EarlyOutput file, resumes, and writes its logits with safetensors.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from auto_hookpoint.commands import CommandError, load_causal_lm


def split_and_finish_elsewhere(
    model_dir: Path | None, text: str, layer: int, workdir: Path | None = None
) -> bool:
    """Split at block ``layer``, finish in a second process, print and return whether the
    logits equal those of the un-split forward."""
    from auto_hookpoint.split.stacks import block_site

    model, tokenizer, label = load_causal_lm(model_dir)
    inputs = dict(tokenizer(text, return_tensors="pt"))
    try:
        site = block_site(model, layer)
    except IndexError as error:
        raise CommandError(f"--layer {layer}: {error}; pick a block from 0 on") from error
    workdir = workdir or Path(tempfile.mkdtemp(prefix="auto_hookpoint_split_"))
    early_file, logits_file = workdir / "early.safetensors", workdir / "logits.safetensors"
    with torch.no_grad():
        early = model.run_until(site, **inputs)
        early.save(early_file)
        print(
            f"{label}: split after {site!r}; banked {list(early.activation.shape)} -> {early_file}"
        )
        full = model(**inputs).logits
    module = "auto_hookpoint.commands.split_demo"
    command = [sys.executable, "-m", module, early_file, logits_file, text]
    if model_dir is not None:
        command.append(str(model_dir))
    subprocess.run([str(c) for c in command], check=True)
    finished = load_file(logits_file)["logits"]
    same = torch.equal(finished, full)
    verdict = "bit-identical to" if same else "DIFFERENT from"
    shape = list(finished.shape)
    print(f"second process finished the forward: logits {shape} {verdict} the un-split forward")
    return same


def _finish(early_file: str, logits_file: str, text: str, model_dir: str | None = None) -> None:
    from auto_hookpoint.split import EarlyOutput

    model, tokenizer, _ = load_causal_lm(Path(model_dir) if model_dir else None)
    early = EarlyOutput.load(early_file)
    with torch.no_grad():
        output = model.resume_from(early.site, early, **tokenizer(text, return_tensors="pt"))
    save_file({"logits": output.logits.contiguous()}, logits_file)
    print(f"  (process 2) resumed from {early.site!r} without recomputing blocks before it")


if __name__ == "__main__":
    _finish(*sys.argv[1:])
