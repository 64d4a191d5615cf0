"""check_auto_hook: passes on sound models, names the failure on broken ones."""

from __future__ import annotations

import json
import random

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS
from plain_models import AutoEncoder, LSTMTagger, Nested, SharedTwice, WithNonTensorOutput
from torch import nn

from auto_hookpoint import auto_hook
from auto_hookpoint.check import AutoHookCheckError, Status, check_auto_hook
from auto_hookpoint.testing import auto_hook_cases


# ----------------------------------------------------------------- sound models
@pytest.mark.parametrize(
    "case", auto_hook_cases(AutoEncoder, {"x": torch.randn(4, 8)}, {"d_in": 8, "d_sae": 16})
)
def test_autoencoder_class_through_the_pytest_helper(case) -> None:  # noqa: ANN001
    case.check()


@pytest.mark.parametrize("arch", ARCHS)
def test_real_architectures_pass(arch: str) -> None:
    spec = ARCHS[arch]
    torch.manual_seed(0)
    report = check_auto_hook(spec.build().eval(), spec.inputs(), strict=True)
    never_called = {
        name for name, why in report["sites_fire"].details.items() if "never called" in why
    }
    assert never_called == set(spec.not_fired)


@pytest.mark.parametrize("model_class", [LSTMTagger, Nested, SharedTwice])
def test_plain_classes_pass(model_class: type[nn.Module]) -> None:
    inputs = (
        {"tokens": torch.randint(0, 20, (2, 5))}
        if model_class is LSTMTagger
        else {"x": torch.randn(3, 8)}
    )
    report = check_auto_hook(model_class, inputs, strict=True)
    assert report["class_and_instance_agree"].status is Status.PASS


def test_shared_module_is_reported_not_failed() -> None:
    report = check_auto_hook(SharedTwice, {"x": torch.randn(3, 8)})
    assert report.ok and report["sites_fire"].status is Status.NOTE
    assert "fires 2 times" in report["sites_fire"].details["shared.hook_point"]


def test_dropout_in_training_mode_is_compared_under_one_seed() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    assert check_auto_hook(model, {"input": torch.randn(4, 8)}).ok


def test_the_users_instance_is_never_changed() -> None:
    model = Nested()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_auto_hook(model, {"x": torch.randn(2, 8)})
    assert type(model) is Nested and not hasattr(model, "hook_dict")
    assert torch_hook_count(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    hooked = auto_hook(Nested())
    check_auto_hook(hooked, {"x": torch.randn(2, 8)})
    assert hasattr(hooked, "hook_dict") and torch_hook_count(hooked) == 0  # still hooked


def test_report_is_a_table_and_data() -> None:
    report = check_auto_hook(WithNonTensorOutput, {"x": torch.randn(3, 8)})
    text = str(report)
    assert text.startswith("check_auto_hook(WithNonTensorOutput): all checks passed")
    assert "NOTE  sites_fire" in text and "count.hook_point" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True
    assert {r["name"] for r in data["results"]} >= {"output_identical", "sites_fire", "deepcopy"}


# ----------------------------------------------------------------- broken models
class ClearsHooksOfItsChild(nn.Module):
    """Removes every hook from a submodule behind auto_hook's back (as some wrappers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inner._forward_hooks.clear()
        return self.out(self.inner(x))


class StochasticDepth(nn.Module):
    """Skips its layer at random using Python's RNG, which no torch seed controls."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x) * random.random()


def test_state_changed_by_the_forward_is_compared_on_fresh_copies() -> None:
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.lin(x) * self.calls

    assert check_auto_hook(Counts, {"x": torch.randn(3, 8)}).ok


def test_a_hook_removed_behind_our_back_is_a_failure_naming_the_site() -> None:
    report = check_auto_hook(ClearsHooksOfItsChild, {"x": torch.randn(3, 8)})
    assert not report.ok
    result = report["sites_fire"]
    assert result.status is Status.FAIL
    assert result.details["inner.hook_point"] == "its module ran 1 time(s) but the site fired 0"
    assert "out.hook_point" not in result.details


def test_a_non_deterministic_forward_is_a_failure_that_says_so() -> None:
    report = check_auto_hook(StochasticDepth, {"x": torch.randn(3, 8)})
    result = report["output_identical"]
    assert result.status is Status.FAIL and "not deterministic" in result.summary


def test_a_site_with_non_tensor_output_is_explained_not_failed() -> None:
    report = check_auto_hook(WithNonTensorOutput, {"x": torch.randn(3, 8)})
    assert report.ok
    assert report["sites_fire"].details == {
        "count.hook_point": "cannot fire: its module's output holds no tensor"
    }


def test_strict_raises_an_assertion_whose_message_is_the_table() -> None:
    with pytest.raises(AutoHookCheckError) as info:
        check_auto_hook(ClearsHooksOfItsChild, {"x": torch.randn(3, 8)}, strict=True)
    assert isinstance(info.value, AssertionError)
    assert "FAIL  sites_fire" in str(info.value) and "inner.hook_point" in str(info.value)
    assert info.value.report["sites_fire"].status is Status.FAIL


def test_inputs_the_model_cannot_take_are_reported_not_raised() -> None:
    report = check_auto_hook(Nested, {"x": torch.randn(3, 5)})
    assert not report.ok and report.results[0].name == "runs"
    assert "mat1 and mat2 shapes cannot be multiplied" in report.results[0].summary


def test_non_module_is_refused() -> None:
    with pytest.raises(TypeError, match="nn.Module class or instance"):
        check_auto_hook(42)
