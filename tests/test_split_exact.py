"""Split is exact or refuses: during resume_from the skipped blocks stay silent, every
other site and every output field equals the un-split forward's, and whatever cannot be
known (mismatched activations, values of skipped blocks) is refused, saying which."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from hf_models import ARCHS
from plain_models import Residual
from torch import nn

from auto_hookpoint import EarlyOutput, ResumeError, auto_hook, capture
from auto_hookpoint.core.attached import core_of

STACKS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}
CASES = [(arch, k) for arch in STACKS for k in (0, 1)]  # every split point (2 layers each)


def build(arch: str) -> Any:
    torch.manual_seed(0)
    return auto_hook(ARCHS[arch].build().eval())


def block_site(arch: str, i: int) -> str:
    return f"{STACKS[arch]}.{i}.hook_point"


def inside_skipped(arch: str, k: int, name: str) -> bool:
    return any(name.startswith(f"{STACKS[arch]}.{i}.") for i in range(k + 1))


def assert_clean(model: Any) -> None:
    # (transformers adds hooks of its own for output_hidden_states, and keeps them)
    assert core_of(model).installed_hook_count() == 0
    assert not [p for p, m in model.named_modules() if "forward" in m.__dict__]


@pytest.mark.parametrize(("arch", "k"), CASES)
def test_skipped_blocks_stay_silent_and_every_other_site_fires_as_unsplit(
    arch: str, k: int
) -> None:
    model, inputs = build(arch), ARCHS[arch].inputs()
    with torch.no_grad():
        with capture(model, "**") as unsplit:
            model(**inputs)
        early = model.run_until(block_site(arch, k), **inputs)
        hooked: list[str] = []
        record = [(lambda name: True, lambda t, hook: hooked.append(hook.name))]
        with capture(model, "**") as resumed, model.hooks(fwd_hooks=record):
            model.resume_from(block_site(arch, k), early, **inputs)
    expected = {name for name in unsplit if not inside_skipped(arch, k, name)}
    assert set(resumed) == expected  # observers: not one site of blocks 0..k
    assert set(hooked) == expected  # hooks: the same
    differ = [name for name in expected if not torch.equal(resumed[name], unsplit[name])]
    assert not differ, differ[:3]
    assert_clean(model)


def _tensors(value: Any) -> list[torch.Tensor]:
    return list(value) if isinstance(value, tuple) else [value]


@pytest.mark.parametrize(("arch", "k"), CASES)
def test_every_output_field_equals_the_unsplit_forward(arch: str, k: int) -> None:
    model, inputs = build(arch), ARCHS[arch].inputs()
    asks = {"labels": inputs["input_ids"], "output_hidden_states": True}
    site = block_site(arch, k)
    with torch.no_grad():
        unsplit = model(**inputs, **asks)
        early = model.run_until(site, **inputs, bank=[block_site(arch, i) for i in range(k)])
        resumed = model.resume_from(site, early, **inputs, **asks)
        as_tuple = model.resume_from(site, early, **inputs, **asks, return_dict=False)
    assert set(unsplit.keys()) == {"loss", "logits", "past_key_values", "hidden_states"}
    assert resumed.past_key_values is None  # blocks 0..k computed no keys and values
    for position, field in enumerate(unsplit.keys()):
        if field == "past_key_values":
            assert as_tuple[position] is None
            continue
        for want, got, got_too in zip(
            _tensors(unsplit[field]), _tensors(resumed[field]), _tensors(as_tuple[position]),
            strict=True,
        ):  # fmt: skip
            assert torch.equal(want, got) and torch.equal(want, got_too), field
    assert_clean(model)


@pytest.mark.parametrize("arch", STACKS)
def test_values_of_skipped_blocks_are_refused_before_anything_runs(arch: str) -> None:
    from transformers import DynamicCache

    model, inputs = build(arch), ARCHS[arch].inputs()
    site = block_site(arch, 1)
    early = model.run_until(site, **inputs)
    cache = DynamicCache(config=model.config)
    refused = {
        "bank": {"output_hidden_states": True},  # block 0's output was not banked
        "attentions": {"output_attentions": True},
        "KV cache": {"use_cache": True},
        "past_key_values": {"past_key_values": cache},
    }
    for message, asks in refused.items():
        with pytest.raises(ResumeError, match=message):
            model.resume_from(site, early, **inputs, **asks)
    assert cache.get_seq_length() == 0  # the caller's cache was not touched
    model.config.output_hidden_states = True  # asked by the config, not the call
    with pytest.raises(ResumeError, match="hidden_states"):
        model.resume_from(site, early, **inputs)
    with pytest.raises(ResumeError, match=r"at \[2\]\[1\], a value computed from .* block"):
        model.resume_from(site, early, **inputs, return_dict=False)  # a tuple: found anyway
    model.config.output_hidden_states = False
    assert_clean(model)
    with torch.no_grad():
        assert torch.equal(model.resume_from(site, early, **inputs).logits, model(**inputs).logits)


def test_mismatched_activations_are_refused_saying_which() -> None:
    model = build("llama")
    ids = ARCHS["llama"].inputs()["input_ids"]
    site, mask = block_site("llama", 0), torch.ones_like(ids)
    early = model.run_until(site, input_ids=ids, attention_mask=mask)
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (early, {"input_ids": ids[:1], "attention_mask": mask[:1]}, "batch size differs"),
        (early.activation[:1], {"input_ids": ids}, "batch size 1"),
        (early, {"input_ids": ids[:, :6], "attention_mask": mask[:, :6]}, "shape differs"),
        (early, {"input_ids": ids}, "attention_mask was given when the activation was banked"),
        (early.to(torch.float64), {"input_ids": ids, "attention_mask": mask}, "dtype differs"),
        (early.to("meta"), {"input_ids": ids, "attention_mask": mask}, "device differs"),
    ]
    for activation, inputs, message in cases:
        with pytest.raises(ResumeError, match=message):
            model.resume_from(site, activation, **inputs)
    assert_clean(model)
    # Inputs passed by position when banked and by name when resuming are the same inputs.
    positional = model.run_until(site, ids, mask)
    with torch.no_grad():
        expected = model(ids, mask).logits
        assert torch.equal(
            model.resume_from(site, positional, input_ids=ids, attention_mask=mask).logits, expected
        )


class EveryBlockOut(nn.Module):
    """Returns every block's output too (as output_hidden_states does), and scales each
    block's output in place on the way, so that aliasing would show."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Residual() for _ in range(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = []
        for block in self.blocks:
            x = block(x)
            x.mul_(0.5)
            outs.append(x.clone())
        return x, outs


@pytest.mark.parametrize("k", range(4))
def test_a_plain_stack_exposing_its_blocks_is_exact_when_banked_and_refused_if_not(k: int) -> None:
    torch.manual_seed(0)
    model, x = auto_hook(EveryBlockOut()), torch.randn(3, 8)
    with torch.no_grad():
        final, outs = model(x)
        site = f"blocks.{k}.hook_point"
        early = model.run_until(site, x, bank=[f"blocks.{i}.hook_point" for i in range(k)])
        kept = {name: t.clone() for name, t in early.activations.items()}
        for _ in range(2):  # twice: the banked tensors are not changed by resuming
            again, again_outs = model.resume_from(site, early, x)
            assert torch.equal(again, final)
            assert all(torch.equal(a, b) for a, b in zip(again_outs, outs, strict=True))
        assert all(torch.equal(early.activations[n], t) for n, t in kept.items())
        if k:
            bare = EarlyOutput(**{**early.__dict__, "activations": {site: early.activation}})
            with pytest.raises(
                ResumeError,
                match=r"at \[1\]\[0\], a value computed from the output of a skipped block",
            ):
                model.resume_from(site, bare, x)
    assert_clean(model)


def test_a_resume_in_one_thread_leaves_a_forward_in_another_alone() -> None:
    model, inputs = build("llama"), ARCHS["llama"].inputs()
    site = block_site("llama", 0)
    with torch.no_grad():
        expected = model(**inputs).logits
        early = model.run_until(site, **inputs)
    resuming, other_done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def wait_for_the_other(t: torch.Tensor, hook: Any) -> None:
        resuming.set()  # block 0 stands in now, in this thread only
        assert other_done.wait(60)

    def resume() -> None:
        hooks = [("model.layers.1.hook_point", wait_for_the_other)]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            results["resumed"] = model.resume_from(site, early, **inputs).logits

    def plain_forward() -> None:
        assert resuming.wait(60)
        with torch.no_grad(), capture(model, site) as acts:
            results["other"] = model(**inputs).logits
        results["other layer 0"] = acts[site]
        other_done.set()

    threads = [threading.Thread(target=resume), threading.Thread(target=plain_forward)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert torch.equal(results["resumed"], expected)
    assert torch.equal(results["other"], expected)  # computed all blocks itself
    assert torch.equal(results["other layer 0"], early.activation)  # and its sites fired
    assert_clean(model)
