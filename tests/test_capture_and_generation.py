"""capture, and hooks and observers across generate() with a KV cache."""

from __future__ import annotations

import threading

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS

from auto_hookpoint import UnknownHookNameError, auto_hook
from auto_hookpoint.demo import demo_model, demo_tokenizer
from auto_hookpoint.observers.capture import capture
from auto_hookpoint.observers.generation import GenerationStep, current_step, generation_trace


def llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return auto_hook(ARCHS["llama"].build().eval())


IDS = ARCHS["llama"].inputs()["input_ids"]


def test_capture_by_name_glob_and_predicate_with_options() -> None:
    model = llama()
    _, cache = model.run_with_cache(input_ids=IDS)
    with capture(model, ["model.layers.0.hook_point", "model.layers.*.mlp.hook_point"]) as acts:
        model(input_ids=IDS)
    assert set(acts) == {
        "model.layers.0.hook_point",
        "model.layers.0.mlp.hook_point",
        "model.layers.1.mlp.hook_point",
    }  # in the order they fired
    assert all(torch.equal(acts[n], cache[n]) for n in acts)
    norms = lambda n: n.endswith("layernorm.hook_point")  # noqa: E731
    with capture(model, norms, dtype=torch.float64, positions=slice(2, 5)) as acts:
        model(input_ids=IDS)
    assert len(acts) == 4  # input_ and post_attention_layernorm of both layers
    for name, value in acts.items():
        assert value.dtype == torch.float64 and not value.requires_grad
        assert torch.equal(value, cache[name][:, 2:5].double())
    with capture(model, "model.layers.1.hook_point", positions=-1) as acts:
        model(input_ids=IDS)
    assert torch.equal(
        acts["model.layers.1.hook_point"], cache["model.layers.1.hook_point"][:, -1:]
    )
    assert torch_hook_count(model) == 0


def test_capture_keeps_the_last_call_or_appends_every_call() -> None:
    model = llama()
    with (
        capture(model, "model.layers.0.hook_point") as last,
        capture(model, "model.layers.0.hook_point", append=True) as every,
    ):
        model(input_ids=IDS)
        model(input_ids=IDS.flip(-1))
    assert len(every["model.layers.0.hook_point"]) == 2
    assert torch.equal(last["model.layers.0.hook_point"], every["model.layers.0.hook_point"][1])


def test_capture_errors_name_what_is_wrong() -> None:
    model = llama()
    with pytest.raises(UnknownHookNameError, match="model.layers.0.hook_point"):
        with capture(model, "model.layers.0.hookpoint"):
            pass
    with pytest.raises(UnknownHookNameError, match="decoder"):
        with capture(model, "decoder.*"):
            pass
    torch.manual_seed(0)
    t5 = auto_hook(ARCHS["t5"].build().eval())
    with capture(t5, "shared.hook_point") as acts:
        t5(**ARCHS["t5"].inputs())
    with pytest.raises(
        KeyError, match="'shared.hook_point' was not captured \\(it did not fire\\)"
    ):
        acts["shared.hook_point"]
    with pytest.raises(TypeError, match="auto_hook"):
        with capture(torch.nn.Linear(2, 2), "hook_point"):
            pass


def test_two_threads_capturing_different_sites_get_exactly_their_own() -> None:
    model = llama()
    sites, results = ["model.layers.0.hook_point", "model.layers.1.mlp.hook_point"], [None, None]
    inputs = [IDS, IDS.flip(-1)]
    barrier = threading.Barrier(2)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(10):
            with capture(model, sites[i], append=True) as acts:
                model(input_ids=inputs[i])
            results[i] = dict(acts)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(2):
        assert list(results[i]) == [sites[i]] and len(results[i][sites[i]]) == 1
        _, cache = model.run_with_cache(input_ids=inputs[i], names_filter=sites[i])
        assert torch.equal(results[i][sites[i]][0], cache[sites[i]])


def test_hooks_know_the_step_and_captures_across_steps_match_one_full_forward() -> None:
    model = auto_hook(demo_model())
    tokenizer = demo_tokenizer()
    ids = tokenizer("The global statement declares names", return_tensors="pt")["input_ids"]
    steps: list[GenerationStep | None] = []
    hooks = [("model.layers.0.hook_point", lambda t, hook: steps.append(current_step()))]
    with (
        generation_trace(model, tokenizer, k=3) as gen,
        capture(model, "model.layers.*.hook_point", append=True) as acts,
    ):
        with model.hooks(fwd_hooks=hooks):
            out = model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    gen.finish(out)
    assert steps == [GenerationStep(0, True)] + [GenerationStep(i, False) for i in range(1, 5)]
    assert current_step() is None
    # The KV cache feeds one new position per step; joined, they are one full forward.
    _, full = model.run_with_cache(
        out[:, :-1], names_filter=lambda n: n.startswith("model.layers.") and n.count(".") == 3
    )
    for name in ("model.layers.0.hook_point", "model.layers.1.hook_point"):
        assert [a.shape[1] for a in acts[name]] == [ids.shape[1], 1, 1, 1, 1]
        torch.testing.assert_close(acts.cat(name), full[name], atol=1e-5, rtol=1e-5)
    # The trace: one record per step, the chosen tokens are generate()'s.
    assert [s.index for s in gen.steps] == [0, 1, 2, 3, 4] and gen.steps[0].prefill
    assert [s.chosen_id for s in gen.steps] == out[0, ids.shape[1] :].tolist()
    assert all(s.chosen == s.top_k[0][0] for s in gen.steps)  # greedy: the most probable
    assert all(0 < s.entropy <= torch.log(torch.tensor(1024.0)).item() + 1e-4 for s in gen.steps)
    assert (
        abs(sum(p for _, p in gen.steps[0].top_k) - sum(p for _, p in gen.steps[0].top_k[:3]))
        < 1e-9
    )
    assert "step 1 (decode, 1 tokens): chose" in str(gen.steps[1])
    assert torch_hook_count(model) == 0


def eager_llama(leaves: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ARCHS["llama"].build().eval()
    model.config._attn_implementation = "eager"  # so attention weights are returned
    return auto_hook(model, leaves=leaves)


def test_leaf_sites_read_edit_and_cache_tensors_inside_structured_outputs() -> None:
    model = eager_llama()
    weights = "model.layers.0.self_attn.hook_point.1"  # (attn_output, attn_weights)[1]
    out, cache = model.run_with_cache(input_ids=IDS, output_attentions=True, names_filter=[weights])
    assert cache[weights].shape == (2, 4, 8, 8)
    assert torch.equal(cache[weights], out.attentions[0])
    assert weights in model.hook_dict and weights in model.mod_dict

    # transformers collects out.attentions with a hook of its own that runs before
    # ours, so an edit of this leaf shows in the module's output, not in out.attentions.
    zero = [(weights, lambda t, hook: torch.zeros_like(t))]
    with model.hooks(fwd_hooks=zero), capture(model, weights) as acts:
        model(input_ids=IDS, output_attentions=True)
    assert torch.equal(acts[weights], torch.zeros(2, 4, 8, 8))

    with capture(model, [weights, "hook_point.logits"]) as acts:
        model(input_ids=IDS, output_attentions=True)
    assert torch.equal(acts["hook_point.logits"], out.logits)
    # A leaf that is not in this call's output (past the end of the tuple) never fires.
    with capture(model, "model.layers.0.self_attn.hook_point.5") as acts:
        model(input_ids=IDS)
    assert "model.layers.0.self_attn.hook_point.5" not in acts
    # (output_attentions made transformers install capture hooks of its own; none is ours)
    assert model._auto_hook_core.installed_hook_count() == 0


def test_leaf_names_need_leaves_true() -> None:
    model = eager_llama(leaves=False)
    with pytest.raises(UnknownHookNameError, match="model.layers.0.self_attn.hook_point"):
        model.run_with_cache(input_ids=IDS, names_filter=["model.layers.0.self_attn.hook_point.1"])
    with pytest.raises(UnknownHookNameError):
        eager_llama().hook_dict["model.layers.0.self_atn.hook_point.1"]  # no such output site


class WithAux(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = self.lin(x)
        return y, {"scale": y.abs().mean(-1, keepdim=True)}


class UsesAux(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = WithAux()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, aux = self.block(x)
        return y * aux["scale"]


def test_a_leaf_edit_reaches_the_code_that_uses_it() -> None:
    torch.manual_seed(0)
    model = auto_hook(UsesAux(), leaves=True)
    x = torch.randn(3, 4)
    _, cache = model.run_with_cache(x, names_filter=["block.hook_point.1.scale"])
    assert cache["block.hook_point.1.scale"].shape == (3, 1)
    out = model.run_with_hooks(
        x, fwd_hooks=[("block.hook_point.1.scale", lambda t, hook: t * 0 + 2)]
    )
    torch.testing.assert_close(out, model.block.lin(x) * 2)


def test_globs_match_within_a_segment_with_star_and_across_with_double_star() -> None:
    model = llama()
    with capture(model, "model.layers.*.hook_point") as layers:
        model(input_ids=IDS)
    assert set(layers) == {"model.layers.0.hook_point", "model.layers.1.hook_point"}
    with capture(model, "model.layers.[!0].**proj.hook_point") as projections:
        model(input_ids=IDS)
    assert len(projections) == 7  # q, k, v, o and gate, up, down of layer 1
    assert all(name.startswith("model.layers.1.") for name in projections)
