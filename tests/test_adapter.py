"""HookedTransformerAdapter: the HookedTransformer surface on HF decoders.

What each TransformerLens name means is proven against TransformerLens itself in
``test_adapter_parity.py``; analysis code in ``test_adapter_analysis.py``; tokenization
in ``test_adapter_tokens.py``. Here: the forward, ``stop_at_layer``, generation,
loading, threads, errors, detection of families outside the table, and the
Auto_HookPoint constructor forms.
"""

from __future__ import annotations

import copy
import threading
import warnings
from pathlib import Path

import pytest
import torch
import transformers as tf
from battery import torch_hook_count
from hf_models import VOCAB, _causal
from tl_twin import FAMILIES, SEQ, build, tokenizer, twin
from torch import nn
from torch.nn.modules.module import register_module_forward_hook
from transformer_lens import ActivationCache, HookedRootModule

from auto_hookpoint.adapter import (
    ArchitectureError,
    ArchitectureMapping,
    BlockParts,
    HookedTransformerAdapter,
    HookedTransformerAdapterCfg,
    HookedTransformerConfig_From_AutoConfig,
)
from auto_hookpoint.adapter.tl_compat import MAJOR, Output
from auto_hookpoint.demo import demo_model, demo_tokenizer
from auto_hookpoint.errors import ReadOnlySiteError


def ids(batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("family", FAMILIES)
def test_idle_adapter_computes_exactly_what_the_hf_model_computes(family: str) -> None:
    model = build(family)
    plain = copy.deepcopy(model)
    adapter = HookedTransformerAdapter(model, None)
    assert isinstance(adapter, HookedRootModule)
    tokens = ids()
    with torch.no_grad():
        expected = plain(tokens).logits
        assert torch.equal(adapter(tokens), expected)
        _, cache = adapter.run_with_cache(tokens)  # every site, attention internals too
        assert isinstance(cache, ActivationCache) and "blocks.1.hook_resid_post" in cache
        assert torch.equal(adapter(tokens), expected)  # idle again: the HF kernels again
        _, copied = copy.deepcopy(adapter).run_with_cache(tokens)  # a copy has its own sites
    assert copied.keys() == cache.keys()
    assert torch_hook_count(adapter.model) == 0


def test_stop_at_layer_is_a_slice_of_the_blocks_and_keeps_the_graph() -> None:
    adapter = HookedTransformerAdapter(build("llama"), None)
    tokens = ids()
    _, full = adapter.run_with_cache(tokens, names_filter=lambda n: "resid" in n)
    paths = {id(m): p for p, m in adapter.model.named_modules()}
    called: list[str] = []
    handle = register_module_forward_hook(lambda m, i, o: called.append(paths.get(id(m), "")))
    try:
        resid = adapter(tokens, stop_at_layer=1)
    finally:
        handle.remove()
    assert torch.equal(resid, full["blocks.0.hook_resid_post"])
    assert called and not [p for p in called if p.startswith("model.layers.1") or p == "lm_head"]
    # As HookedTransformer's blocks[:stop_at_layer]: -1 stops before the last block,
    # -3 (or 0) before the first, beyond the end after the last.
    assert torch.equal(adapter(tokens, stop_at_layer=-1), full["blocks.0.hook_resid_post"])
    for stop in (0, -2, -3):
        assert torch.equal(adapter(tokens, stop_at_layer=stop), full["blocks.0.hook_resid_pre"])
    assert torch.equal(adapter(tokens, stop_at_layer=5), full["blocks.1.hook_resid_post"])
    adapter(tokens, stop_at_layer=1).pow(2).sum().backward()  # gradients reach the weights
    assert adapter.model.model.layers[0].mlp.down_proj.weight.grad is not None
    assert adapter.model.model.layers[1].mlp.down_proj.weight.grad is None


def test_forward_return_types_and_text_input() -> None:
    adapter = HookedTransformerAdapter(demo_model(num_layers=2), demo_tokenizer())
    tokens = adapter.to_tokens(["The while loop repeats.", "A class"])
    logits = adapter(tokens)
    assert logits.shape == (2, tokens.shape[1], 1024)
    loss = adapter(tokens, return_type="loss")
    per_token = adapter(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, tokens.shape[1] - 1)
    both = adapter(tokens, return_type="both")
    assert isinstance(both, Output)
    assert torch.equal(both.logits, logits) and torch.equal(both.loss, loss)
    one = tokens[:1, :5]  # no padding: the loss is plain next-token cross-entropy
    expected = nn.functional.cross_entropy(adapter(one)[0, :-1], one[0, 1:])
    torch.testing.assert_close(adapter(one, return_type="loss"), expected)
    assert adapter(tokens, return_type=None) is None
    assert torch.equal(adapter("The while loop repeats."), adapter(tokens[:1]))
    with pytest.raises(ValueError, match="return_type"):
        adapter(tokens, return_type="logprobs")
    with pytest.raises(NotImplementedError, match="start_at_layer"):
        adapter(tokens, start_at_layer=1)


@pytest.mark.tl3
def test_generate_takes_transformer_lens_arguments() -> None:
    model = build("gpt2", vocab=len(tokenizer("gpt2")))
    adapter = HookedTransformerAdapter(model, tokenizer("gpt2"))
    oracle = twin(model, tokenizer("gpt2"))
    prompts = ["The return statement", "A class definition creates"]
    for use_cache in (True, False):
        options = {"max_new_tokens": 5, "do_sample": False, "use_past_kv_cache": use_cache}
        texts = adapter.generate(prompts, verbose=False, **options)
        assert texts == oracle.generate(prompts, verbose=False, **options)
        tokens = adapter.generate(prompts[0], return_type="tokens", verbose=False, **options)
        assert torch.equal(tokens, oracle.generate(prompts[0], return_type="tokens", **options))
    text = adapter.generate(prompts[0], max_new_tokens=3, verbose=False)  # sampled
    assert isinstance(text, str) and text.startswith(prompts[0])
    prompt = adapter.to_tokens(prompts[0]).shape[1]
    stopped = adapter.generate(  # the first new token is made an EOS: it stops there
        prompts[0], max_new_tokens=4, eos_token_id=[int(tokens[0, prompt])], do_sample=False,
        return_type="tokens", verbose=False,
    )  # fmt: skip
    assert stopped.shape[1] == prompt + 1
    with pytest.warns(UserWarning, match="ignoring"):
        adapter.generate(prompts[0], max_new_tokens=1, verbose=False, num_beams=2)


def test_cfg_follows_the_weights_to_another_dtype() -> None:
    adapter = HookedTransformerAdapter(demo_model(num_layers=2), demo_tokenizer())
    adapter.to(torch.float64)
    assert adapter.cfg.dtype == torch.float64 and adapter.W_E.dtype == torch.float64
    logits, cache = adapter.run_with_cache("The for statement")
    assert (
        logits.dtype == torch.float64 and cache["blocks.0.hook_resid_post"].dtype == torch.float64
    )
    assert adapter.cfg.device == "cpu"


def test_hooks_on_the_adapter_belong_to_the_calling_thread() -> None:
    adapter = HookedTransformerAdapter(demo_model(num_layers=2), demo_tokenizer())
    tokens = adapter.to_tokens("The for statement iterates")

    def zero(tensor: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.zeros_like(tensor)

    hooked = adapter.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", zero)])
    plain = adapter(tokens)
    barrier, results = threading.Barrier(2), {}

    def run(label: str) -> None:
        barrier.wait()
        for _ in range(10):
            if label == "hooked":
                with adapter.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero)]):
                    results.setdefault(label, []).append(adapter(tokens))
            else:
                results.setdefault(label, []).append(adapter(tokens))

    threads = [threading.Thread(target=run, args=(label,)) for label in ("hooked", "plain")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(r, hooked) for r in results["hooked"])
    assert all(torch.equal(r, plain) for r in results["plain"])


def test_read_only_names_refuse_edits_and_say_what_to_hook() -> None:
    adapter = HookedTransformerAdapter(build("gpt2"), None)

    def in_place(tensor: torch.Tensor, hook: object) -> None:
        tensor.mul_(2)

    for hook in (lambda t, hook: t * 2, in_place):
        with pytest.raises(ReadOnlySiteError, match="hook_normalized"):
            adapter.run_with_hooks(ids(), fwd_hooks=[("blocks.0.ln1.hook_scale", hook)])
    with pytest.raises(ReadOnlySiteError, match="gradient"):
        adapter.run_with_hooks(
            ids(), return_type="loss",
            bwd_hooks=[("blocks.0.ln1.hook_scale", lambda g, hook: None)],
        )  # fmt: skip
    torch.testing.assert_close(adapter(ids()), build("gpt2")(ids()).logits)  # left as it was


def test_unwrap_gives_back_the_hf_model_as_it_was() -> None:
    model = build("llama")
    implementation = model.config._attn_implementation
    adapter = HookedTransformerAdapter(model, None)
    assert model.config._attn_implementation != implementation
    original = adapter.unwrap()
    assert original is model and type(model) is tf.LlamaForCausalLM
    assert model.config._attn_implementation == implementation


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
    parts = BlockParts(attn_out="self_attention")
    with pytest.raises(ArchitectureError, match="no module 'self_attention'.*BlockParts"):
        HookedTransformerAdapter(
            demo_model(num_layers=2), None, mapping=ArchitectureMapping(
                "model.embed_tokens", "model.layers", "model.norm", "lm_head", parts=parts
            ),
        )  # fmt: skip
    with pytest.raises(TypeError, match="needs an HF causal LM"):
        HookedTransformerAdapter("gpt2")  # type: ignore[arg-type]


@pytest.mark.parametrize("parallel", [False, True])
def test_an_unlisted_family_is_detected_and_checked(parallel: bool) -> None:
    """StableLM is not in the table; its blocks are sequential or (with
    use_parallel_residual) parallel, where one norm feeds attention and MLP."""
    torch.manual_seed(0)
    model = _causal(
        tf.StableLmConfig,
        num_hidden_layers=2,
        num_key_value_heads=4,
        use_parallel_residual=parallel,
    )().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = HookedTransformerAdapter(model, None)
    _, cache = adapter.run_with_cache(ids())
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    stack = cache.decompose_resid()
    torch.testing.assert_close(stack.sum(0), cache["blocks.1.hook_resid_post"])
    assert "blocks.0.attn.hook_z" in cache and "blocks.0.attn.hook_q" in cache
    # StableLM does not declare transformers' attention interface: no pattern, and why.
    assert "inline" in adapter.unavailable_hook_names["blocks.0.attn.hook_pattern"]
    assert not [w for w in caught if "did not confirm" in str(w.message)]
    if parallel:  # one norm feeds attention and MLP: no ln2, no resid_mid
        assert "blocks.0.hook_resid_mid" not in cache and "blocks.0.ln2.hook_scale" not in cache
        assert "blocks.0.ln2.hook_normalized" in adapter.unavailable_hook_names
    else:
        assert "blocks.0.hook_resid_mid" in cache and "blocks.0.ln2.hook_scale" in cache


class OddBlock(nn.Module):
    """A decoder block whose second norm normalises the MLP output (post-norm), under a
    name no HF family uses: detection cannot know, and the check forward finds out."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_a(x))
        return x + self.norm_b(self.mlp(x))


class OddLM(nn.Module):
    def __init__(self, vocab: int = 32, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(OddBlock(width) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(
        self, input_ids: torch.Tensor, **kwargs: object
    ) -> tf.modeling_outputs.CausalLMOutput:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return tf.modeling_outputs.CausalLMOutput(logits=self.head(self.norm(x)))


def test_where_detection_is_unsure_it_warns_and_names_mapping() -> None:
    with pytest.warns(UserWarning, match=r"did not confirm.*hook_mlp_out.*mapping=Architec"):
        adapter = HookedTransformerAdapter(OddLM(), None)
    assert "blocks.0.hook_mlp_out" not in adapter.hook_dict
    assert "blocks.0.hook_mlp_out" in adapter.unavailable_hook_names
    parts = BlockParts(ln1="norm_a", attn_out="attn", mlp_out="norm_b")
    mapping = ArchitectureMapping("embed", "layers", "norm", "head", parts=parts)
    exact = HookedTransformerAdapter(OddLM(), None, mapping=mapping)
    _, cache = exact.run_with_cache(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(cache.decompose_resid().sum(0), cache["blocks.1.hook_resid_post"])


@pytest.mark.tl4
def test_analysis_runs_on_the_installed_transformer_lens() -> None:
    """The adapter on whichever TransformerLens is installed (3.x or 4.x): its own
    ActivationCache and patching, with the identities that hold in any model."""
    import transformer_lens.patching as patching

    adapter = HookedTransformerAdapter(build("gpt2"), None)
    tokens = ids()
    with torch.no_grad():
        logits, cache = adapter.run_with_cache(tokens)
    resid = cache["blocks.1.hook_resid_post"]
    torch.testing.assert_close(cache.decompose_resid().sum(0), resid)
    heads = cache.stack_head_results(layer=1)  # layer 0's heads, [head batch pos d_model]
    torch.testing.assert_close(
        heads.sum(0) + adapter.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"]
    )
    normalized = cache.apply_ln_to_stack(resid[None], layer=-1)[0]
    torch.testing.assert_close(normalized, cache["ln_final.hook_normalized"], rtol=1e-4, atol=1e-5)
    directions = adapter.tokens_to_residual_directions(torch.tensor([3, 7]))
    final = cache["unembed.hook_in"][:, -1]
    torch.testing.assert_close(
        (final * directions).sum(-1), logits[:, -1, [3, 7]].diagonal() - adapter.b_U[[3, 7]]
    )

    def metric(out: torch.Tensor) -> torch.Tensor:
        return out[:, -1, 3].mean()

    with torch.no_grad():  # patching the clean run into itself changes nothing
        patched = patching.get_act_patch_resid_pre(adapter, tokens, cache, metric)
    assert patched.shape == (2, SEQ)
    torch.testing.assert_close(patched, torch.full_like(patched, metric(logits).item()))
    one = tokens[:1]
    _, single = adapter.run_with_cache(one, remove_batch_dim=True)
    assert single["blocks.0.hook_resid_post"].shape == (SEQ, 32)
    if MAJOR >= 4:
        with pytest.raises(AssertionError, match="batch size 2"):  # as TransformerLens 4 does
            adapter.run_with_cache(tokens, remove_batch_dim=True)
