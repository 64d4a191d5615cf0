"""The adapter means by every TransformerLens name what TransformerLens means.

For each family, the adapter on a tiny HF model is compared with TransformerLens' own
``HookedTransformer`` built from the same weights (``tl_twin.twin``):

* the cache agrees at every name both have, in a batch, with left and with right
  padding given as ``attention_mask`` (at the real positions: at padding positions
  TransformerLens zeroes the position embedding, HF does not);
* the names TransformerLens has and the adapter does not are exactly those
  ``docs/adapter.md`` lists for the family;
* a hook that edits the activation at a name changes the logits as the same hook does in
  TransformerLens (what a name *means* is where an edit lands), and the read-only names
  refuse an edit;
* the weights (``W_E`` ... ``b_out``, per block and stacked) and the config agree.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tl_twin import FAMILIES, SEQ, VOCAB, build, twin

from auto_hookpoint.adapter import HookedTransformerAdapter
from auto_hookpoint.errors import ReadOnlySiteError

pytestmark = pytest.mark.tl3  # the oracle is HookedTransformer


# TransformerLens names (layer 0 standing for every layer) the adapter does not offer,
# per family; docs/adapter.md says why. Everything else TransformerLens' cache holds, the
# adapter's holds too.
_QK_NORMS = {f"blocks.0.attn.{n}_norm.hook_{s}" for n in "qk" for s in ("scale", "normalized")}
NOT_OFFERED: dict[str, set[str]] = {
    "gpt_neo": {"blocks.0.attn.hook_attn_scores"},
    "phi": {"blocks.0.ln2.hook_scale", "blocks.0.ln2.hook_normalized"},
    "mixtral": {"blocks.0.mlp.hook_expert_indices", "blocks.0.mlp.hook_expert_weights"}
    | {f"blocks.0.mlp.experts.{e}.hook_{s}" for e in range(4) for s in ("pre", "gate", "post")},
    "gemma3": _QK_NORMS,
    "qwen3": _QK_NORMS,
}
# Offered for reading, refusing an edit (an edit could not mean what it means in TL).
READ_ONLY = {"hook_scale"}
READ_ONLY_BY_FAMILY = {"phi": {"ln1.hook_normalized"}}

TOKENS = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
LEFT = torch.ones(2, SEQ, dtype=torch.long)
LEFT[0, :3] = 0
RIGHT = torch.ones(2, SEQ, dtype=torch.long)
RIGHT[1, -2:] = 0


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request: pytest.FixtureRequest) -> tuple[str, HookedTransformerAdapter, object]:
    model = build(request.param)
    oracle = twin(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a detected family is detected without doubt
        adapter = HookedTransformerAdapter(model, None)
    return request.param, adapter, oracle


def real_positions(name: str, tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The entries at unpadded positions (query positions for scores and patterns)."""
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        tensor = tensor.transpose(1, 2)  # [batch query head key]
    elif tensor.shape[0] != mask.shape[0]:  # per-head q/k norms: [batch*pos*head, d]
        tensor = tensor.reshape(*mask.shape, -1, tensor.shape[-1])
    return tensor[mask.bool()]


def max_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest absolute difference; masked scores (-inf) must be masked in both."""
    assert ours.shape == theirs.shape
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(theirs)
    return (ours[finite] - theirs[finite]).abs().max().item() if finite.any() else 0.0


def layer_zero(names: set[str]) -> set[str]:
    return {n.replace("blocks.1.", "blocks.0.") for n in names}


@pytest.mark.parametrize("mask", [None, LEFT, RIGHT], ids=["batch", "left_padded", "right_padded"])
def test_cache_agrees_at_every_name_both_have(pair: tuple, mask: torch.Tensor | None) -> None:
    family, adapter, oracle = pair
    kwargs = {} if mask is None else {"attention_mask": mask}
    rows = torch.ones(2, SEQ) if mask is None else mask
    with torch.no_grad():
        logits, cache = adapter.run_with_cache(TOKENS, **kwargs)
        expected_logits, expected = oracle.run_with_cache(TOKENS, **kwargs)
    missing = layer_zero(set(expected.keys()) - set(cache.keys()))
    assert missing == NOT_OFFERED.get(family, set())
    common = set(expected.keys()) & set(cache.keys())
    assert len(common) >= 35
    for name in sorted(common):
        difference = max_difference(
            real_positions(name, cache[name], rows), real_positions(name, expected[name], rows)
        )
        assert difference < 1e-4, f"{family} {name}: {difference}"
    assert max_difference(logits[rows.bool()], expected_logits[rows.bool()]) < 1e-4


def test_an_edit_at_each_name_lands_where_it_does_in_transformer_lens(pair: tuple) -> None:
    family, adapter, oracle = pair

    def edit(tensor: torch.Tensor, hook: object) -> torch.Tensor:
        if hook.name.endswith(("hook_pattern", "hook_attn_scores")):  # type: ignore[attr-defined]
            return tensor * 3.0  # keeps masked entries masked
        return tensor * 3.0 + 0.5  # also moves what a norm would scale back

    rows = LEFT.bool()
    with torch.no_grad():
        _, cache = oracle.run_with_cache(TOKENS, attention_mask=LEFT)
        plain = oracle(TOKENS, attention_mask=LEFT)
        names = sorted(
            n for n in cache.keys() if not n.startswith("blocks.1.") and n in adapter.hook_dict
        )
        read_only = READ_ONLY | READ_ONLY_BY_FAMILY.get(family, set())
        for name in names:
            hooks = [(name, edit)]
            if name.endswith(tuple(read_only)):
                with pytest.raises(ReadOnlySiteError, match="can only be read"):
                    adapter.run_with_hooks(TOKENS, attention_mask=LEFT, fwd_hooks=hooks)
                continue
            expected = oracle.run_with_hooks(TOKENS, attention_mask=LEFT, fwd_hooks=hooks)[rows]
            edited = adapter.run_with_hooks(TOKENS, attention_mask=LEFT, fwd_hooks=hooks)[rows]
            effect = (expected - plain[rows]).abs().max()
            assert effect > 1e-4, f"{name}: the edit did nothing"
            # Float noise only: within 1e-5, or a thousandth of what the edit does.
            bound = max(1e-5, 1e-3 * effect.item())
            assert (edited - expected).abs().max() < bound, f"{family} {name}"


WEIGHTS = ("W_E", "W_pos", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V",
           "b_O", "W_in", "W_gate", "W_out", "b_in", "b_out")  # fmt: skip


def test_weights_and_config_agree(pair: tuple) -> None:
    family, adapter, oracle = pair
    compared = 0
    for name in WEIGHTS:
        try:
            expected = getattr(oracle, name)
        except (AttributeError, KeyError, TypeError):  # no such weight in TL (MoE: TypeError)
            expected = None
        if expected is None:
            with pytest.raises(AttributeError):
                getattr(adapter, name)
            continue
        assert torch.equal(getattr(adapter, name).float(), expected.float()), f"{family} {name}"
        compared += 1
    assert compared >= (11 if family == "mixtral" else 15)  # an MoE has no W_in ... b_out
    assert torch.equal(adapter.blocks[1].attn.W_O, oracle.blocks[1].attn.W_O)
    for field in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
                  "n_key_value_heads", "normalization_type", "positional_embedding_type",
                  "parallel_attn_mlp", "gated_mlp", "default_prepend_bos", "act_fn",
                  "original_architecture", "use_normalization_before_and_after"):  # fmt: skip
        assert getattr(adapter.cfg, field) == getattr(oracle.cfg, field), f"{family} {field}"
