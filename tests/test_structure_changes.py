"""The model changes after auto_hook: sites follow, or every run says to call setup().

``resize_token_embeddings()`` replaces ``lm_head``; ``torch.nn.utils.prune`` renames a
parameter to ``<name>_orig``; ``parametrize`` adds a submodule; deleting a layer shifts
the others' paths. Before, a hook on a replaced module silently never fired. Now, on
the next call by any route, the sites follow their module path (hooks and observers
move to the module now there, new modules get sites), or, where a site holding a hook
is gone, every run raises StructureChangedError until the hook goes or setup() runs.
An idle model still carries no torch hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf
from battery import torch_hook_count
from plain_models import AutoEncoder
from torch import nn
from torch.nn.utils import parametrize, prune

from auto_hookpoint import StructureChangedError, auto_hook, capture, trace

HEAD = "lm_head.hook_point"


def untied_llama() -> Any:
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    return auto_hook(tf.LlamaForCausalLM(config).eval())


IDS = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(0))


def seen_by_run_with_hooks(model: Any) -> list[Any]:
    seen: list[Any] = []
    model.run_with_hooks(IDS, fwd_hooks=[(HEAD, lambda t, hook: seen.append(t.shape))])
    return seen


def seen_by_hooks(model: Any) -> list[Any]:
    seen: list[Any] = []
    with model.hooks(fwd_hooks=[(lambda n: n == HEAD, lambda t, hook: seen.append(t.shape))]):
        model(IDS)
    return seen


def seen_by_add_hook(model: Any) -> list[Any]:
    seen: list[Any] = []
    model.add_hook(HEAD, lambda t, hook: seen.append(t.shape))
    model(IDS)
    model.reset_hooks()
    return seen


def seen_by_hook_point(model: Any) -> list[Any]:  # as TransformerLens code does
    seen: list[Any] = []
    model.hook_dict[HEAD].add_hook(lambda t, hook: seen.append(t.shape))
    model(IDS)
    model.reset_hooks()
    return seen


def seen_by_run_with_cache(model: Any) -> list[Any]:
    return [model.run_with_cache(IDS, names_filter=HEAD)[1][HEAD].shape]


def seen_by_capture(model: Any) -> list[Any]:
    with capture(model, HEAD) as acts:
        model(IDS)
    return [acts[HEAD].shape]


def seen_by_trace(model: Any) -> list[Any]:
    with trace(model) as tr:
        model(IDS)
    return [e.outputs[0] for e in tr.events if e.module == "lm_head"]


ROUTES: dict[str, Callable[[Any], list[Any]]] = {
    "run_with_hooks": seen_by_run_with_hooks,
    "hooks_with_a_filter": seen_by_hooks,
    "add_hook": seen_by_add_hook,
    "hook_dict_add_hook": seen_by_hook_point,
    "run_with_cache": seen_by_run_with_cache,
    "capture": seen_by_capture,
    "trace": seen_by_trace,
}


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_sees_the_new_lm_head_after_resize_token_embeddings(route: str) -> None:
    model = untied_llama()
    old_head = model.lm_head
    model.resize_token_embeddings(100)
    assert model.lm_head is not old_head  # transformers put a new module in place
    assert torch_hook_count(model) == 0  # idle: noticing the change placed nothing
    seen = ROUTES[route](model)
    assert [tuple(s) if not isinstance(s, str) else s for s in seen] in (
        [(1, 6, 100)],
        ["float32[1, 6, 100]"],
    )
    assert torch_hook_count(model) == 0


def test_hooks_added_before_the_change_move_to_the_new_module() -> None:
    model = untied_llama()
    seen: list[Any] = []
    model.add_perma_hook(HEAD, lambda t, hook: seen.append(t.shape[-1]))
    hook_point = model.hook_dict[HEAD]
    model.resize_token_embeddings(100)
    model(IDS)  # a plain call: no route of ours ran before it
    assert seen == [100]
    assert model.hook_dict[HEAD] is hook_point  # the same HookPoint, hooks and all
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 0


def test_a_pruned_parameter_site_that_holds_a_hook_is_an_error_until_the_hook_goes() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    x = torch.randn(2, 8)
    model.add_perma_hook("W_enc.hook_point", lambda w, hook: w * 0)
    prune.l1_unstructured(model, "W_enc", amount=0.5)  # W_enc becomes W_enc_orig * mask
    for run in (
        lambda: model(x),
        lambda: model.run_with_cache(x),
        lambda: model.run_until("hook_point", x),
    ):
        with pytest.raises(StructureChangedError, match=r"'W_enc.hook_point'.*setup\(\)"):
            run()
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 1  # pruning's own pre-hook
    expected = model(x)  # now usable again, with a site for the renamed parameter
    halved = model.run_with_hooks(x, fwd_hooks=[("W_enc_orig.hook_point", lambda w, hook: w * 0)])
    assert not torch.equal(halved, expected)  # the hook's value is what pruning multiplied
    assert "W_enc.hook_point" not in model.hook_dict


def test_setup_clears_the_error_too() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    model.add_perma_hook("W_dec.hook_point", lambda w, hook: w)
    parametrize.register_parametrization(model, "W_dec", nn.Identity())
    with pytest.raises(StructureChangedError):
        model(torch.randn(2, 8))
    model.setup()
    assert "parametrizations.W_dec.0.hook_point" in model.hook_dict
    model(torch.randn(2, 8))
    assert torch_hook_count(model) == 0


class Doubler(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2


def test_a_parametrization_gets_a_site_and_the_module_keeps_its_own() -> None:
    model = untied_llama()
    target = model.model.layers[0].mlp.down_proj
    parametrize.register_parametrization(target, "weight", Doubler())
    name = "model.layers.0.mlp.down_proj.parametrizations.weight.0.hook_point"
    _, cache = model.run_with_cache(
        IDS, names_filter=[name, "model.layers.0.mlp.down_proj.hook_point"]
    )
    assert torch.equal(cache[name], target.parametrizations.weight.original * 2)
    assert cache["model.layers.0.mlp.down_proj.hook_point"].shape == (1, 6, 32)


def test_deleting_a_layer_moves_names_with_paths() -> None:
    model = untied_llama()
    second = model.model.layers[1]
    seen: list[str] = []
    with capture(model, "model.layers.*.hook_point") as before:
        model(IDS)
    del model.model.layers[0]  # no torch registration: the paths shift silently
    model.config.num_hidden_layers = 1
    second.self_attn.layer_idx = 0
    out, cache = model.run_with_cache(IDS, names_filter=lambda n: n.startswith("model.layers."))
    assert "model.layers.1.hook_point" not in model.hook_dict
    assert model.hook_sites["model.layers.0.hook_point"].module is second
    model.run_with_hooks(
        IDS, fwd_hooks=[("model.layers.0.hook_point", lambda t, hook: seen.append(hook.name))]
    )
    assert seen == ["model.layers.0.hook_point"]
    assert len(before) == 2 and torch_hook_count(model) == 0


def test_a_module_replaced_by_assignment_is_followed_by_an_observer_already_active() -> None:
    torch.manual_seed(0)
    model = auto_hook(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    x = torch.randn(3, 4)
    with capture(model, "2.hook_point", append=True) as acts:
        model(x)
        model[2] = nn.Linear(4, 5)  # replaced while captured
        model(x)
    assert [t.shape[-1] for t in acts["2.hook_point"]] == [2, 5]
    assert torch_hook_count(model) == 0


def test_a_hook_on_a_hook_point_taken_before_its_site_went_is_refused() -> None:
    torch.manual_seed(0)
    model = auto_hook(AutoEncoder())
    x = torch.randn(2, 8)
    stale = model.hook_dict["W_enc.hook_point"]
    prune.l1_unstructured(model, "W_enc", amount=0.5)
    stale.add_hook(lambda w, hook: w * 0)  # the model has not been looked at since
    with pytest.raises(StructureChangedError, match="'W_enc.hook_point'"):
        model(x)
    model.reset_hooks()
    assert "W_enc.hook_point" not in model.hook_dict  # looked at: the site is gone
    with pytest.raises(StructureChangedError, match="no longer a site.*hook_dict again"):
        stale.add_hook(lambda w, hook: w * 0)
    model(x)
