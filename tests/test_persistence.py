"""A hooked model pickles: torch.save(model), pickle and copy.deepcopy give it back hooked."""

from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from plain_models import Nested
from torch import nn

from auto_hookpoint import HookedModule, auto_hook, capture
from auto_hookpoint.hooked import _INSTANCE_CLASSES

IDS = ARCHS["llama"].inputs()["input_ids"]


def halve(tensor: torch.Tensor, hook: object) -> torch.Tensor:
    return tensor / 2


def _torch_round_trip(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "round_trip",
    [_torch_round_trip, lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy],
    ids=["torch.save", "pickle", "deepcopy"],
)
def test_a_hooked_model_comes_back_hooked_and_computing_the_same(round_trip) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = auto_hook(ARCHS["llama"].build().eval())
    expected = model(input_ids=IDS).logits
    loaded = round_trip(model)
    assert loaded is not model and type(loaded) is type(model)
    assert isinstance(loaded, HookedModule) and list(loaded.hook_dict) == list(model.hook_dict)
    assert torch_hook_count(loaded) == 0  # idle, as the original
    assert torch.equal(loaded(input_ids=IDS).logits, expected)
    out, cache = loaded.run_with_cache(input_ids=IDS, names_filter="model.layers.0.hook_point")
    assert torch.equal(out.logits, expected) and list(cache) == ["model.layers.0.hook_point"]
    seen: list[str] = []
    loaded.add_hook("model.layers.1.hook_point", lambda t, hook: seen.append("loaded"))
    model(input_ids=IDS)
    assert seen == []  # a hook on the loaded copy is its own
    loaded(input_ids=IDS)
    assert seen == ["loaded"]
    plain = loaded.unwrap()
    assert type(plain) is type(model).__auto_hook_original__ and torch_hook_count(plain) == 0


def test_a_model_holding_hooks_is_refused_saying_how_to_save_it() -> None:
    model = auto_hook(Nested())
    model.add_perma_hook("blocks.0.attn.hook_point", halve)
    fix = r"reset_hooks\(including_permanent=True\).*state_dict"
    with pytest.raises(pickle.PicklingError, match=r"\(blocks.0.attn.hook_point\)(.|\n)*" + fix):
        _torch_round_trip(model)
    model.reset_hooks(including_permanent=True)
    with pytest.raises(pickle.PicklingError, match="an observer"), capture(model, "**"):
        pickle.dumps(model)
    assert isinstance(_torch_round_trip(model), HookedModule)
    # copy.deepcopy keeps the hooks (the copy shares the hook functions)
    model.add_perma_hook("blocks.0.attn.hook_point", halve)
    assert torch_hook_count(copy.deepcopy(model)) == torch_hook_count(model) > 0


def test_a_hooked_model_saved_in_one_process_loads_hooked_in_another(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = auto_hook(Nested())
    x = torch.randn(2, 8)
    torch.save({"model": model, "x": x, "expected": model(x)}, tmp_path / "model.pt")
    script = (
        "import sys, torch; sys.path.insert(0, 'tests')\n"
        f"saved = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False)\n"
        "model = saved['model']\n"
        "out, cache = model.run_with_cache(saved['x'], names_filter='blocks.1.attn.hook_point')\n"
        "assert torch.equal(out, saved['expected']), 'output differs'\n"
        "print(type(model).__mro__[1].__name__, sorted(cache))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "HookedModule ['blocks.1.attn.hook_point']"


def test_weights_only_loading_refuses_a_whole_model_as_for_any_module() -> None:
    buffer = io.BytesIO()
    torch.save(auto_hook(Nested()), buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(buffer, weights_only=True)


@auto_hook
class DecoratedNested(Nested):
    pass


def test_instances_of_a_decorated_class_pickle_as_that_class() -> None:
    model = DecoratedNested()
    loaded = _torch_round_trip(model)
    assert type(loaded) is DecoratedNested and "blocks.0.attn.hook_point" in loaded.hook_dict
    assert DecoratedNested not in _INSTANCE_CLASSES.values()
