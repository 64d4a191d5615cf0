"""check_auto_hook: passes on sound models, names the failure on broken ones."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from battery import torch_hook_count
from hf_models import ARCHS, VOCAB, _causal
from plain_models import (
    ArgmaxClassifier,
    AutoEncoder,
    Counter,
    DataclassOutput,
    LSTMTagger,
    MixedDtypes,
    NaNWhereMasked,
    Nested,
    Prediction,
    SharedTwice,
    SmallCNN,
    WithHookPoint,
    WithNonTensorOutput,
    ZeroGatedResidual,
    mlp,
)
from torch import nn
from transformers import LlamaConfig

from auto_hookpoint import HookedModule, auto_hook
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


# ------------------------------------- every zoo model, called the way users call it
def _x() -> dict[str, Any]:
    return {"x": torch.randn(3, 8)}


# name -> (the model, its inputs): every plain model of the test zoo, and the output
# structures and dtypes users bring (dataclasses, non-tensor members, integer outputs,
# NaN on purpose, mixed precision with an upcast loss, a zero-initialised gate).
PLAIN_ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], dict[str, Any]]]] = {
    "mlp": (mlp, lambda: {"input": torch.randn(4, 8)}),
    "cnn_train_mode": (lambda: SmallCNN().train(), lambda: {"x": torch.randn(2, 3, 8, 8)}),
    "lstm": (LSTMTagger, lambda: {"tokens": torch.randint(0, 20, (2, 5))}),
    "autoencoder": (AutoEncoder, _x),
    "nested": (Nested, _x),
    "shared_twice": (SharedTwice, _x),
    "hand_placed_hook_point": (WithHookPoint, _x),
    "no_tensor_at_all": (Counter, _x),
    "non_tensor_member": (WithNonTensorOutput, _x),
    "dataclass_output": (DataclassOutput, _x),
    "mixed_dtypes": (
        MixedDtypes,
        lambda: {"x": torch.randn(3, 8), "target": torch.tensor([0, 3, 1])},
    ),
    "zero_gated_residual": (ZeroGatedResidual, _x),
    "nan_on_purpose": (
        NaNWhereMasked,
        lambda: {"x": torch.randn(2, 4, 8), "mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]]) > 0},
    ),
    "integer_output": (ArgmaxClassifier, _x),
    "frozen": (lambda: Nested().requires_grad_(False), _x),
    "dropout_train_mode": (
        lambda: nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train(),
        lambda: {"input": torch.randn(4, 8)},
    ),
}


@pytest.mark.parametrize("name", PLAIN_ZOO)
def test_every_plain_zoo_model_passes(name: str) -> None:
    make, inputs = PLAIN_ZOO[name]
    torch.manual_seed(0)
    check_auto_hook(make(), inputs(), strict=True)


def _as_users_call_it(arch: str) -> tuple[nn.Module, dict[str, Any]]:
    """In training mode (dropout active), with labels where the model takes them."""
    torch.manual_seed(0)
    model = ARCHS[arch].build().train()
    inputs = ARCHS[arch].inputs()
    if arch != "bert":  # a BertModel has no head, so no labels
        inputs["labels"] = inputs.get("decoder_input_ids", inputs["input_ids"]).clone()
    return model, inputs


@pytest.mark.parametrize("arch", ARCHS)
def test_real_architectures_called_with_labels_in_training_mode_pass(arch: str) -> None:
    # transformers computes the loss in float32 whatever the model's dtype: the hooked
    # model's cache holds float32 there, as the model produced (was: a false FAIL).
    model, inputs = _as_users_call_it(arch)
    report = check_auto_hook(model, inputs, strict=True)
    if arch != "mixtral":  # Mixtral's grouped matmul has no float64 kernel: a SKIP
        assert report["to_dtype"].status is Status.PASS


def test_llama_with_attention_dropout_in_bfloat16_with_labels_passes() -> None:
    torch.manual_seed(0)
    build = _causal(LlamaConfig, num_hidden_layers=2, attention_dropout=0.3)
    model = build().to(torch.bfloat16).train()
    ids = torch.randint(0, VOCAB, (2, 8))
    report = check_auto_hook(model, {"input_ids": ids, "labels": ids}, strict=True)
    assert report["output_identical"].status is Status.PASS


def test_an_edit_without_effect_is_a_note_where_autograd_cannot_say_it_should_matter() -> None:
    report = check_auto_hook(ZeroGatedResidual, _x(), edit_sample=10)
    assert report.ok
    assert "gradient is zero" in report["edits_change_output"].details["branch.hook_point"]
    frozen = check_auto_hook(Nested().requires_grad_(False), _x())
    assert frozen["edits_change_output"].status is Status.PASS  # asked of autograd all the same
    assert frozen["backward_hooks_fire"].status is Status.SKIP


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
    assert "the un-hooked model raises on these inputs" in report.results[0].summary


def test_non_module_is_refused() -> None:
    with pytest.raises(TypeError, match="nn.Module class or instance"):
        check_auto_hook(42)


# Each of these computes something else once hooked; the check must say where.
class DataclassChangesWhenHooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> Prediction:
        hidden = self.body(x)
        if isinstance(self, HookedModule):
            hidden = hidden * 2
        return Prediction(self.head(hidden), hidden)


class LabelChangesWhenHooked(DataclassOutput):
    def forward(self, x: torch.Tensor) -> Prediction:
        out = super().forward(x)
        out.label = "hooked" if isinstance(self, HookedModule) else "plain"
        return out


class CountsTheHooksOnItsChild(nn.Module):
    """A non-tensor member of the output changes when a hook is on its child."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return {"out": self.lin(x), "hooks": len(self.lin._forward_hooks)}


@pytest.mark.parametrize(
    ("model", "check", "where"),
    [
        (DataclassChangesWhenHooked, "output_identical", "<output>.logits: values differ"),
        (LabelChangesWhenHooked, "output_identical", "<output>.label: 'plain' != 'hooked'"),
        (CountsTheHooksOnItsChild, "identity_hooks_identical", "<output>.hooks: 0 != 1"),
    ],
)
def test_a_model_computing_something_else_once_hooked_fails_naming_where(
    model: type[nn.Module], check: str, where: str
) -> None:
    report = check_auto_hook(model, _x())
    assert not report.ok
    result = report[check]
    assert result.status is Status.FAIL and where in str(result.summary) + str(result.details)


def test_a_dataclass_output_is_checked_through_its_fields() -> None:
    report = check_auto_hook(DataclassOutput, _x(), strict=True)
    assert report["backward_hooks_fire"].status is Status.PASS  # the loss reads its fields
