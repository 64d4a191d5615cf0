"""The auto_hook contract: classes and instances, TransformerLens routes, unwrap, errors."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from plain_models import AutoEncoder, Nested
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from auto_hookpoint import (
    HookedModule,
    HookFunctionError,
    UnknownHookNameError,
    auto_hook,
    unwrap,
)


@auto_hook
class DecoratedAE(AutoEncoder):
    pass


class BiggerAE(DecoratedAE):
    """A subclass of a decorated class that adds a module after super().__init__()."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(super().forward(x))


def llama() -> nn.Module:
    torch.manual_seed(0)
    return ARCHS["llama"].build().eval()


IDS = ARCHS["llama"].inputs()["input_ids"]


def test_decorated_class_instances_come_out_hooked() -> None:
    ae = DecoratedAE()
    assert isinstance(ae, DecoratedAE) and isinstance(ae, AutoEncoder)
    assert isinstance(ae, HookedRootModule) and isinstance(ae, HookedModule)
    assert list(ae.hook_dict) == [
        "hook_point",
        "W_enc.hook_point",
        "b_enc.hook_point",
        "W_dec.hook_point",
        "b_dec.hook_point",
    ]
    assert DecoratedAE.__name__ == "DecoratedAE" and DecoratedAE.__module__ == __name__


def test_subclass_of_decorated_class_is_hooked_after_its_own_init() -> None:
    model = BiggerAE()
    assert "extra.hook_point" in model.hook_dict
    _, cache = model.run_with_cache(torch.randn(2, 8), names_filter="extra.hook_point")
    assert cache["extra.hook_point"].shape == (2, 8)


def test_instance_is_the_same_object_and_still_its_class() -> None:
    model = llama()
    cls = type(model)
    hooked = auto_hook(model)
    assert hooked is model and isinstance(hooked, cls) and isinstance(hooked, HookedRootModule)
    assert type(hooked).__name__ == cls.__name__ == "LlamaForCausalLM"


def test_unwrap_returns_the_original_class_and_object() -> None:
    original_class = DecoratedAE.unwrap()
    assert original_class.__name__ == "DecoratedAE" and issubclass(original_class, AutoEncoder)
    assert not issubclass(original_class, HookedModule)
    ae = DecoratedAE()
    assert type(ae.unwrap()) is original_class
    assert torch_hook_count(ae) == 0 and not hasattr(ae, "hook_dict")

    model = llama()
    cls = type(model)
    assert unwrap(auto_hook(model)) is model and type(model) is cls


def test_unwrap_leaves_no_attribute_and_no_hook_even_with_perma_hooks() -> None:
    model = llama()
    attrs_before = set(vars(model))
    hooked = auto_hook(model)
    hooked.add_perma_hook("model.layers.0.hook_point", lambda t, hook: t)
    hooked.add_hook("model.norm.weight.hook_point", lambda t, hook: t, dir="bwd")
    assert torch_hook_count(hooked) > 0
    hooked.unwrap()
    assert set(vars(model)) == attrs_before
    assert torch_hook_count(model) == 0


def test_applying_twice_warns_and_changes_nothing() -> None:
    model = auto_hook(llama())
    sites = model.hook_dict
    with pytest.warns(UserWarning, match="already auto_hooked"):
        assert auto_hook(model) is model
    assert model.hook_dict is sites
    with pytest.warns(UserWarning, match="already auto_hooked"):
        assert auto_hook(DecoratedAE) is DecoratedAE


@pytest.mark.parametrize("bad", [42, "model", torch.randn(3), int, [nn.Linear(2, 2)]])
def test_non_module_arguments_are_refused_clearly(bad: object) -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        auto_hook(bad)  # type: ignore[call-overload]


def test_colliding_names_are_refused_and_the_model_is_left_untouched() -> None:
    model = nn.Module()
    model.hook_point = HookPoint()  # would collide with the root output site
    model.lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="both be named 'hook_point'"):
        auto_hook(model)
    assert type(model) is nn.Module and not hasattr(model, "hook_dict")


def test_unknown_hook_name_lists_the_closest_real_names() -> None:
    model = auto_hook(llama())
    with pytest.raises(UnknownHookNameError, match="'model.layers.1.mlp.hook_point'") as info:
        model.run_with_hooks(
            input_ids=IDS, fwd_hooks=[("model.layers.1.mlp.hookpoint", lambda t, hook: t)]
        )
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError, match="model.layers.0.hook_point"):
        model.hook_dict["model.layers.0"]  # a module path, not a site name
    assert torch_hook_count(model) == 0


def test_a_raising_hook_is_named_and_every_temporary_hook_is_removed() -> None:
    model = auto_hook(llama())
    expected = model(input_ids=IDS).logits

    def broken(t: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        raise ValueError("deliberate")

    with pytest.raises(
        HookFunctionError,
        match=r"broken at 'model.layers.1.mlp.hook_point' raised ValueError: deliberate",
    ) as info:
        model.run_with_hooks(
            input_ids=IDS,
            fwd_hooks=[
                ("model.layers.0.hook_point", lambda t, hook: t * 2),
                ("model.layers.1.mlp.hook_point", broken),
            ],
        )
    assert isinstance(info.value.__cause__, ValueError)
    assert torch_hook_count(model) == 0
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())
    assert torch.equal(model(input_ids=IDS).logits, expected)  # usable, unchanged


def test_every_route_of_adding_a_hook_makes_it_fire() -> None:
    model = auto_hook(llama())
    name = "model.layers.1.mlp.hook_point"
    fired: list[str] = []

    def record(route: str):  # noqa: ANN202
        return lambda t, hook: fired.append(route)

    model.run_with_hooks(input_ids=IDS, fwd_hooks=[(name, record("run_with_hooks"))])
    with model.hooks(fwd_hooks=[(name, record("hooks()"))]):
        model(input_ids=IDS)
    model.add_hook(name, record("add_hook"))
    model(input_ids=IDS)
    model.reset_hooks()
    model.hook_dict[name].add_hook(record("hook_dict"))  # as TransformerLens code does
    model(input_ids=IDS)
    model.reset_hooks()
    model.add_hook(lambda n: n == name, record("predicate"))
    model(input_ids=IDS)
    model.reset_hooks()
    handle = model.hook_dict[name].register_forward_hook(lambda m, i, o: fired.append("torch"))
    model(input_ids=IDS)
    handle.remove()
    model(input_ids=IDS)
    assert fired == ["run_with_hooks", "hooks()", "add_hook", "hook_dict", "predicate", "torch"]
    assert torch_hook_count(model) == 0


def test_idle_means_no_torch_hooks_and_hooks_sit_only_on_their_module() -> None:
    model = auto_hook(llama())
    assert torch_hook_count(model) == 0
    model.add_perma_hook("model.layers.1.mlp.hook_point", lambda t, hook: t)
    hooked_modules = [n for n, m in model.named_modules() if m._forward_hooks]
    assert hooked_modules == ["model.layers.1.mlp"]
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 0


def test_reset_hooks_keeps_permanent_hooks_as_transformer_lens_does() -> None:
    model = auto_hook(llama())
    seen: list[int] = []
    model.add_perma_hook("model.layers.0.hook_point", lambda t, hook: seen.append(1))
    model.add_hook("model.layers.1.hook_point", lambda t, hook: seen.append(2))
    model.reset_hooks()
    model(input_ids=IDS)
    assert seen == [1]


def test_root_site_fires_in_run_with_hooks() -> None:
    model = auto_hook(llama())
    seen: list[tuple[int, ...]] = []
    model.run_with_hooks(
        input_ids=IDS, fwd_hooks=[("hook_point", lambda t, hook: seen.append(tuple(t.shape)))]
    )
    assert seen == [(2, 8, 96)]


def test_state_dict_round_trips_through_torch_save_and_load_state_dict() -> None:
    model = auto_hook(llama())
    plain = llama()
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = auto_hook(ARCHS["llama"].build().eval())
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(other(input_ids=IDS).logits, model(input_ids=IDS).logits)
    fresh = ARCHS["llama"].build().eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_to_dtype_converts_the_model_and_sites_keep_working() -> None:
    model = auto_hook(llama()).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    _, cache = model.run_with_cache(
        input_ids=IDS, names_filter=["model.layers.0.hook_point", "model.norm.weight.hook_point"]
    )
    assert cache["model.layers.0.hook_point"].dtype == torch.float64
    assert cache["model.norm.weight.hook_point"].dtype == torch.float64


def test_deepcopy_gives_an_independent_hooked_model() -> None:
    model = auto_hook(llama())
    model.add_perma_hook("model.layers.0.hook_point", lambda t, hook: t * 0)
    clone = copy.deepcopy(model)
    model.reset_hooks(including_permanent=True)
    assert torch_hook_count(model) == 0
    assert torch_hook_count(clone) > 0  # the copy kept its own perma hook
    assert not torch.equal(clone(input_ids=IDS).logits, model(input_ids=IDS).logits)
    clone.reset_hooks(including_permanent=True)
    assert torch.equal(clone(input_ids=IDS).logits, model(input_ids=IDS).logits)
    # Hooks on the copy fire on the copy only.
    seen: list[str] = []
    clone.add_hook("model.layers.1.hook_point", lambda t, hook: seen.append("clone"))
    model(input_ids=IDS)
    assert seen == []
    clone(input_ids=IDS)
    assert seen == ["clone"]


def test_setup_finds_sites_of_modules_added_later() -> None:
    model = auto_hook(Nested())
    model.extra = nn.Linear(8, 8)
    assert "extra.hook_point" in model.hook_dict  # found by itself (test_structure_changes)
    model.setup()
    assert "extra.hook_point" in model.hook_dict
    assert isinstance(model, HookedModule) and isinstance(model, Nested)
    _, cache = model.run_with_cache(torch.randn(2, 8), names_filter="extra.hook_point")
    assert set(cache) == set()  # `extra` is not called by Nested.forward
    assert type(model.unwrap()) is Nested


def test_transformer_lens_warnings_stay_quiet_on_normal_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = auto_hook(Nested())
        model.run_with_cache(torch.randn(2, 8))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * scale


def test_input_sites_see_and_replace_each_modules_input() -> None:
    torch.manual_seed(0)
    model = auto_hook(TwoInputs(), inputs=True)
    assert list(model.hook_dict) == ["hook_in", "hook_point", "lin.hook_in", "lin.hook_point"]
    x, scale = torch.randn(2, 4), torch.full((2, 4), 3.0)
    _, cache = model.run_with_cache(x, scale=scale, names_filter=["hook_in", "lin.hook_in"])
    assert torch.equal(cache["hook_in"], x) and torch.equal(cache["lin.hook_in"], x)
    out = model.run_with_hooks(x, scale=scale, fwd_hooks=[("lin.hook_in", lambda t, hook: t * 0)])
    torch.testing.assert_close(out, model.lin.bias.expand(2, 4) * 3.0)
    # keyword-only inputs: the first tensor among the keyword arguments
    _, cache = model.run_with_cache(x=x, scale=scale, names_filter="hook_in")
    assert torch.equal(cache["hook_in"], x)
    assert torch_hook_count(model) == 0


def test_input_sites_on_an_hf_model_and_as_a_decorator() -> None:
    torch.manual_seed(0)
    model = auto_hook(ARCHS["llama"].build().eval(), inputs=True)
    _, cache = model.run_with_cache(
        input_ids=IDS, names_filter=["model.layers.1.hook_in", "model.layers.0.hook_point"]
    )
    assert torch.equal(cache["model.layers.1.hook_in"], cache["model.layers.0.hook_point"])

    @auto_hook(inputs=True)
    class Decorated(TwoInputs):
        pass

    assert "lin.hook_in" in Decorated().hook_dict
