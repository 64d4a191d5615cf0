"""Code written for the original Auto_HookPoint 0.6 runs with `Auto_HookPoint` replaced by
`auto_hookpoint` in its imports, and means the same (docs/migration.md lists what differs).

Each test is written the way the original README and examples write it: the same
names, imports and call forms, on tiny models built from configs (where the original
loaded a hub model by name, a tiny one is saved to a temporary folder and its path is
the name).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformers import (
    AutoConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from auto_hookpoint.demo import demo_corpus, demo_tokenizer


# ----------------------------------------------------------------- the README's auto_hook
def test_readme_decorator_lists_the_same_hook_points_and_unwraps() -> None:
    from auto_hookpoint import auto_hook

    @auto_hook
    class MyModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(10, 10)

        def forward(self, x):
            return self.fc1(x)

    model = MyModel()
    assert [name for name, _ in model.hook_dict.items()] == ["hook_point", "fc1.hook_point"]
    assert all(isinstance(point, HookPoint) for point in model.hook_dict.values())
    x = torch.randn(3, 10)
    _, cache = model.run_with_cache(x)
    assert torch.equal(cache["fc1.hook_point"], model.fc1(x))

    orig_model = model.unwrap()  # get back the original model
    assert type(orig_model) is MyModel.unwrap() and not hasattr(orig_model, "hook_dict")
    assert torch.equal(orig_model(x), cache["hook_point"])


class AutoEncoder(nn.Module):
    """The README's autoencoder: a model made of raw parameters only."""

    def __init__(self, cfg):
        super().__init__()
        d_hidden = cfg["d_mlp"] * cfg["dict_mult"]
        d_mlp = cfg["d_mlp"]
        dtype = torch.float32
        torch.manual_seed(cfg["seed"])
        self.W_enc = nn.Parameter(
            torch.nn.init.kaiming_uniform_(torch.empty(d_mlp, d_hidden, dtype=dtype))
        )
        self.W_dec = nn.Parameter(
            torch.nn.init.kaiming_uniform_(torch.empty(d_hidden, d_mlp, dtype=dtype))
        )
        self.b_enc = nn.Parameter(torch.zeros(d_hidden, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_mlp, dtype=dtype))

    def forward(self, x):
        x_cent = x - self.b_dec
        acts = torch.relu(x_cent @ self.W_enc + self.b_enc)
        x_reconstruct = acts @ self.W_dec + self.b_dec
        return x_reconstruct


AE_CFG = {"d_mlp": 10, "dict_mult": 10, "l1_coeff": 10, "seed": 1}


def test_readme_autoencoder_parameter_hooks_run_with_hooks_and_typing_cast() -> None:
    from auto_hookpoint import auto_hook

    autoencoder = auto_hook(AutoEncoder(AE_CFG))
    # the README's comment, in its order
    assert list(autoencoder.hook_dict) == [
        "hook_point", "W_enc.hook_point", "W_dec.hook_point", "b_enc.hook_point",
        "b_dec.hook_point",
    ]  # fmt: skip

    input_kwargs = {"x": torch.randn(10, 10)}
    seen: list[tuple[str, tuple[int, ...]]] = []

    def hook_fn(x, hook=None, hook_name=None):
        seen.append((hook_name, tuple(x.shape)))
        return x

    out = autoencoder.run_with_hooks(
        **input_kwargs,
        fwd_hooks=[
            (hook_name, partial(hook_fn, hook_name=hook_name))
            for hook_name in autoencoder.hook_dict.keys()
        ],
    )
    assert torch.equal(out, AutoEncoder(AE_CFG)(**input_kwargs))
    # Every hook ran once. A parameter site fires with the parameter itself (0.6 fired
    # with the result of each arithmetic operation on it: docs/migration.md).
    assert sorted(seen) == sorted(
        [("hook_point", (10, 10)), ("W_enc.hook_point", (10, 100)),
         ("W_dec.hook_point", (100, 10)), ("b_enc.hook_point", (100,)),
         ("b_dec.hook_point", (10,))]
    )  # fmt: skip

    # "if you want full typing support after hooking your model"
    class Model(HookedRootModule, AutoEncoder):
        pass

    autoencoder = cast(Model, autoencoder)
    assert autoencoder.forward(**input_kwargs).shape == (10, 10)


def test_readme_manual_hook_points_are_kept() -> None:
    from auto_hookpoint import auto_hook

    @auto_hook
    class TestModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(10, 10)
            self.relu_hook_point = HookPoint()

        def forward(self, x):
            x = self.linear(x)
            x = self.relu_hook_point(torch.relu(x))
            return x

    model = TestModel()
    assert set(model.hook_dict) == {"hook_point", "linear.hook_point", "relu_hook_point"}
    x = torch.randn(2, 10)
    out = model.run_with_hooks(x, fwd_hooks=[("relu_hook_point", lambda t, hook: t * 0)])
    assert torch.equal(out, torch.zeros(2, 10))


# ----------------------------------------------------------------- check_auto_hook
def test_readme_check_auto_hook_call_form() -> None:
    from auto_hookpoint import auto_hook, check_auto_hook

    model = AutoEncoder(AE_CFG)
    hooked_model = auto_hook(model)
    input_kwargs = {"x": torch.randn(10, 10)}
    init_kwargs = {"cfg": {"d_mlp": 10, "dict_mult": 10, "l1_coeff": 10, "seed": 1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model that passes gets no warning
        report = check_auto_hook(AutoEncoder, input_kwargs, init_kwargs)
    assert report.ok, report
    assert check_auto_hook(AutoEncoder, input_kwargs, init_kwargs, strict=True).ok
    assert hooked_model.hook_dict  # the caller's model is untouched by the check
    with pytest.raises(AttributeError, match="returns its report.*auto_hook\\(model\\)"):
        report.run_with_hooks(**input_kwargs)  # 0.6 returned the hooked model


class ClearsHooksOfItsChild(nn.Module):
    """Removes the hooks of its child behind auto_hook's back: a check must fail."""

    def __init__(self):
        super().__init__()
        self.child = nn.Linear(8, 8)

    def forward(self, x):
        self.child._forward_hooks.clear()
        return self.child(x)


def test_check_auto_hook_failures_warn_without_strict_and_raise_with_it() -> None:
    from auto_hookpoint import check_auto_hook

    input_kwargs, init_kwargs = {"x": torch.randn(2, 8)}, {}
    with pytest.warns(UserWarning, match=r"check\(s\) FAILED[\s\S]*strict=True raises"):
        report = check_auto_hook(ClearsHooksOfItsChild, input_kwargs, init_kwargs)
    assert not report.ok
    try:  # 0.6 raised a plain Exception: `except Exception` still catches it
        check_auto_hook(ClearsHooksOfItsChild, input_kwargs, init_kwargs, strict=True)
    except Exception as error:
        assert "sites_fire" in str(error)
    else:
        pytest.fail("strict=True did not raise")


def test_hf_examples_check_llama_and_mamba_from_their_configs() -> None:
    from transformers.models.mamba.modeling_mamba import MambaConfig, MambaForCausalLM

    from auto_hookpoint import auto_hook
    from auto_hookpoint.check import check_auto_hook  # the examples' import path

    small_llama_config = LlamaConfig(
        vocab_size=1000, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, hidden_act="silu",
        max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, attention_dropout=0.1,
    )  # fmt: skip
    input_kwargs = {
        "input_ids": torch.randint(0, 10, (10, 10)),
        "labels": torch.randint(0, 10, (10, 10)),
        "return_dict": True,
    }
    model = LlamaForCausalLM(config=small_llama_config)
    hooked_model = auto_hook(model)
    assert "model.layers.0.self_attn.hook_point" in dict(hooked_model.hook_dict.items())
    check_auto_hook(LlamaForCausalLM, input_kwargs, {"config": small_llama_config}, strict=True)

    mamba_cfg = MambaConfig(
        vocab_size=1000, hidden_size=64, state_size=8, num_hidden_layers=4, expand=2,
        conv_kernel=2, use_bias=False, use_conv_bias=True, hidden_act="silu",
    )  # fmt: skip
    model = auto_hook(MambaForCausalLM(mamba_cfg))
    assert "backbone.layers.3.mixer.hook_point" in model.mod_dict.keys()
    check_auto_hook(MambaForCausalLM, input_kwargs, init_kwargs={"config": mamba_cfg}, strict=True)


# ----------------------------------------------------------------- the adapter
def tiny_mixtral(folder: Path) -> str:
    """What the sae_lens example loaded by name, tiny and on disk; returns its path."""
    config = MixtralConfig(
        vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    MixtralForCausalLM(config).eval().save_pretrained(folder)
    demo_tokenizer().save_pretrained(folder)
    return str(folder)


def sae_lens_example_adapter(model_name: str) -> Any:
    """The adapter of the original sae_lens example, as it wrote it."""
    from auto_hookpoint import (
        HookedTransformerAdapter,
        HookedTransformerAdapterCfg,
        HookedTransformerConfig_From_AutoConfig,
    )

    config = AutoConfig.from_pretrained(model_name)
    device = "cpu"

    def preprocess_mixtral(model, input):
        if isinstance(input, (str, list)):
            tokens = model.to_tokens(input).to(model.cfg.device)
        else:
            tokens = input.to(model.cfg.device)
        return tokens, model.hook_embed(model.embed(tokens))

    adapter_cfg = HookedTransformerAdapterCfg(
        mappings={
            "blocks": "model.layers",
            "unembed": "lm_head",
            "embed": "model.embed_tokens",
            "pos_embed": None,  # DUMMY
            "ln_final": "model.norm",
        },
        inter_block_fn=lambda x: x[0],
        create_kwargs=lambda cfg, residual: {
            "position_ids": torch.arange(residual.shape[1], device=residual.device).expand(
                residual.shape[0], -1
            )
        },
        preprocess=preprocess_mixtral,
    )
    hooked_transformer_cfg = HookedTransformerConfig_From_AutoConfig.from_auto_config(
        config,
        attn_only=True,
        normalization_type=None,
        positional_embedding_type="rotary",
    )
    return HookedTransformerAdapter(
        adapter_cfg=adapter_cfg,
        hooked_transformer_cfg=hooked_transformer_cfg,
        hf_model_name=model_name,
    ).to(device)


def test_sae_lens_example_adapter_means_what_the_adapter_means(tmp_path: Path) -> None:
    from auto_hookpoint import HookedTransformerAdapter

    model_name = tiny_mixtral(tmp_path)
    with pytest.warns(UserWarning) as caught:
        hooked_model = sae_lens_example_adapter(model_name)
    said = " ".join(str(w.message) for w in caught)
    assert "inter_block_fn, create_kwargs and preprocess are not needed" in said
    assert "says attn_only=True, normalization_type=None, but the model has" in said

    # The same names and the same facts as the adapter made without a mapping: the
    # example's attn_only=True and normalization_type=None are not taken on trust.
    plain = HookedTransformerAdapter.from_pretrained(model_name)
    assert set(hooked_model.hook_dict) == set(plain.hook_dict)
    assert hooked_model.mapping == plain.mapping
    for field in ("attn_only", "normalization_type", "d_mlp", "n_key_value_heads", "eps"):
        assert getattr(hooked_model.cfg, field) == getattr(plain.cfg, field), field

    text = ["The for statement iterates over a sequence.", "A class"]
    logits, cache = hooked_model.run_with_cache(text)
    plain_logits, plain_cache = plain.run_with_cache(text)
    assert torch.equal(logits, plain_logits) and cache.keys() == plain_cache.keys()
    # TransformerLens' own analysis reads the cfg: the decomposition (with the MLPs)
    # adds up to the residual stream, and the final norm is applied.
    stack = cache.decompose_resid(layer=-1, mode="all", return_labels=False)
    assert torch.allclose(stack.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5)
    scaled = cache.apply_ln_to_stack(cache["blocks.1.hook_resid_post"][None], layer=-1)[0]
    assert torch.allclose(scaled, cache["ln_final.hook_normalized"], atol=1e-5)

    # run_with_cache by the HF module name, as the example's sae_lens config names it
    _, cache = hooked_model.run_with_cache(
        text, names_filter="model.layers.0.post_attention_layernorm.hook_point"
    )
    assert cache["model.layers.0.post_attention_layernorm.hook_point"].shape[-1] == 32


@pytest.mark.sae_lens
def test_sae_lens_example_trains_through_the_original_form(tmp_path: Path) -> None:
    from datasets import Dataset
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LoggingConfig,
        SAETrainingRunner,
        StandardTrainingSAEConfig,
    )

    model_name = tiny_mixtral(tmp_path / "model")
    config = AutoConfig.from_pretrained(model_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked_model = sae_lens_example_adapter(model_name)
    # sae_lens 6 nests the SAE's settings (its own change since the original example)
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=config.hidden_size, d_sae=4 * config.hidden_size, l1_coefficient=5
        ),
        model_name=model_name,
        hook_name="model.layers.0.post_attention_layernorm.hook_point",
        is_dataset_tokenized=False, streaming=False, context_size=16,
        training_tokens=8 * 64, train_batch_size_tokens=64, store_batch_size_prompts=4,
        n_batches_in_buffer=8, lr=5e-5, logger=LoggingConfig(log_to_wandb=False),
        device="cpu", seed=42, n_checkpoints=0, output_path=str(tmp_path / "out"),
        dtype="float32", verbose=False,
    )  # fmt: skip
    dataset = Dataset.from_dict({"text": demo_corpus()[:64]})
    sparse_autoencoder = SAETrainingRunner(
        cfg, override_model=hooked_model, override_dataset=dataset
    ).run()
    assert sparse_autoencoder.W_enc.shape == (32, 128)


def test_original_test_mappings_gpt2_and_llama_and_the_positional_form(tmp_path: Path) -> None:
    from auto_hookpoint import (
        HookedTransformerAdapter,
        HookedTransformerAdapterCfg,
        HookedTransformerConfig_From_AutoConfig,
    )

    tokenizer = demo_tokenizer()
    small_gpt2_config = GPT2Config(
        n_embd=16, n_inner=16, n_layer=2, n_head=4, activation_function="gelu_new",
        n_positions=128, n_ctx=128, vocab_size=1024,
    )  # fmt: skip
    gpt2 = GPT2LMHeadModel(config=small_gpt2_config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapted = HookedTransformerAdapter(
            adapter_cfg=HookedTransformerAdapterCfg(
                mappings={
                    "blocks": "transformer.h",
                    "unembed": "lm_head",
                    "embed": "transformer.wte",
                    "pos_embed": "transformer.wpe",
                    "ln_final": "transformer.ln_f",
                },
                inter_block_fn=lambda x: x[0],
            ),
            hooked_transformer_cfg=HookedTransformerConfig_From_AutoConfig.from_auto_config(
                small_gpt2_config,
                attn_only=True,
                normalization_type=None,
                positional_embedding_type="standard",
            ),
            model=gpt2,
            tokenizer=tokenizer,
        )
    plain = HookedTransformerAdapter(gpt2, tokenizer)
    assert set(adapted.hook_dict) == set(plain.hook_dict) and "hook_pos_embed" in plain.hook_dict
    assert adapted.cfg.act_fn == plain.cfg.act_fn == "gelu_new"

    # The original tests named Llama's rotary module as its pos_embed: TransformerLens
    # has no hook_pos_embed for rotary positions, so it is left out, with a warning.
    small_llama_config = LlamaConfig(
        vocab_size=1024, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4,
    )  # fmt: skip
    llama = LlamaForCausalLM(config=small_llama_config).eval()
    mappings = {
        "blocks": "model.layers",
        "unembed": "lm_head",
        "embed": "model.embed_tokens",
        "pos_embed": "model.rotary_emb",
        "ln_final": "model.norm",
    }
    with pytest.warns(UserWarning, match="LlamaRotaryEmbedding, not a learned position") as said:
        adapted = HookedTransformerAdapter(
            adapter_cfg=HookedTransformerAdapterCfg(mappings=mappings),
            hooked_transformer_cfg=HookedTransformerConfig_From_AutoConfig.from_auto_config(
                small_llama_config
            ),
            model=llama,
            tokenizer=tokenizer,
        )
    plain = HookedTransformerAdapter(llama, tokenizer)
    assert "hook_pos_embed" not in adapted.hook_dict
    assert set(adapted.hook_dict) == set(plain.hook_dict)
    # from_auto_config left normalization_type at TransformerLens' default ("LN"): put
    # right without a warning, which is kept for values the caller stated
    assert len(said) == 1 and adapted.cfg.normalization_type == "RMS"

    # The original signature took adapter_cfg and hooked_transformer_cfg first.
    llama.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    mappings["pos_embed"] = None
    adapter_cfg = HookedTransformerAdapterCfg(mappings=mappings)
    cfg = HookedTransformerConfig_From_AutoConfig.from_auto_config(small_llama_config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: the table's parts, no stated values
        by_position = HookedTransformerAdapter(adapter_cfg, cfg, hf_model_name=str(tmp_path))
    assert by_position.cfg is cfg and torch.equal(by_position("The for"), plain("The for"))
    with pytest.raises(TypeError, match="adapter_cfg given twice"):
        HookedTransformerAdapter(adapter_cfg, cfg, adapter_cfg=adapter_cfg)
