"""The model and inputs that ``auto-hookpoint serve`` and ``plan`` work on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_for_split(model_dir: Path | None) -> tuple[Any, str]:
    """(hooked model, label): the folder's model, or the seeded demo Llama."""
    if model_dir is None:
        from auto_hookpoint.demo import demo_model
        from auto_hookpoint.hooked import auto_hook

        return auto_hook(demo_model()), "the demo LlamaForCausalLM"
    from auto_hookpoint.commands import CommandError, not_loadable
    from auto_hookpoint.remote.loading import load_model_dir

    try:
        model = load_model_dir(model_dir)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(not_loadable(model_dir, error, causal=False)) from error
    return model, f"{type(model).__name__} from {model_dir}"


def sample_inputs(model: Any, batch: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of the shape to plan for: token ids for a language model, pixels for an
    image model (seeded random values: the costs depend on shapes, not values)."""
    config = getattr(model, "config", None)
    generator = torch.Generator().manual_seed(seed)
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        return {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=generator)}
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    if size and channels:
        side = size if isinstance(size, int) else size[0]
        return {"pixel_values": torch.randn(batch, channels, side, side, generator=generator)}
    raise SystemExit(
        f"auto-hookpoint plan: cannot make inputs for a {type(model).__name__} (its config has "
        "neither vocab_size nor image_size); profile it from Python with profile_split(model, ...)"
    )
