"""Tokens in and out, by TransformerLens' rules.

``to_tokens`` prepends a BOS token unless ``prepend_bos=False`` (default:
``cfg.default_prepend_bos``, False for GPT-NeoX, Qwen and Phi as in TransformerLens),
by the tokenizer itself where it adds one and by hand where it does not; pads on
``padding_side`` (default: the tokenizer's). :func:`model_inputs` turns any input into
what the HF forward needs, with TransformerLens' attention mask: an explicit one is
used as given; otherwise one is made only for left padding, where only the *leading*
pad tokens are masked, and a BOS that shares its id with the pad token is kept. Where
there is a mask, positions count from each row's first attended token (as
TransformerLens does for learned and rotary position embeddings alike).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch

from auto_hookpoint.adapter.tl_compat import USE_DEFAULT_VALUE, tl_utils

PaddingSide = Literal["left", "right"]
_TOKENIZER_LOCK = threading.RLock()


@contextlib.contextmanager
def padding_side_of(tokenizer: Any, side: PaddingSide) -> Iterator[None]:
    """The tokenizer pads on ``side`` for the duration (TransformerLens' helpers read
    ``tokenizer.padding_side``); a lock keeps threads from seeing each other's."""
    with _TOKENIZER_LOCK:
        previous = tokenizer.padding_side
        tokenizer.padding_side = side
        try:
            yield
        finally:
            tokenizer.padding_side = previous


def prepare_tokenizer(tokenizer: Any, padding_side: PaddingSide | None) -> bool:
    """What HookedTransformer.set_tokenizer does to a tokenizer: pad, EOS and BOS tokens
    where it has none, the padding side. Returns whether it prepends a BOS by itself."""
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if tokenizer.padding_side is None:
        tokenizer.padding_side = "right"
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    return len(tokenizer.encode("")) > 0


class TokensMixin:
    """TransformerLens' tokenizer methods, for a class with ``tokenizer``, ``cfg``, ``W_U``."""

    tokenizer: Any
    cfg: Any
    W_U: torch.Tensor

    @property
    def _tokens_device(self) -> torch.device:  # where the token embedding computes
        raise NotImplementedError

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "this adapter has no tokenizer; pass one: "
                "HookedTransformerAdapter(model, tokenizer)"
            )
        return self.tokenizer

    def _prepend_bos(self, prepend_bos: bool | None) -> bool:
        if prepend_bos is USE_DEFAULT_VALUE or prepend_bos is None:
            return bool(self.cfg.default_prepend_bos)
        return bool(prepend_bos)

    def _padding_side(self, padding_side: PaddingSide | None) -> PaddingSide:
        if padding_side is USE_DEFAULT_VALUE or padding_side is None:
            return self._tokenizer().padding_side  # type: ignore[no-any-return]
        return padding_side

    def to_tokens(
        self,
        input: str | list[str],  # noqa: A002
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: PaddingSide | None = USE_DEFAULT_VALUE,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Token ids ``[batch pos]`` of a string or list of strings, by TransformerLens' rules."""
        tokenizer = self._tokenizer()
        bos, side = self._prepend_bos(prepend_bos), self._padding_side(padding_side)
        prepends = self.cfg.tokenizer_prepends_bos
        if bos and not prepends:
            input = tl_utils.get_input_with_manually_prepended_bos(tokenizer.bos_token, input)
        with padding_side_of(tokenizer, side):
            tokens = tokenizer(
                input,
                return_tensors="pt",
                padding=True,
                truncation=truncate,
                max_length=self.cfg.n_ctx if truncate else None,
            )["input_ids"]
            if not bos and prepends:
                tokens = tl_utils.get_tokens_with_bos_removed(tokenizer, tokens)
        return tokens.to(self._tokens_device) if move_to_device else tokens

    def to_string(self, tokens: Any) -> str | list[str]:
        """Tokens to text: a list of strings for ``[batch pos]``, one string otherwise."""
        tokenizer = self._tokenizer()
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor(tokens)
        if tokens.dim() == 2:
            return list(tokenizer.batch_decode(tokens, clean_up_tokenization_spaces=False))
        if tokens.dim() <= 1:
            return str(tokenizer.decode(tokens, clean_up_tokenization_spaces=False))
        raise ValueError(
            f"to_string takes [pos] or [batch pos] tokens, not shape {tuple(tokens.shape)}"
        )

    def to_str_tokens(
        self,
        input: Any,  # noqa: A002
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: PaddingSide | None = USE_DEFAULT_VALUE,
    ) -> list[str] | list[list[str]]:
        """Each token as a string: for a string, a ``[pos]`` (or ``[1 pos]``) tensor or
        array a list; for a list of strings or a ``[batch pos]`` tensor a list per row."""
        if isinstance(input, list) or (
            isinstance(input, (torch.Tensor, np.ndarray)) and input.ndim == 2 and input.shape[0] > 1
        ):
            rows = [self.to_str_tokens(row, prepend_bos, padding_side) for row in input]
            return rows  # type: ignore[return-value]
        if isinstance(input, str):
            tokens: Any = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)[
                0
            ]
        elif isinstance(input, (torch.Tensor, np.ndarray)):
            tokens = input.reshape(-1)
        else:
            raise ValueError(f"to_str_tokens takes text or tokens, not {type(input).__name__}")
        ids = [[int(t)] for t in tokens.tolist()]
        return list(self._tokenizer().batch_decode(ids, clean_up_tokenization_spaces=False))

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token; an error otherwise."""
        token = self.to_tokens(string, prepend_bos=False).squeeze()
        if token.shape:
            raise ValueError(f"{string!r} is not a single token: it is {token.numel()} tokens")
        return int(token.item())

    def to_single_str_token(self, int_token: int) -> str:
        token = self.to_str_tokens(torch.tensor([int_token]))
        return token[0]  # type: ignore[return-value]

    def get_token_position(
        self,
        single_token: str | int | torch.Tensor,
        input: str | torch.Tensor,  # noqa: A002
        mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: PaddingSide | None = USE_DEFAULT_VALUE,
    ) -> int:
        """Where ``single_token`` first (or last) occurs in a string or ``[pos]`` /
        ``[1 pos]`` tokens; an error if it does not."""
        tokens = (
            self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
            if isinstance(input, str)
            else input
        )
        if tokens.dim() == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"tokens of rank 2 must be [1 pos], not {tuple(tokens.shape)}")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif isinstance(single_token, torch.Tensor):
            single_token = int(single_token.item())
        indices = torch.arange(len(tokens), device=tokens.device)[tokens == single_token]
        if len(indices) == 0:
            raise ValueError(f"token {single_token} does not occur in the input")
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")
        return int(indices[0 if mode == "first" else -1].item())

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """The unembedding direction(s) ``[... d_model]`` of a token, its string, or a
        tensor of tokens."""
        if isinstance(tokens, torch.Tensor) and tokens.numel() > 1:
            return self.W_U[:, tokens].movedim(0, -1)
        if isinstance(tokens, str):
            token = self.to_single_token(tokens)
        elif isinstance(tokens, int):
            token = tokens
        elif isinstance(tokens, torch.Tensor):
            token = int(tokens.item())
        else:
            raise ValueError(f"tokens must be a string, an int or a tensor, not {type(tokens)}")
        return self.W_U[:, token]


# Preparing inputs (tokenizing, padding, positions) runs eagerly under torch.compile:
# compiled, it is one more graph per input shape for no gain.
@torch.compiler.disable
def model_inputs(
    owner: TokensMixin,
    input: Any,  # noqa: A002
    prepend_bos: bool | None,
    padding_side: PaddingSide | None,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(tokens ``[batch pos]``, attention mask or None, position ids ``[batch pos]``) for
    the HF forward, from text or tokens; see the module docstring."""
    if isinstance(input, (str, list)):
        tokens = owner.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
    elif isinstance(input, torch.Tensor):
        tokens = input[None] if input.dim() == 1 else input
        tokens = tokens.to(owner._tokens_device)
    else:
        raise TypeError(
            f"the adapter takes a string, a list of strings or a tensor of token ids, "
            f"not {type(input).__name__}"
        )
    if attention_mask is None and owner.tokenizer is not None:
        if owner._padding_side(padding_side) == "left":
            tokenizer = owner.tokenizer
            with padding_side_of(tokenizer, "left"):
                attention_mask = tl_utils.get_attention_mask(
                    tokenizer, tokens, owner._prepend_bos(prepend_bos)
                )
    if attention_mask is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape)
        return tokens, None, positions
    if attention_mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, tokens {tuple(tokens.shape)}"
        )
    attention_mask = attention_mask.to(tokens.device)
    return tokens, attention_mask, tl_utils.get_offset_position_ids(0, attention_mask)
