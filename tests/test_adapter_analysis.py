"""Everyday TransformerLens analysis runs unchanged on the adapter and agrees with
HookedTransformer on the same weights: residual decomposition and logit attribution
(``ActivationCache``), activation and head patching (``transformer_lens.patching``),
steering during generation, and gradients in the cache.

Three families cover what differs for these functions: GPT-2 (LayerNorm: the stacks
are centred; a learned position embedding), Llama (RMSNorm, grouped-query attention)
and Gemma-2 (norms after each sublayer, so hook_attn_out / hook_mlp_out are what the
block adds only if taken after them).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformer_lens.patching as patching
from tl_twin import SEQ, VOCAB, build, twin

from auto_hookpoint.adapter import HookedTransformerAdapter

pytestmark = pytest.mark.tl3  # the oracle is HookedTransformer


CLEAN = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(5))
CORRUPT = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(6))
ANSWERS = torch.tensor([3, 7])
WRONG = torch.tensor([11, 13])


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def caches(request: pytest.FixtureRequest) -> tuple:
    model = build(request.param)
    adapter, oracle = HookedTransformerAdapter(model, None), twin(model)
    with torch.no_grad():
        ours = adapter.run_with_cache(CLEAN)[1]
        theirs = oracle.run_with_cache(CLEAN)[1]
    return adapter, oracle, ours, theirs


def test_residual_decomposition_and_logit_attribution(caches: tuple) -> None:
    _, _, ours, theirs = caches
    for apply_ln in (False, True):
        stack, labels = ours.decompose_resid(apply_ln=apply_ln, return_labels=True)
        expected, expected_labels = theirs.decompose_resid(apply_ln=apply_ln, return_labels=True)
        assert labels == expected_labels
        close(stack, expected)
        accumulated, labels = ours.accumulated_resid(
            incl_mid=True, apply_ln=apply_ln, return_labels=True
        )
        expected_accumulated, expected_labels = theirs.accumulated_resid(
            incl_mid=True, apply_ln=apply_ln, return_labels=True
        )
        assert labels == expected_labels
        close(accumulated, expected_accumulated)
    # The components add up to the residual stream: Gemma-2's attn_out / mlp_out are after
    # its post-norms, GPT-2's pos_embed has a batch dimension.
    close(ours.decompose_resid().sum(0), ours["blocks.1.hook_resid_post"])
    heads, labels = ours.stack_head_results(layer=-1, return_labels=True, apply_ln=True)
    expected_heads, expected_labels = theirs.stack_head_results(
        layer=-1, return_labels=True, apply_ln=True
    )
    assert labels == expected_labels
    close(heads, expected_heads)
    final = ours.accumulated_resid(layer=-1)[-1]
    close(
        ours.apply_ln_to_stack(final[None], layer=-1),
        theirs.apply_ln_to_stack(final[None], layer=-1),
    )
    close(
        ours.logit_attrs(ours.decompose_resid(pos_slice=-1), ANSWERS, WRONG, pos_slice=-1),
        theirs.logit_attrs(theirs.decompose_resid(pos_slice=-1), ANSWERS, WRONG, pos_slice=-1),
    )


def _logit_difference(logits: torch.Tensor) -> torch.Tensor:
    final = logits[:, -1]
    return (final.gather(1, ANSWERS[:, None]) - final.gather(1, WRONG[:, None])).mean()


@pytest.mark.parametrize(
    "patch",
    [
        patching.get_act_patch_resid_pre,
        patching.get_act_patch_attn_out,
        patching.get_act_patch_mlp_out,
        patching.get_act_patch_attn_head_out_all_pos,
        patching.get_act_patch_attn_head_pattern_all_pos,
        patching.get_act_patch_attn_head_q_all_pos,
    ],
    ids=lambda f: f.func.__name__ if hasattr(f, "func") else f.__name__,
)
def test_activation_and_head_patching(caches: tuple, patch: Callable) -> None:
    adapter, oracle, ours, theirs = caches
    with torch.no_grad():
        result = patch(adapter, CORRUPT, ours, _logit_difference)
        expected = patch(oracle, CORRUPT, theirs, _logit_difference)
    assert result.abs().max() > 1e-4  # patching changed something
    close(result, expected)


def test_steering_with_add_hook_during_generate(caches: tuple) -> None:
    adapter, oracle, _, _ = caches
    direction = torch.randn(adapter.cfg.d_model, generator=torch.Generator().manual_seed(9))

    def steer(resid: torch.Tensor, hook: object) -> torch.Tensor:
        return resid + 4 * direction

    prompts = CLEAN[:, :4]
    for use_cache in (True, False):
        plain = adapter.generate(
            prompts, max_new_tokens=4, do_sample=False, use_past_kv_cache=use_cache,
            verbose=False, stop_at_eos=False,
        )  # fmt: skip
        adapter.hook_dict["blocks.0.hook_resid_post"].add_hook(steer)
        oracle.hook_dict["blocks.0.hook_resid_post"].add_hook(steer)
        try:
            steered = adapter.generate(
                prompts, max_new_tokens=4, do_sample=False, use_past_kv_cache=use_cache,
                verbose=False, stop_at_eos=False,
            )  # fmt: skip
            expected = oracle.generate(
                prompts, max_new_tokens=4, do_sample=False, use_past_kv_cache=use_cache,
                verbose=False, stop_at_eos=False,
            )  # fmt: skip
        finally:
            adapter.reset_hooks()
            oracle.reset_hooks()
        assert torch.equal(steered, expected)
        assert not torch.equal(steered, plain)


def test_gradients_in_the_cache(caches: tuple) -> None:
    adapter, oracle, _, _ = caches
    loss, ours = adapter.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    expected_loss, theirs = oracle.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    close(loss, expected_loss)
    gradients = [n for n in theirs.keys() if n.endswith("_grad")]
    assert len(gradients) > 30
    for name in gradients:
        if "hook_scale" in name:  # read-only on the adapter: no gradient of its own
            assert name not in ours.cache_dict
            continue
        if "ln1.hook_normalized" in name:
            # TransformerLens applies ln1 three times (to the query, key and value inputs)
            # and its cache keeps the gradient of one of the three; the adapter's is the sum.
            continue
        close(ours[name], theirs[name])
    adapter.zero_grad()
