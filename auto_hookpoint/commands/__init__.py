"""What the ``auto-hookpoint`` subcommands run: each feature shown end to end on the demo
model or a local model folder. The top layer: it may use everything below it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CommandError(Exception):
    """Bad input found once the command runs (a model folder that does not load, a layer
    the model does not have, ...). The CLI prints the message, which names the problem
    and the fix, on one line and exits with status 1."""


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def load_causal_lm(model_dir: Path | None) -> tuple[Any, Any, str]:
    """:func:`auto_hookpoint.demo.load_causal_lm`, with a CommandError saying what is
    wrong with a folder that does not hold a causal LM and its tokenizer."""
    from auto_hookpoint.demo import load_causal_lm as load

    try:
        return load(model_dir)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(not_loadable(model_dir, error, causal=True)) from error


def not_loadable(model_dir: Path | None, error: BaseException, causal: bool) -> str:
    model_type = _model_type(model_dir)
    if causal and model_type and "Unrecognized configuration class" in str(error):
        return (
            f"{model_dir} holds a {model_type!r} model, which is not a causal language "
            "model; this command needs one (a ...ForCausalLM folder), while "
            "`auto-hookpoint sites MODEL_DIR` takes any model"
        )
    return (
        f"could not load the model in {model_dir} ({type(error).__name__}: "
        f"{first_line(error)}); pass a folder written by save_pretrained(), with the "
        "model's config, weights and tokenizer"
    )


def _model_type(model_dir: Path | None) -> str | None:
    import json

    try:
        return str(json.loads((Path(str(model_dir)) / "config.json").read_text())["model_type"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_any_model(model_dir: Path) -> tuple[Any, Any, str]:
    """(model, tokenizer, label) for any local HF model folder, AutoModel for those that
    are not causal LMs; a CommandError if it does not load."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
        auto_class = AutoModelForCausalLM if causal else AutoModel
        model = auto_class.from_pretrained(model_dir, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(not_loadable(model_dir, error, causal=False)) from error
    return model, tokenizer, f"{type(model).__name__} from {model_dir}"
