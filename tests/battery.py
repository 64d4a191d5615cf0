"""The checks every hooked model must pass, shared by the plain and HF model tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from auto_hookpoint import auto_hook
from auto_hookpoint.core.structure import find_primary, get_at, tensors_with_paths
from auto_hookpoint.site_report import SiteStatus, describe_sites


def primary(output: Any) -> torch.Tensor:
    path = find_primary(output)
    assert path is not None, f"no tensor in {type(output)}"
    return get_at(output, path)


def tensors_in(output: Any) -> list[torch.Tensor]:
    return [tensor for _, tensor in tensors_with_paths(output)]


def assert_bit_identical(expected: Any, got: Any) -> None:
    want, have = tensors_in(expected), tensors_in(got)
    assert len(want) == len(have) > 0
    for a, b in zip(want, have, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a, b), "hooked output differs from the original's"


def torch_hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def default_loss(output: Any) -> torch.Tensor:
    return primary(output).float().pow(2).mean()


def check_hooked_model(
    model: nn.Module,
    inputs: Mapping[str, Any],
    middle_site: str,
    not_fired: Mapping[str, SiteStatus] | None = None,
    loss: Callable[[Any], torch.Tensor] = default_loss,
) -> None:
    """Hook a copy of ``model`` and check it against the original, in place.

    ``not_fired``: the sites expected not to fire, with why (no tensor / not called).
    """
    original = copy.deepcopy(model)
    expected = original(**inputs)
    names_before = [n for n, _ in model.named_parameters()]
    keys_before = list(model.state_dict())
    original_class = type(model)

    hooked = auto_hook(model)
    assert hooked is model and isinstance(hooked, original_class)
    assert torch_hook_count(hooked) == 0, "an idle hooked model must carry no torch hooks"

    # 1. bit-identical with nothing active
    assert_bit_identical(expected, hooked(**inputs))

    # 2. every site fires, except those expected not to (and told why)
    records = describe_sites(hooked, **inputs)
    silent = {r.name: r.status for r in records if r.status is not SiteStatus.FIRED}
    assert silent == dict(not_fired or {})
    fired = {r.name: r for r in records if r.status is SiteStatus.FIRED}

    # 3. run_with_cache returns every firing site, with the shape seen in the forward
    out, cache = hooked.run_with_cache(**inputs)
    assert_bit_identical(expected, out)
    assert set(cache) == set(fired)
    for name, record in fired.items():
        assert tuple(cache[name].shape) == record.shape, name
    assert torch_hook_count(hooked) == 0

    # 4. an editing hook changes the output
    edited = hooked.run_with_hooks(**inputs, fwd_hooks=[(middle_site, lambda t, hook: t + 1.0)])
    assert not torch.equal(primary(edited), primary(expected))

    # 5. a backward hook on a middle site fires in loss.backward()
    grads: list[torch.Tensor] = []
    with hooked.hooks(bwd_hooks=[(middle_site, lambda g, hook: grads.append(g))]):
        loss(hooked(**inputs)).backward()
    assert grads and tuple(grads[0].shape) == fired[middle_site].shape
    hooked.zero_grad()

    # 6. unwrap leaves nothing behind
    unwrapped = hooked.unwrap()
    assert unwrapped is model and type(unwrapped) is original_class
    assert torch_hook_count(unwrapped) == 0
    assert not [k for k in vars(unwrapped) if "hook" in k and not k.startswith("_")]
    assert [n for n, _ in unwrapped.named_parameters()] == names_before
    assert list(unwrapped.state_dict()) == keys_before
    assert_bit_identical(expected, unwrapped(**inputs))
