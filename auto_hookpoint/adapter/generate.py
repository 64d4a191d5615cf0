"""``generate`` with HookedTransformer's arguments and sampling, on the HF model.

The loop is TransformerLens' (``HookedTransformer.generate``): a batch of prompts is
padded on the left, each step samples with ``transformer_lens.utilities.sample_logits``
(``do_sample``, ``top_k``, ``top_p``, ``temperature``, ``freq_penalty``) or takes the
argmax, finished rows are padded with EOS when ``stop_at_eos``, and the result is text,
tokens or (``return_type="input"``) whatever was given. Each step runs the HF model's
forward, with its own KV cache when ``use_past_kv_cache``, so every hook fires on every
step: a steering hook added with ``add_hook`` or ``hooks()`` acts on each new token.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import tqdm

from auto_hookpoint.adapter.tl_compat import USE_DEFAULT_VALUE, tl_utils
from auto_hookpoint.adapter.tokens import PaddingSide, padding_side_of
from auto_hookpoint.adapter.views import CURRENT_BATCH


class GenerateMixin:
    """HookedTransformer.generate, for a class with ``model``, ``tokenizer``, ``cfg``,
    ``to_tokens``, ``_takes_position_ids`` and ``_tokens_device``."""

    model: Any
    tokenizer: Any
    cfg: Any
    _takes_position_ids: bool

    @torch.no_grad()
    def generate(
        self,
        input: str | list[str] | torch.Tensor = "",  # noqa: A002
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | list[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: PaddingSide | None = USE_DEFAULT_VALUE,
        return_type: str | None = "input",
        verbose: bool = True,
        **generation_kwargs: Any,
    ) -> Any:
        """Sample up to ``max_new_tokens`` tokens after ``input`` (text, a list of texts,
        or ``[batch pos]`` tokens); see the module docstring."""
        if return_type not in ("input", "str", "tokens"):
            raise ValueError("return_type must be 'input', 'str' or 'tokens'")
        if generation_kwargs:
            warnings.warn(
                "generate() takes HookedTransformer's arguments; ignoring "
                f"{sorted(generation_kwargs)}",
                stacklevel=2,
            )
        batched = isinstance(input, list) and len(input) > 1
        if isinstance(input, (str, list)):
            side = "left" if batched else padding_side
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=side)  # type: ignore[attr-defined]
            return_type = "str" if return_type == "input" else return_type
        elif isinstance(input, torch.Tensor) and input.dim() == 2:
            tokens = input.to(self._tokens_device)  # type: ignore[attr-defined]
            return_type = "tokens" if return_type == "input" else return_type
        else:
            raise TypeError("generate takes a string, a list of strings or [batch pos] tokens")
        mask = self._initial_mask(tokens, prepend_bos, "left" if batched else None)
        stop_tokens, eos_for_padding = self._stop_tokens(stop_at_eos, eos_token_id)
        batch = tokens.shape[0]
        finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        sampled: list[torch.Tensor] = []
        past: Any = None
        context = CURRENT_BATCH.set(batch)
        try:
            for index in tqdm.tqdm(range(max_new_tokens), disable=not verbose):
                so_far = torch.cat([tokens, *sampled], dim=1)
                full_mask = torch.cat([mask, torch.ones_like(so_far[:, mask.shape[1] :])], dim=1)
                step = so_far[:, -1:] if use_past_kv_cache and index > 0 else so_far
                kwargs: dict[str, Any] = {
                    "attention_mask": full_mask,
                    "use_cache": use_past_kv_cache,
                }
                if self._takes_position_ids:
                    offset = so_far.shape[1] - step.shape[1]
                    kwargs["position_ids"] = tl_utils.get_offset_position_ids(offset, full_mask)
                if past is not None:
                    kwargs["past_key_values"] = past
                out = self.model(input_ids=step, **kwargs)
                past = out.past_key_values if use_past_kv_cache else None
                final_logits = out.logits[:, -1, :]
                if do_sample:
                    new = tl_utils.sample_logits(
                        final_logits, top_k=top_k, top_p=top_p, temperature=temperature,
                        freq_penalty=freq_penalty, tokens=so_far,
                    )  # fmt: skip
                else:
                    new = final_logits.argmax(-1)
                new = new.to(tokens.device)
                if stop_at_eos:
                    new[finished] = eos_for_padding
                    finished |= torch.isin(new, torch.tensor(stop_tokens, device=new.device))
                sampled.append(new[:, None])
                if stop_at_eos and finished.all():
                    break
        finally:
            CURRENT_BATCH.reset(context)
        output = torch.cat([tokens, *sampled], dim=1)
        if return_type == "tokens":
            return output
        texts = [self.tokenizer.decode(row, skip_special_tokens=True) for row in output]
        return texts[0] if len(texts) == 1 else texts

    def _initial_mask(
        self, tokens: torch.Tensor, prepend_bos: bool | None, side: PaddingSide | None
    ) -> torch.Tensor:
        """TransformerLens' mask for the prompt: leading (left) or trailing (right) pads."""
        if self.tokenizer is None:
            return torch.ones_like(tokens)
        bos = self._prepend_bos(prepend_bos)  # type: ignore[attr-defined]
        with padding_side_of(self.tokenizer, side or self.tokenizer.padding_side):
            return tl_utils.get_attention_mask(self.tokenizer, tokens, bos)  # type: ignore[no-any-return]

    def _stop_tokens(
        self, stop_at_eos: bool, eos_token_id: int | list[int] | None
    ) -> tuple[list[int], int]:
        if not stop_at_eos:
            return [], 0
        tokenizer_eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos_token_id is None:
            if tokenizer_eos is None:
                raise ValueError(
                    "stop_at_eos needs an eos_token_id: pass one, or a tokenizer that has one"
                )
            eos_token_id = tokenizer_eos
        if isinstance(eos_token_id, int):
            return [eos_token_id], eos_token_id
        return list(eos_token_id), tokenizer_eos if tokenizer_eos is not None else eos_token_id[0]
