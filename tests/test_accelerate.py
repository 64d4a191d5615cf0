"""Every feature on models dispatched by real accelerate, with CPU and disk offload.

The oracle is the same model un-dispatched (``plain``, same weights): on this machine's
CPU a dispatched forward computes bit-identically, so every site, parameter and output
must equal the plain model's exactly. GPU cases at the end skip without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import dispatch_model
from battery import torch_hook_count
from dispatched import (
    FAMILIES,
    LAYERS,
    PLACEMENTS,
    accelerate_state,
    build,
    device_map,
    dispatched,
)
from dispatched import inputs as make_inputs
from test_split import CalledModules

from auto_hookpoint import (
    EarlyOutput,
    ResumeError,
    auto_hook,
    capture,
    check_auto_hook,
    find_nonfinite,
    memory_profile,
    trace,
)

FAMILY_NAMES = list(FAMILIES)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_site_fires_with_the_plain_models_values(
    family: str, placement: str, tmp_path: Path
) -> None:
    model, plain = dispatched(family, placement, tmp_path)
    ids = make_inputs()
    with torch.no_grad():
        expected = plain(ids).logits
        assert torch.equal(model(ids).logits, expected)  # accelerate itself is exact here
        before = accelerate_state(model)
        hooked, oracle = auto_hook(model), auto_hook(plain)
        assert torch.equal(hooked(ids).logits, expected)
        out, cache = hooked.run_with_cache(ids)
        _, wanted = oracle.run_with_cache(ids)
    assert torch.equal(out.logits, expected)
    assert cache.keys() == wanted.keys()
    meta = [name for name, value in cache.items() if value.device.type == "meta"]
    assert not meta, f"sites fired with meta tensors: {meta[:3]}"
    differ = [name for name in wanted if not torch.equal(cache[name], wanted[name])]
    assert not differ, f"sites whose values differ from the plain model's: {differ[:3]}"
    assert torch_hook_count(hooked) == 0
    hooked.unwrap()
    assert accelerate_state(model) == before


@pytest.mark.parametrize(
    "hooked_first", [False, True], ids=["dispatch_then_hook", "hook_then_dispatch"]
)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_parameter_edit_on_an_offloaded_module_holds_for_that_call_only(
    family: str, hooked_first: bool, tmp_path: Path
) -> None:
    site = FAMILIES[family].param_site
    param_path = site.removesuffix(".hook_point")
    ids = make_inputs()
    seen: list[torch.Tensor] = []

    def double(weight: torch.Tensor, hook: object) -> torch.Tensor:
        seen.append(weight)
        return weight * 2

    oracle = auto_hook(build(family))
    with torch.no_grad():
        expected = oracle.run_with_hooks(ids, fwd_hooks=[(site, double)]).logits
        unedited = oracle(ids).logits
    real_weight = oracle.get_parameter(param_path).detach().clone()
    seen.clear()
    if hooked_first:  # the hook is in place before accelerate wraps the forwards
        model = auto_hook(build(family))
        model.add_perma_hook(site, double)
        model = dispatch_model(model, device_map(family), offload_dir=tmp_path / "offload")
        with torch.no_grad():
            edited = model(ids).logits
        model.reset_hooks(including_permanent=True)
    else:
        model, _ = dispatched(family, "disk", tmp_path)
        model = auto_hook(model)
        with torch.no_grad():
            edited = model.run_with_hooks(ids, fwd_hooks=[(site, double)]).logits
    assert not torch.equal(expected, unedited)
    assert torch.equal(edited, expected)
    assert len(seen) == 1 and torch.equal(seen[0], real_weight)
    assert seen[0].device == torch.device("cpu")  # the execution device, not meta
    with torch.no_grad():
        assert torch.equal(model(ids).logits, unedited)  # for that call only
    offloaded = model.get_submodule(param_path.rpartition(".")[0])._parameters
    name = param_path.rpartition(".")[2]
    assert type(offloaded[name]) is torch.nn.Parameter and offloaded[name].device.type == "meta"
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_backward_hooks_fire_with_the_plain_models_gradients(family: str, tmp_path: Path) -> None:
    model, plain = dispatched(family, "disk", tmp_path)
    hooked, oracle = auto_hook(model), auto_hook(plain)
    site = f"{FAMILIES[family].stack}.1.mlp.hook_point"
    ids = make_inputs()
    grads: dict[str, torch.Tensor] = {}
    for name, m in (("dispatched", hooked), ("plain", oracle)):
        with m.hooks(bwd_hooks=[(site, lambda g, hook, name=name: grads.setdefault(name, g))]):
            m(ids, labels=ids).loss.backward()
    assert grads.keys() == {"dispatched", "plain"}
    assert torch.equal(grads["dispatched"], grads["plain"])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_generate_with_a_parameter_hook_and_a_capture(family: str, tmp_path: Path) -> None:
    model, plain = dispatched(family, "disk", tmp_path)
    site, layer = FAMILIES[family].param_site, f"{FAMILIES[family].stack}.2.hook_point"
    results = []
    for m in (auto_hook(model), auto_hook(plain)):
        hooks = [(site, lambda w, hook: w * 1.5)]
        with capture(m, layer, append=True) as acts, m.hooks(fwd_hooks=hooks):
            tokens = m.generate(make_inputs(), max_new_tokens=4, do_sample=False)
        results.append((tokens, acts.cat(layer)))
    (tokens, acts), (wanted_tokens, wanted_acts) = results
    assert torch.equal(tokens, wanted_tokens) and torch.equal(acts, wanted_acts)


@pytest.mark.parametrize("placement", ["disk", "cpu_offload"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_split_at_every_block_of_a_dispatched_model(
    family: str, placement: str, tmp_path: Path
) -> None:
    model, plain = dispatched(family, placement, tmp_path)
    before = accelerate_state(model)
    hooked, stack = auto_hook(model), FAMILIES[family].stack
    ids = make_inputs()
    with torch.no_grad():
        expected = plain(ids).logits
        for k in range(LAYERS):
            site = f"{stack}.{k}.hook_point"
            early = hooked.run_until(site, ids)
            assert early.device == torch.device("cpu")
            with CalledModules(hooked) as called:
                resumed = hooked.resume_from(site, early, ids)
            assert torch.equal(resumed.logits, expected), k
            skipped = [
                p for p in called if any(p.startswith(f"{stack}.{i}.") for i in range(k + 1))
            ]
            assert not skipped, f"modules of skipped blocks ran: {skipped[:3]}"
            with pytest.raises(ResumeError, match="device differs"):
                hooked.resume_from(site, early.to("meta"), ids)
    assert torch_hook_count(hooked) == 0
    hooked.unwrap()
    assert accelerate_state(model) == before


def test_observers_and_check_auto_hook_on_a_dispatched_model(tmp_path: Path) -> None:
    model, plain = dispatched("llama", "disk", tmp_path)
    hooked, oracle = auto_hook(model), auto_hook(plain)
    ids = make_inputs()
    with torch.no_grad():
        with capture(hooked, "model.layers.*.hook_point") as got:
            hooked(ids)
        with capture(oracle, "model.layers.*.hook_point") as wanted:
            oracle(ids)
        assert got.keys() == wanted.keys() and len(got) == LAYERS
        assert all(torch.equal(got[name], wanted[name]) for name in wanted)
        with trace(hooked) as timed, memory_profile(hooked) as memory:
            hooked(ids)
        layers = {f"model.layers.{i}" for i in range(LAYERS)}
        assert layers <= {row.module for row in timed.summary()}
        assert layers <= {record.module for record in memory.records}
    nan = float("nan")
    edit = [
        ("model.layers.2.mlp.hook_point", lambda t, hook: t.index_fill(-1, torch.tensor([0]), nan))
    ]
    with find_nonfinite(hooked) as found, hooked.hooks(fwd_hooks=edit), torch.no_grad():
        hooked(ids)
    assert found.first is not None and found.first.module == "model.layers.2.mlp"
    report = check_auto_hook(model, input_kwargs={"input_ids": ids})
    failed = [r for r in report.results if r.status.name == "FAIL"]
    assert not failed, report
    assert torch_hook_count(hooked) == 0


def test_unwrap_leaves_accelerate_exactly_as_it_was(tmp_path: Path) -> None:
    model, plain = dispatched("gpt2", "disk", tmp_path)
    before = accelerate_state(model)
    ids = make_inputs()
    hooked = auto_hook(model)
    site = FAMILIES["gpt2"].param_site
    hooked.add_perma_hook(site, lambda w, hook: w)  # lending placed inside accelerate's forward
    hooked.add_hook("transformer.h.0.hook_point", lambda t, hook: t)
    with torch.no_grad():
        hooked.run_with_cache(ids, names_filter=[site, "transformer.h.1.attn.hook_point"])
    assert accelerate_state(model) != before  # the lending forward is in place
    hooked.unwrap()
    assert accelerate_state(model) == before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)


# ---------------------------------------------------------------- the adapter
def _saved_lm(family: str, folder: Path) -> Path:
    import transformers as tf

    from auto_hookpoint.demo import demo_config, demo_tokenizer

    torch.manual_seed(0)
    if family == "llama":
        model = tf.LlamaForCausalLM(demo_config(num_layers=LAYERS))
    else:
        model = tf.GPT2LMHeadModel(
            tf.GPT2Config(vocab_size=1024, n_embd=64, n_layer=LAYERS, n_head=4)
        )
    model.save_pretrained(folder / "model")
    demo_tokenizer().save_pretrained(folder / "model")
    return folder / "model"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_adapter_from_pretrained_with_a_device_map_and_sae_lens(
    family: str, tmp_path: Path
) -> None:
    from datasets import Dataset
    from sae_lens import LanguageModelSAETrainingRunner
    from transformers import AutoModelForCausalLM

    from auto_hookpoint import HookedTransformerAdapter
    from auto_hookpoint.demo import demo_corpus, demo_tokenizer

    folder = _saved_lm(family, tmp_path)
    f = FAMILIES[family]
    # Even the embedding is offloaded (with the head: gpt2 ties their weights).
    placement = {**device_map(family), f.embed: "disk", "lm_head": "disk"}
    adapter = HookedTransformerAdapter.from_pretrained(
        folder, device_map=placement, offload_folder=tmp_path / "offload", dtype=torch.float32,
        attn_implementation="eager", default_padding_side="left",
    )  # fmt: skip
    oracle = HookedTransformerAdapter(
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager"),
        demo_tokenizer(), default_padding_side="left",
    )  # fmt: skip
    assert adapter.model.get_submodule(f.embed).weight.device.type == "meta"
    assert adapter.cfg.device == "cpu" and adapter.tokenizer.padding_side == "left"
    assert torch.equal(adapter.W_E, oracle.W_E) and torch.equal(adapter.W_U, oracle.W_U)
    text = ["The for statement iterates.", "A class"]
    with torch.no_grad():
        assert torch.equal(adapter(text), oracle(text))
        assert torch.equal(adapter(text, stop_at_layer=2), oracle(text, stop_at_layer=2))
        _, cache = adapter.run_with_cache(text, names_filter="blocks.1.hook_resid_post")
        _, wanted = oracle.run_with_cache(text, names_filter="blocks.1.hook_resid_post")
    assert torch.equal(cache["blocks.1.hook_resid_post"], wanted["blocks.1.hook_resid_post"])

    from test_sae_lens import runner_config

    corpus = Dataset.from_dict({"text": demo_corpus()[:200]})
    config = runner_config("blocks.1.hook_resid_post", tmp_path / "sae", steps=4)
    runs = {
        name: LanguageModelSAETrainingRunner(config, override_model=m, override_dataset=corpus)
        for name, m in (("dispatched", adapter), ("plain", oracle))
    }
    stores = {name: runner.activations_store for name, runner in runs.items()}
    tokens = stores["plain"].get_batch_tokens(2)
    assert torch.equal(
        stores["dispatched"].get_activations(tokens), stores["plain"].get_activations(tokens)
    )
    sae = runs["dispatched"].run()
    assert all(torch.isfinite(p).all() for p in sae.parameters())


# ---------------------------------------------------------------- several devices (GPU)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_gpu_with_cpu_and_disk_offload(family: str, tmp_path: Path) -> None:
    f = FAMILIES[family]
    on_gpu = {f"{f.stack}.0": 0, f"{f.stack}.3": 0, f.embed: 0, "lm_head": 0}
    model = dispatch_model(
        build(family), {**device_map(family, disk=(2,)), **on_gpu}, offload_dir=tmp_path / "off"
    )  # block 1 offloaded to CPU RAM, block 2 to disk; all compute on cuda:0
    ids = make_inputs()
    with torch.no_grad():
        expected = model(ids).logits  # the oracle on a GPU: the dispatched model, un-hooked
        hooked = auto_hook(model)
        out, cache = hooked.run_with_cache(ids, device="cpu")
        assert torch.equal(out.logits, expected)
        assert {v.device.type for v in cache.values()} == {"cpu"}
        _, kept = hooked.run_with_cache(ids, names_filter=f"{f.stack}.1.hook_point")
        assert kept[f"{f.stack}.1.hook_point"].device.type == "cuda"
        for k in range(LAYERS):
            site = f"{f.stack}.{k}.hook_point"
            early = hooked.run_until(site, ids)
            assert early.device.type == "cuda"
            assert torch.equal(hooked.resume_from(site, early, ids).logits, expected)
            moved = EarlyOutput.load(_saved(early, tmp_path), device="cpu")
            with pytest.raises(ResumeError, match="device differs"):
                hooked.resume_from(site, moved, ids)
            again = hooked.resume_from(site, moved.to(early.device), ids)
            assert torch.equal(again.logits, expected)
        seen: list[torch.device] = []
        double = [(f.param_site, lambda w, hook: seen.append(w.device) or w * 2)]
        edited = hooked.run_with_hooks(ids, fwd_hooks=double).logits
        oracle = auto_hook(build(family).to("cuda"))
        wanted = oracle.run_with_hooks(ids.cuda(), fwd_hooks=double).logits
    assert seen[0].type == "cuda"  # block 1 rests in CPU RAM; its weight was loaded to the GPU
    torch.testing.assert_close(edited, wanted.cpu())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)


def _saved(early: EarlyOutput, folder: Path) -> Path:
    path = folder / "early.safetensors"
    early.save(path)
    return path
