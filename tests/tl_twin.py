"""TransformerLens' own HookedTransformer, built from the same HF weights: the oracle.

For each family: a tiny HF model from a config (seeded weights) and its *twin*, a
``HookedTransformer`` made the way ``HookedTransformer.from_pretrained_no_processing``
makes one, without the hub: TransformerLens' config conversion
(``loading.get_pretrained_model_config`` on the saved HF config) and TransformerLens'
weight converter for the family (``loading.get_pretrained_state_dict`` with
``hf_model=``), loaded with no weight processing (``fold_ln``, ``center_writing_weights``,
``center_unembed``, ``fold_value_biases`` all off). TransformerLens derives some
families' configs from the official model name alone (Gemma, Phi's rotary fraction in
transformers 5, OLMo-2); for those the same fields are set here from the HF config, as
its branch for the official checkpoints sets them.

The tiny configs exercise what differs between families: grouped-query attention,
sliding windows shorter than the test sequences, partial rotary, parallel blocks,
Gemma-2's sandwich norms and soft caps, OPT's position offset, GPT-Neo's local layers.
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from torch import nn

VOCAB = 96
SEQ = 7  # longer than the sliding windows below
_BASE = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}


@dataclass(frozen=True)
class Family:
    config: Callable[[], Any]  # the HF config
    # TransformerLens config fields set from the HF config where TransformerLens derives
    # them from the official model name; None: TransformerLens' own conversion.
    tl_config: Callable[[Any], dict[str, Any]] | None = None
    tabled: bool = True  # in the adapter's table (else: detected)

    def build(self, seed: int = 0, vocab: int | None = None) -> nn.Module:
        """The HF model, seeded; ``vocab`` widens it for a real tokenizer."""
        try:
            config = self.config()
        except Exception as error:
            if type(error).__module__.startswith("huggingface_hub"):  # an old transformers
                pytest.skip(f"transformers {tf.__version__} cannot build this config: {error}")
            raise
        if vocab is not None:
            config.vocab_size = vocab
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config).eval()
        # Random init leaves norms at 1 and biases at 0; perturb them so that a
        # weight read from the wrong place cannot agree by accident.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name or "ln" in name.split(".")[-2] or name.endswith("bias"):
                    param.add_(torch.randn_like(param) * 0.1)
        return model


def _gemma(h: Any) -> dict[str, Any]:
    return {
        "d_model": h.hidden_size, "d_head": h.head_dim, "n_heads": h.num_attention_heads,
        "d_mlp": h.intermediate_size, "n_layers": h.num_hidden_layers,
        "n_ctx": h.max_position_embeddings, "eps": h.rms_norm_eps, "d_vocab": h.vocab_size,
        "act_fn": getattr(h, "hidden_activation", None) or h.hidden_act,
        "normalization_type": "RMS",
        "rotary_base": h.rope_parameters.get("rope_theta"), "rotary_dim": h.head_dim,
        "positional_embedding_type": "rotary", "use_attn_scale": True,
        "n_key_value_heads": h.num_key_value_heads, "gated_mlp": True, "final_rms": True,
        "original_architecture": h.architectures[0],
    }  # fmt: skip


def _gemma2(h: Any) -> dict[str, Any]:
    return {
        **_gemma(h),
        "window_size": h.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local", "global"] * (h.num_hidden_layers // 2),
        "attn_scores_soft_cap": h.attn_logit_softcapping,
        "output_logits_soft_cap": h.final_logit_softcapping,
        "use_normalization_before_and_after": True,
        "attn_scale": h.query_pre_attn_scalar**0.5,
    }


def _phi(h: Any) -> dict[str, Any]:
    d_head = h.hidden_size // h.num_attention_heads
    return {
        "d_model": h.hidden_size, "d_head": d_head, "n_heads": h.num_attention_heads,
        "d_mlp": h.intermediate_size, "n_layers": h.num_hidden_layers,
        "n_ctx": h.max_position_embeddings, "eps": h.layer_norm_eps, "d_vocab": h.vocab_size,
        "act_fn": h.hidden_act, "normalization_type": "LN", "positional_embedding_type": "rotary",
        "rotary_base": h.rope_parameters["rope_theta"], "use_attn_scale": True,
        "parallel_attn_mlp": True, "default_prepend_bos": False,
        "rotary_dim": round(h.rope_parameters["partial_rotary_factor"] * d_head),
        "original_architecture": h.architectures[0],
    }  # fmt: skip


def _gemma3(h: Any) -> dict[str, Any]:
    local = {"sliding_attention": "local", "full_attention": "global"}
    return {
        **_gemma(h),
        "rotary_base": h.rope_parameters["full_attention"]["rope_theta"],
        "rotary_base_local": h.rope_parameters["sliding_attention"]["rope_theta"],
        "window_size": h.sliding_window,
        "use_local_attn": True,
        "attn_types": [local[t] for t in h.layer_types],
        "use_normalization_before_and_after": True,
        "use_qk_norm": True,
    }


def _olmo2(h: Any) -> dict[str, Any]:
    return {
        "d_model": h.hidden_size, "d_head": h.hidden_size // h.num_attention_heads,
        "n_heads": h.num_attention_heads, "d_mlp": h.intermediate_size,
        "n_layers": h.num_hidden_layers, "n_ctx": h.max_position_embeddings,
        "eps": h.rms_norm_eps, "d_vocab": h.vocab_size, "act_fn": h.hidden_act,
        "normalization_type": "RMS", "rotary_base": h.rope_parameters["rope_theta"],
        "attn_types": ["global"] * h.num_hidden_layers, "positional_embedding_type": "rotary",
        "gated_mlp": True, "original_architecture": h.architectures[0],
    }  # fmt: skip


FAMILIES: dict[str, Family] = {
    "gpt2": Family(lambda: tf.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_ctx=64)),
    "gpt_neo": Family(lambda: tf.GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]], window_size=4)),
    "opt": Family(lambda: tf.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32)),
    "gpt_neox": Family(lambda: tf.GPTNeoXConfig(**_BASE)),
    "llama": Family(lambda: tf.LlamaConfig(**_BASE, num_key_value_heads=2)),
    "mistral": Family(lambda: tf.MistralConfig(**_BASE, num_key_value_heads=2, sliding_window=4)),
    "qwen2": Family(lambda: tf.Qwen2Config(**_BASE, num_key_value_heads=2)),
    "mixtral": Family(lambda: tf.MixtralConfig(
        **_BASE, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "phi": Family(lambda: tf.PhiConfig(**_BASE, partial_rotary_factor=0.5), _phi),
    "phi3": Family(lambda: tf.Phi3Config(**_BASE, num_key_value_heads=2, pad_token_id=0)),
    "gemma": Family(lambda: tf.GemmaConfig(**_BASE, num_key_value_heads=2, head_dim=8), _gemma),
    "gemma2": Family(lambda: tf.Gemma2Config(
        **_BASE, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0), _gemma2),
    # Not in the adapter's table: detected.
    "gemma3": Family(lambda: tf.Gemma3TextConfig(
        **_BASE, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention"]), _gemma3, tabled=False),
    "olmo2": Family(lambda: tf.Olmo2Config(**_BASE), _olmo2, tabled=False),
    "qwen3": Family(lambda: tf.Qwen3Config(
        **_BASE, num_key_value_heads=2, head_dim=8), tabled=False),
}  # fmt: skip


def build(family: str, seed: int = 0, vocab: int | None = None) -> nn.Module:
    return FAMILIES[family].build(seed, vocab)


@functools.cache
def _saved_tokenizer(kind: str) -> str:
    """A folder holding a real tokenizer, trained offline on the Python docs:
    ``"bos"`` prepends its own ``<s>`` and pads with ``<pad>`` (the demo tokenizer);
    ``"gpt2"`` is like GPT-2's and Pythia's: no BOS of its own, one special token that
    is BOS, EOS and (once a model sets it) pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from auto_hookpoint.demo import demo_corpus, demo_tokenizer

    if kind == "bos":
        tokenizer = demo_tokenizer()
    else:
        special = "<|endoftext|>"
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=[special],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        core.train_from_iterator(demo_corpus(), trainer=trainer)
        tokenizer = tf.PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token=special, eos_token=special, unk_token=special
        )
    folder = tempfile.mkdtemp(prefix="tokenizer")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    tokenizer.save_pretrained(folder)
    return folder


def tokenizer(kind: str) -> Any:
    """A fresh copy of a real tokenizer (each model mutates its own: padding side, pad)."""
    return tf.AutoTokenizer.from_pretrained(_saved_tokenizer(kind))


# The TransformerLens release the parity suite was written against: an older one (CI
# tests the lowest declared) may not convert every family's current HF layout.
ORACLE_VERSION = (3, 9)


def twin(hf_model: nn.Module, tokenizer: Any = None) -> Any:
    """TransformerLens' HookedTransformer from ``hf_model``'s weights; see the module doc.

    With a TransformerLens older than ORACLE_VERSION that cannot build the twin, the test
    is skipped, saying so; with ORACLE_VERSION or newer a failure is a failure."""
    try:
        return _twin(hf_model, tokenizer)
    except Exception as error:
        installed = tuple(int(p) for p in version("transformer_lens").split(".")[:2])
        if installed >= ORACLE_VERSION:
            raise
        pytest.skip(
            f"TransformerLens {version('transformer_lens')} cannot build the "
            f"{type(hf_model).__name__} twin ({type(error).__name__}: {error})"
        )


def _twin(hf_model: nn.Module, tokenizer: Any) -> Any:
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    architecture = type(hf_model).__name__
    family = next(
        f for f in FAMILIES.values() if type(f.config()).__name__ == type(hf_model.config).__name__
    )
    with tempfile.TemporaryDirectory(prefix="twin") as folder:
        config = type(hf_model.config).from_dict(hf_model.config.to_dict())
        config.architectures = [architecture]
        config.save_pretrained(folder)
        if family.tl_config is None:
            cfg = loading.get_pretrained_model_config(
                folder, fold_ln=False, device="cpu", dtype=torch.float32
            )
        else:
            fields = {
                "model_name": "twin", "init_weights": False, "dtype": torch.float32,
                "device": "cpu", "default_prepend_bos": True, **family.tl_config(config),
            }  # fmt: skip
            cfg = HookedTransformerConfig.from_dict(fields)
        state_dict = loading.get_pretrained_state_dict(folder, cfg, hf_model=hf_model)
    cfg.tokenizer_name = None  # the folder is gone; the tokenizer is set below
    model = HookedTransformer(cfg, None, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    if tokenizer is not None:
        model.set_tokenizer(tokenizer, default_padding_side=tokenizer.padding_side)
    return model.eval()


def parity_table() -> str:
    """The parity table of docs/adapter.md: per TransformerLens name (every layer) and
    family, the largest absolute difference between the adapter's cache and the twin's,
    over a batch, left padding and right padding (real positions); "n/o": TransformerLens
    has the name, the adapter does not offer it; blank: TransformerLens has no such name.
    Run ``python tests/tl_twin.py`` to print it."""
    from auto_hookpoint.adapter import HookedTransformerAdapter

    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    left, right = torch.ones(2, SEQ, dtype=torch.long), torch.ones(2, SEQ, dtype=torch.long)
    left[0, :3], right[1, -2:] = 0, 0
    columns: dict[str, dict[str, str]] = {}
    for family in FAMILIES:
        model = build(family)
        oracle, adapter = twin(model), HookedTransformerAdapter(model, None)
        worst: dict[str, float] = {}
        missing: set[str] = set()
        for mask in (torch.ones(2, SEQ, dtype=torch.long), left, right):
            with torch.no_grad():
                _, ours = adapter.run_with_cache(tokens, attention_mask=mask)
                _, theirs = oracle.run_with_cache(tokens, attention_mask=mask)
            for name in theirs.keys():
                generic = re.sub(
                    r"experts\.\d+\.", "experts.j.", re.sub(r"blocks\.\d+\.", "blocks.i.", name)
                )
                if name not in ours.cache_dict:
                    missing.add(generic)
                    continue
                a, b = _real(name, ours[name], mask), _real(name, theirs[name], mask)
                finite = torch.isfinite(b)
                difference = (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0
                worst[generic] = max(worst.get(generic, 0.0), difference)
        columns[family] = {n: f"{d:.0e}" for n, d in worst.items()} | dict.fromkeys(missing, "n/o")
    names = sorted({n for column in columns.values() for n in column}, key=_name_order)
    lines = ["| name | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        cells = [columns[f].get(name, "") for f in columns]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _real(name: str, tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        tensor = tensor.transpose(1, 2)
    elif tensor.shape[0] != mask.shape[0]:
        tensor = tensor.reshape(*mask.shape, -1, tensor.shape[-1])
    return tensor[mask.bool()]


_ORDER = ["hook_embed", "hook_pos_embed", "hook_resid_pre", "ln1.", "attn.hook_q", "attn.hook_k",
          "attn.hook_v", "attn.q_norm", "attn.k_norm", "hook_rot", "hook_attn_scores",
          "hook_pattern", "hook_z", "ln1_post", "hook_attn_out", "hook_resid_mid", "ln2.",
          "mlp.", "ln2_post", "hook_mlp_out", "hook_resid_post", "ln_final", "unembed"]  # fmt: skip


def _name_order(name: str) -> tuple[int, str]:
    return next((i for i, key in enumerate(_ORDER) if key in name), len(_ORDER)), name


if __name__ == "__main__":  # this checkout's auto_hookpoint, whatever is installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(parity_table())
