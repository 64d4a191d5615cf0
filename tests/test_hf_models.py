"""Real transformers architectures and real pretrained weights, hooked faithfully."""

from __future__ import annotations

import pytest
import torch
from battery import check_hooked_model, torch_hook_count
from hf_models import ARCHS, NOT_CALLED, _attn_dropout, minilm_path
from transformers import AutoModel, AutoTokenizer

from auto_hookpoint import auto_hook


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_is_hooked_faithfully(arch: str) -> None:
    spec = ARCHS[arch]
    torch.manual_seed(0)
    check_hooked_model(spec.build().eval(), spec.inputs(), spec.middle_site, spec.not_fired)


def test_decoder_layer_output_is_cached_and_ablated() -> None:
    spec = ARCHS["llama"]
    torch.manual_seed(0)
    model = auto_hook(spec.build().eval())
    ids = spec.inputs()["input_ids"]
    out, cache = model.run_with_cache(
        input_ids=ids, names_filter=lambda n: n.endswith("mlp.hook_point")
    )
    assert set(cache) == {"model.layers.0.mlp.hook_point", "model.layers.1.mlp.hook_point"}
    _, cache = model.run_with_cache(input_ids=ids, names_filter=["model.layers.0.hook_point"])
    assert cache["model.layers.0.hook_point"].shape == (2, 8, 32)

    ablated = model.run_with_hooks(
        input_ids=ids,
        fwd_hooks=[("model.layers.1.self_attn.hook_point", lambda t, hook: torch.zeros_like(t))],
    )
    assert not torch.equal(ablated.logits, out.logits)


def test_generate_works_on_the_hooked_model_and_hooks_see_every_step() -> None:
    spec = ARCHS["llama"]
    torch.manual_seed(0)
    model = spec.build().eval()
    ids = spec.inputs(batch=1)["input_ids"]
    expected = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    hooked = auto_hook(model)
    assert torch.equal(
        hooked.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False), expected
    )
    steps: list[int] = []
    with hooked.hooks(
        fwd_hooks=[("model.layers.0.hook_point", lambda t, hook: steps.append(t.shape[1]))]
    ):
        hooked.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert steps == [8, 1, 1, 1, 1]  # the prefill, then one position per step (KV cache)
    assert torch_hook_count(hooked) == 0


def test_pretrained_minilm_with_its_real_tokenizer() -> None:
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = ["A man is eating food.", "The cat sits outside on the warm stone steps."]
    inputs = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    not_fired = _attn_dropout("encoder.layer.{}.attention.self.dropout.hook_point")
    not_fired.update(
        {f"encoder.layer.{i}.attention.self.dropout.hook_point": NOT_CALLED for i in range(6)}
    )
    check_hooked_model(model, inputs, "encoder.layer.3.hook_point", not_fired)


def test_pretrained_minilm_activations_mean_something() -> None:
    """Cached pooled sentence embeddings rank a paraphrase above an unrelated sentence."""
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = auto_hook(AutoModel.from_pretrained(path).eval())
    sentences = [
        "A man is eating food.",
        "A man is eating a meal.",
        "The stock market fell sharply.",
    ]
    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        _, cache = model.run_with_cache(**inputs, names_filter="encoder.layer.5.hook_point")
    hidden = cache["encoder.layer.5.hook_point"]
    mask = inputs["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
