"""A small real HuggingFace model and tokenizer that need no network.

The model is a ``LlamaForCausalLM`` built from a config (random weights); the tokenizer
is a byte-level BPE trained in about a second on the Python documentation topics that
ship with CPython (``pydoc_data.topics``), so examples and the CLI show real text.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}


def demo_corpus() -> list[str]:
    """Paragraphs of English prose from the Python docs bundled with CPython."""
    from pydoc_data.topics import topics

    paragraphs = (p.strip() for text in topics.values() for p in text.split("\n\n"))
    return [p for p in paragraphs if len(p) > 40]


@functools.cache
def demo_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on :func:`demo_corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(demo_corpus(), trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def demo_config(
    hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, vocab_size: int = 1024
) -> LlamaConfig:
    tokenizer = demo_tokenizer(vocab_size)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def demo_model(seed: int = 0, **config: int) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(demo_config(**config)).eval()


def load_causal_lm(model_dir: Path | None) -> tuple[Any, Any, str]:
    """(hooked model, tokenizer, label): the demo Llama, or a local HF causal LM folder."""
    from auto_hookpoint.hooked import auto_hook

    if model_dir is None:
        return auto_hook(demo_model()), demo_tokenizer(), "demo LlamaForCausalLM"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return auto_hook(model), tokenizer, f"{type(model).__name__} from {model_dir}"
