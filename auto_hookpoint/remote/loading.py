"""Loading a local HuggingFace model folder the same way on the edge and on the server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from auto_hookpoint.hooked import auto_hook


def load_model_dir(model_dir: str | os.PathLike[str], dtype: Any = None) -> Any:
    """The model saved in ``model_dir`` (``save_pretrained``), hooked, in eval mode.

    The class is the one the folder was saved from (``config.architectures[0]``, e.g.
    ``LlamaForCausalLM``), so both halves of a split build the very same model; a folder
    without one gets ``AutoModel``. Nothing is downloaded. ``dtype``: as
    ``from_pretrained``'s (None: the library's default).
    """
    import transformers

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a HuggingFace model folder (no config.json); save one with "
            "model.save_pretrained(folder)"
        )
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    names = config.architectures or []
    model_class = getattr(transformers, names[0], None) if names else None
    if model_class is None:
        model_class = transformers.AutoModel
    options = {"dtype": dtype} if dtype is not None else {}
    model = model_class.from_pretrained(folder, local_files_only=True, **options)
    return auto_hook(model.eval())
