"""HookedTransformerAdapter: HF decoders as HookedTransformers, for TransformerLens and sae_lens."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers as tf
from hf_models import ADAPTER_FAMILIES, VOCAB, _causal
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.HookedTransformer import Output

from auto_hookpoint.adapter import (
    ArchitectureError,
    ArchitectureMapping,
    HookedTransformerAdapter,
    HookedTransformerAdapterCfg,
    HookedTransformerConfig_From_AutoConfig,
)
from auto_hookpoint.demo import demo_model, demo_tokenizer


def ids(batch: int = 2, seq: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(3))


def family(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ADAPTER_FAMILIES[name]().eval()


@pytest.mark.parametrize("name", ADAPTER_FAMILIES)
def test_each_family_is_detected_and_its_transformer_lens_names_are_exact(name: str) -> None:
    model = family(name)
    plain = copy.deepcopy(model)
    tokens = ids()
    expected = plain(tokens, output_hidden_states=True)
    adapter = HookedTransformerAdapter(model, None)
    assert isinstance(adapter, HookedRootModule)
    cfg = adapter.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (3, 32, 4, VOCAB)
    assert cfg.d_head == 8 and cfg.n_ctx == 64
    assert adapter.W_E.shape == (VOCAB, 32) and adapter.W_U.shape == (32, VOCAB)

    logits, cache = adapter.run_with_cache(tokens)
    assert torch.equal(logits, expected.logits)
    native = adapter.mapping.blocks
    for i in range(3):
        post = cache[f"blocks.{i}.hook_resid_post"]
        assert torch.equal(post, cache[f"{native}.{i}.hook_point"])
        if i < 2:
            assert torch.equal(post, cache[f"blocks.{i + 1}.hook_resid_pre"])
            assert torch.equal(post, expected.hidden_states[i + 1])  # HF's own view of it
        if adapter.mapping.attn:
            assert torch.equal(
                cache[f"blocks.{i}.hook_attn_out"],
                cache[f"{native}.{i}.{adapter.mapping.attn}.hook_point"],
            )
        if adapter.mapping.mlp:
            assert torch.equal(
                cache[f"blocks.{i}.hook_mlp_out"],
                cache[f"{native}.{i}.{adapter.mapping.mlp}.hook_point"],
            )
    assert torch.equal(cache["hook_embed"], cache[f"{adapter.mapping.embed}.hook_point"])
    assert torch.equal(cache["ln_final.hook_normalized"], expected.hidden_states[-1])
    assert isinstance(cache, ActivationCache)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_stop_at_layer_returns_the_residual_and_computes_nothing_after(name: str) -> None:
    adapter = HookedTransformerAdapter(family(name), None)
    tokens = ids()
    _, full = adapter.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    paths = {id(m): p for p, m in adapter.model.named_modules()}
    called: list[str] = []
    handle = register_module_forward_hook(lambda m, i, o: called.append(paths.get(id(m), "")))
    try:
        resid = adapter(tokens, stop_at_layer=2)
        out, cache = adapter.run_with_cache(
            tokens, names_filter=["blocks.1.hook_resid_post"], stop_at_layer=2
        )
    finally:
        handle.remove()
    assert torch.equal(resid, full["blocks.1.hook_resid_post"]) and torch.equal(out, resid)
    assert torch.equal(cache["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])
    blocks = adapter.mapping.blocks
    assert called and not [
        p for p in called if p.startswith(f"{blocks}.2") or p == adapter.mapping.unembed
    ]
    assert torch.equal(adapter(tokens, stop_at_layer=0), full["blocks.0.hook_resid_pre"])


def test_forward_return_types_and_text_input() -> None:
    adapter = HookedTransformerAdapter(demo_model(num_layers=2), demo_tokenizer())
    tokens = adapter.to_tokens(["The while loop repeats.", "A class"])
    logits = adapter(tokens)
    assert logits.shape == (2, tokens.shape[1], 1024)
    loss = adapter(tokens, return_type="loss")
    per_token = adapter(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, tokens.shape[1] - 1)
    both = adapter(tokens, return_type="both")
    assert (
        isinstance(both, Output)
        and torch.equal(both.logits, logits)
        and torch.equal(both.loss, loss)
    )
    one = tokens[:1, :5]  # no padding: the loss is plain next-token cross-entropy
    expected = nn.functional.cross_entropy(adapter(one)[0, :-1], one[0, 1:])
    torch.testing.assert_close(adapter(one, return_type="loss"), expected)
    assert adapter(tokens, return_type=None) is None
    assert torch.equal(
        adapter("The while loop repeats."),
        adapter(tokens[:1, : adapter.to_tokens("The while loop repeats.").shape[1]]),
    )
    with pytest.raises(ValueError, match="return_type"):
        adapter(tokens, return_type="logprobs")


def test_tokens_strings_and_generate() -> None:
    tokenizer = demo_tokenizer()
    adapter = HookedTransformerAdapter(demo_model(num_layers=2), tokenizer)
    tokens = adapter.to_tokens("The return statement")
    assert tokens[0, 0].item() == tokenizer.bos_token_id
    assert (
        adapter.to_tokens("The return statement", prepend_bos=False)[0, 0].item()
        != tokenizer.bos_token_id
    )
    assert adapter.to_string(tokens[0]) == "<s>The return statement"
    assert "".join(adapter.to_str_tokens("The return statement")) == "<s>The return statement"
    text = adapter.generate("The return statement", max_new_tokens=4)
    assert isinstance(text, str) and text.startswith("<s>The return statement")


def test_from_pretrained_loads_a_local_folder(tmp_path: Path) -> None:
    demo_model(num_layers=2).save_pretrained(tmp_path)
    demo_tokenizer().save_pretrained(tmp_path)
    adapter = HookedTransformerAdapter.from_pretrained(tmp_path)
    assert adapter.cfg.n_layers == 2 and adapter.tokenizer is not None
    assert adapter("The for statement").shape[-1] == 1024


def test_legacy_auto_hookpoint_constructor_forms_keep_working(tmp_path: Path) -> None:
    model = demo_model(num_layers=2)
    tokenizer = demo_tokenizer()
    mappings = {
        "embed": "model.embed_tokens",
        "blocks": "model.layers",
        "ln_final": "model.norm",
        "unembed": "lm_head",
        "pos_embed": None,
    }
    cfg = HookedTransformerConfig_From_AutoConfig.from_auto_config(model.config, device="cpu")
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (2, 64, 1024)
    with pytest.warns(UserWarning, match="not needed"):
        adapter = HookedTransformerAdapter(
            adapter_cfg=HookedTransformerAdapterCfg(
                mappings=mappings, inter_block_fn=lambda x: x[0]
            ),
            hooked_transformer_cfg=cfg,
            model=model,
            tokenizer=tokenizer,
        )
    assert adapter.cfg is cfg
    _, cache = adapter.run_with_cache("The for statement", names_filter="blocks.1.hook_resid_post")
    assert cache["blocks.1.hook_resid_post"].shape[-1] == 64

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    by_name = HookedTransformerAdapter(
        adapter_cfg=HookedTransformerAdapterCfg(mappings=mappings),
        hooked_transformer_cfg=cfg,
        hf_model_name=str(tmp_path),
    )
    assert torch.equal(by_name("The for statement"), adapter("The for statement"))
    renamed = HookedTransformerAdapter(
        demo_model(num_layers=2), tokenizer, input_embedding_name="model.embed_tokens"
    )
    assert renamed.mapping.embed == "model.embed_tokens"


class NotALanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))


def test_missing_parts_are_named_with_how_to_fix() -> None:
    with pytest.raises(
        ArchitectureError, match="could not find the token embedding.*mapping=ArchitectureMapping"
    ):
        HookedTransformerAdapter(NotALanguageModel(), None)
    wrong = ArchitectureMapping("model.embed_tokens", "model.layers", "model.final_norm", "lm_head")
    with pytest.raises(
        ArchitectureError,
        match="the ln_final of this llama model was expected at 'model.final_norm'",
    ):
        HookedTransformerAdapter(demo_model(num_layers=2), None, mapping=wrong)
    with pytest.raises(TypeError, match="needs an HF causal LM"):
        HookedTransformerAdapter("gpt2")  # type: ignore[arg-type]


def test_an_unlisted_family_is_detected_from_the_model() -> None:
    torch.manual_seed(0)
    model = _causal(tf.StableLmConfig, num_hidden_layers=2, num_key_value_heads=4)().eval()
    adapter = HookedTransformerAdapter(model, None)
    assert adapter.mapping == ArchitectureMapping(
        "model.embed_tokens", "model.layers", "model.norm", "lm_head", "self_attn", "mlp"
    )
    _, cache = adapter.run_with_cache(
        ids(), names_filter=["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"]
    )
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
