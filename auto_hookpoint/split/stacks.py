"""Finding a model's block stack (the decoder layers of an HF LM, an nn.Sequential)."""

from __future__ import annotations

from torch import nn

from auto_hookpoint.core.sites import site_name


def block_stack(model: nn.Module) -> str:
    """The path of the longest ModuleList or Sequential in ``model`` ('' for the root).

    For HuggingFace language models this is the decoder layer stack
    (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ...).
    """
    stacks = [
        (len(module._modules), path)
        for path, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential))
    ]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no ModuleList or Sequential of blocks")
    return max(stacks, key=lambda pair: pair[0])[1]


def block_site(model: nn.Module, index: int) -> str:
    """The site name of block ``index`` of the model's stack (negative counts from the end)."""
    stack = block_stack(model)
    size = len(model.get_submodule(stack)._modules)
    if not -size <= index < size:
        raise IndexError(f"the stack {stack!r} has {size} blocks; there is no block {index}")
    return site_name(f"{stack}.{index % size}" if stack else str(index % size))
