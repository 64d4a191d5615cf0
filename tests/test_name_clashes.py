"""A model's own attributes are never shadowed silently by the names a hooked model gains.

The names are found here independently (what ``dir`` shows on a hooked model and not on
the plain one), so a name added to HookedModule later is covered without editing this
file. For each: a method of the model's own class, and a submodule of the instance,
under that name win (with a NameClashWarning naming it) while auto_hookpoint's own keep
working; a name auto_hook must store is refused before anything changes.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from battery import torch_hook_count
from torch import nn

from auto_hookpoint import (
    HookedModule,
    check_auto_hook,
    unwrap,
)
from auto_hookpoint import (
    auto_hook as hook,
)
from auto_hookpoint.errors import NameClashError, NameClashWarning
from auto_hookpoint.hooked import ADDED
from auto_hookpoint.name_clashes import STORED_NAMES


def _added_by_auto_hook() -> set[str]:
    plain, hooked = nn.Linear(2, 2), hook(nn.Linear(2, 2))
    added = set(dir(hooked)) - set(dir(plain))
    return {n for n in added if not (n.startswith("__") and n.endswith("__"))}


ADDED_NAMES = sorted(_added_by_auto_hook() | {"_auto_hook_init_depth"})
STORED = sorted(n for n in ADDED_NAMES if n in STORED_NAMES)
METHODS = sorted(n for n in ADDED_NAMES if n not in STORED_NAMES)


def test_every_name_a_hooked_model_gains_is_known_to_the_clash_rule() -> None:
    assert set(METHODS) == set(ADDED), "a method was added without the name-clash rule"
    assert {"setup", "hooks", "unwrap", "run_with_cache", "hook_dict"} <= set(ADDED_NAMES)
    assert len(METHODS) >= 20 and set(STORED) == STORED_NAMES


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _theirs(self: Any, *args: Any, **kwargs: Any) -> tuple[str, tuple[Any, ...]]:
    return ("theirs", args)


X = torch.randn(2, 8)


def _ours_still_work(model: Any, site: str = "lin.hook_point") -> None:
    """auto_hookpoint's own methods, reached explicitly, do their job."""
    expected = model(X)
    out, cache = HookedModule.run_with_cache(model, X, names_filter=site)
    assert torch.equal(out, expected) and list(cache) == [site]
    zeroed = HookedModule.run_with_hooks(model, X, fwd_hooks=[(site, lambda t, hook: t * 0)])
    assert not torch.equal(zeroed, expected)
    assert torch_hook_count(model) == 0


@pytest.mark.parametrize("name", METHODS)
def test_a_method_of_the_models_class_wins_with_a_warning(name: str) -> None:
    own = type(f"Defines_{name}", (Small,), {name: _theirs})
    match = rf"{re.escape(name)} \(Defines_{re.escape(name)} defines it; auto_hookpoint's: "
    with pytest.warns(NameClashWarning, match=match):
        model = hook(own())
    assert getattr(model, name)(1) == ("theirs", (1,))
    _ours_still_work(model)
    unwrap(model)
    assert type(model) is own and getattr(model, name)(2) == ("theirs", (2,))
    with pytest.warns(NameClashWarning, match=match):
        decorated = hook(own)
    assert getattr(decorated(), name)(3) == ("theirs", (3,))


@pytest.mark.parametrize("name", METHODS)
def test_a_submodule_under_that_name_wins_with_a_warning(name: str) -> None:
    class Holds(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add_module(name, nn.Linear(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return getattr(self, name)(x)

    torch.manual_seed(0)
    model = Holds()
    expected = model(X)
    with pytest.warns(NameClashWarning, match=rf"{re.escape(name)} \(a submodule"):
        hook(model)
    assert isinstance(getattr(model, name), nn.Linear)
    assert torch.equal(model(X), expected)
    _ours_still_work(model, f"{name}.hook_point")


@pytest.mark.parametrize("name", STORED)
@pytest.mark.parametrize("where", ["class", "instance"])
def test_a_name_auto_hook_stores_is_refused_and_nothing_changes(name: str, where: str) -> None:
    if where == "class":
        model = type(f"Has_{name}", (Small,), {name: property(lambda self: "theirs")})()
    else:
        model = Small()
        model.__dict__[name] = "theirs"
    plain_class = type(model)
    with pytest.raises(NameClashError, match=rf"'{re.escape(name)}'.*rename yours"):
        hook(model)
    assert type(model) is plain_class and torch_hook_count(model) == 0
    assert getattr(model, name) == "theirs"


# ----------------------------------------------------------- a Lightning-style module
class LitClassifier(nn.Module):
    """The shape of a ``lightning.LightningModule``: setup(stage), steps, optimizers."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)
        self.stages: list[str] = []

    def setup(self, stage: str) -> None:
        self.stages.append(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(model: LitClassifier) -> list[float]:
    """What a trainer does: setup("fit"), then optimizer steps."""
    model.setup("fit")
    optimizer = model.configure_optimizers()
    batch = (torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model.training_step(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_lightning_style_module_trains_hooked_as_it_does_plain() -> None:
    torch.manual_seed(0)
    plain = LitClassifier()
    torch.manual_seed(0)
    with pytest.warns(NameClashWarning, match=r"setup \(LitClassifier defines it"):
        model = hook(LitClassifier())
    assert _fit(model) == _fit(plain)
    assert model.stages == ["fit"]  # its own setup ran, not auto_hookpoint's
    acts: list[torch.Tensor] = []
    with HookedModule.hooks(
        model, fwd_hooks=[("encoder.hook_point", lambda t, hook: acts.append(t))]
    ):
        model.training_step((X, torch.tensor([0, 1])))
    assert len(acts) == 1 and acts[0].shape == (2, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NameClashWarning)
        report = check_auto_hook(LitClassifier, {"x": X}, strict=True)
    assert report["class_and_instance_agree"].status.value == "pass"
