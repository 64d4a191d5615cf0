"""Text in and out by TransformerLens' rules, against HookedTransformer on the same model.

Two real tokenizers: one that prepends its own BOS and pads with a pad token, and one
like GPT-2's and Pythia's whose single special token is BOS, EOS and pad.
"""

from __future__ import annotations

import pytest
import torch
from tl_twin import build, tokenizer, twin

from auto_hookpoint.adapter import HookedTransformerAdapter

pytestmark = pytest.mark.tl3  # the oracle is HookedTransformer


TEXTS = ["The for statement iterates over items", "A class"]


@pytest.fixture(scope="module", params=["gpt2", "bos"])
def pair(request: pytest.FixtureRequest) -> tuple[HookedTransformerAdapter, object]:
    vocab = len(tokenizer(request.param))
    model = build("gpt2", vocab=vocab)
    return HookedTransformerAdapter(model, tokenizer(request.param)), twin(
        model, tokenizer(request.param)
    )


@pytest.mark.parametrize("prepend_bos", [None, True, False])
@pytest.mark.parametrize("padding_side", [None, "left", "right"])
def test_tokens_and_logits_follow_transformer_lens_rules(
    pair: tuple, prepend_bos: bool | None, padding_side: str | None
) -> None:
    adapter, oracle = pair
    options = {
        k: v
        for k, v in (("prepend_bos", prepend_bos), ("padding_side", padding_side))
        if v is not None
    }
    tokens = adapter.to_tokens(TEXTS, **options)
    assert torch.equal(tokens, oracle.to_tokens(TEXTS, **options))
    with torch.no_grad():
        logits, loss = adapter(TEXTS, return_type="both", **options)
        expected_logits, expected_loss = oracle(TEXTS, return_type="both", **options)
    # TransformerLens masks only left padding (leading pads); with right padding the pads
    # are attended by nothing before them, and count in the loss, in both.
    real = torch.zeros_like(tokens, dtype=torch.bool)
    left = (padding_side or adapter.tokenizer.padding_side) == "left"
    for row, text in enumerate(TEXTS):
        length = adapter.to_tokens(text, **options).shape[1]
        start = tokens.shape[1] - length if left else 0
        real[row, start : start + length] = True
    torch.testing.assert_close(logits[real], expected_logits[real], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=1e-5)
    assert adapter.to_str_tokens(TEXTS, **options) == oracle.to_str_tokens(TEXTS, **options)


def test_a_prompt_in_a_batch_gives_what_it_gives_alone(pair: tuple) -> None:
    """Issue 11: with BOS = EOS = pad (GPT-2, Pythia) the BOS of each prompt was taken
    for padding and masked, so adapter([a, a])[0] != adapter(a); and left-padded GPT-2
    rows got positions counted from the pad, not from their first token."""
    adapter, _ = pair
    alone = [adapter(text)[0] for text in TEXTS]
    twice = adapter([TEXTS[1], TEXTS[1]])
    torch.testing.assert_close(twice[0], alone[1], rtol=1e-5, atol=1e-6)
    for side in ("left", "right"):
        batch = adapter(TEXTS, padding_side=side)
        short = alone[1].shape[0]
        rows = slice(-short, None) if side == "left" else slice(0, short)
        torch.testing.assert_close(batch[1, rows], alone[1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batch[0], alone[0], rtol=1e-4, atol=1e-5)


def test_token_helpers_agree_with_transformer_lens(pair: tuple) -> None:
    adapter, oracle = pair
    tokens = adapter.to_tokens(TEXTS[0])
    one = tokens[0, 2].item()
    word = adapter.to_string(tokens[0, 2:3])
    assert adapter.to_single_token(word) == oracle.to_single_token(word) == one
    assert adapter.get_token_position(one, tokens) == oracle.get_token_position(one, tokens)
    assert adapter.get_token_position(word, TEXTS[0], mode="last") == oracle.get_token_position(
        word, TEXTS[0], mode="last"
    )
    assert adapter.to_str_tokens(tokens[0]) == oracle.to_str_tokens(tokens[0])
    assert adapter.to_str_tokens(tokens) == oracle.to_str_tokens(tokens)
    assert adapter.to_string(tokens) == oracle.to_string(tokens)
    with pytest.raises(ValueError, match="not a single token"):
        adapter.to_single_token(TEXTS[0])
    with pytest.raises(ValueError, match="does not occur"):
        adapter.get_token_position(one, tokens[:, :2])
    batch = adapter.to_tokens(TEXTS)
    assert adapter.to_str_tokens(batch) == [adapter.to_str_tokens(row) for row in batch]
    directions = adapter.tokens_to_residual_directions(batch)
    torch.testing.assert_close(directions, oracle.tokens_to_residual_directions(batch))
    torch.testing.assert_close(
        adapter.tokens_to_residual_directions(word), oracle.tokens_to_residual_directions(word)
    )
    with torch.no_grad():  # 1-D tokens: a batch of one, as in TransformerLens
        torch.testing.assert_close(adapter(tokens[0]), oracle(tokens[0]), rtol=1e-4, atol=1e-5)
