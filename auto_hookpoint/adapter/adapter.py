"""HookedTransformerAdapter: a HuggingFace causal LM that sae_lens and TransformerLens
code can use as if it were a ``HookedTransformer``.

The HF model is hooked with ``auto_hook`` and run with its own forward (so masks,
rotary tables and caches are the model's own). On top, TransformerLens' canonical names
are sites of the hook core, aliases of the HF sites:

* ``hook_embed``: the token embedding's output (``hook_pos_embed``: the learned position
  embedding's, where there is one);
* ``blocks.{i}.hook_resid_pre``: the input of block i; ``blocks.{i}.hook_resid_post``: its
  output; ``blocks.{i}.hook_attn_out`` / ``hook_mlp_out``: the output of its attention /
  MLP module, where the architecture has them;
* ``ln_final.hook_normalized``: the final norm's output.

``stop_at_layer=k`` ends the forward after block k-1 with the hook core's split exit, so
nothing after it is computed, and returns the residual stream there (as TransformerLens
does).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformer_lens import HookedRootModule, HookedTransformerConfig
from transformer_lens.HookedTransformer import Output
from transformer_lens.utils import USE_DEFAULT_VALUE, lm_cross_entropy_loss

from auto_hookpoint.adapter.architectures import ArchitectureMapping, resolve_mapping
from auto_hookpoint.adapter.config import hooked_transformer_config
from auto_hookpoint.adapter.legacy import HookedTransformerAdapterCfg
from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.cache import NamesFilter, cached_forward, resolve_names_filter
from auto_hookpoint.core.context import not_traced
from auto_hookpoint.core.devices import accelerate_forward, execution_device, resting_tensor
from auto_hookpoint.core.sites import SiteKind
from auto_hookpoint.hooked import HookedModule, auto_hook
from auto_hookpoint.split.exit import run_until

ReturnType = Literal["logits", "loss", "both"] | None


class HookedTransformerAdapter(HookedRootModule):
    """A HookedTransformer-like view of an HF causal LM; see the module docstring.

    ``HookedTransformerAdapter(hf_model, tokenizer)`` detects the architecture (llama,
    mistral, mixtral, qwen2/3, gemma/2, phi/3, gpt2, gpt_neox, opt, or from the model's
    own embeddings and block stack); ``mapping=ArchitectureMapping(...)`` names the parts
    by hand. The original Auto_HookPoint form (``adapter_cfg=``, ``hooked_transformer_cfg=``,
    ``model=``/``tokenizer=`` or ``hf_model_name=``) works too.
    """

    cfg: HookedTransformerConfig
    tokenizer: Any
    mapping: ArchitectureMapping
    model: Any  # the HF model, auto_hooked

    def __init__(
        self,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        *,
        mapping: ArchitectureMapping | None = None,
        adapter_cfg: HookedTransformerAdapterCfg | None = None,
        hooked_transformer_cfg: HookedTransformerConfig | None = None,
        hf_model_name: str | None = None,
        input_embedding_name: str | None = None,
        move_to_device: bool = True,
        default_padding_side: Literal["left", "right"] = "right",
    ):
        super().__init__()
        if hf_model_name is not None:
            if model is not None:
                raise ValueError("pass either hf_model_name or model (with tokenizer), not both")
            model, tokenizer = _load(hf_model_name)
        if not isinstance(model, nn.Module):
            raise TypeError(
                "HookedTransformerAdapter needs an HF causal LM: HookedTransformerAdapter(model, "
                f"tokenizer) or .from_pretrained(folder); got {type(model).__name__}"
            )
        if adapter_cfg is not None:
            mapping = adapter_cfg.to_mapping()
            if adapter_cfg.inter_block_fn or adapter_cfg.create_kwargs or adapter_cfg.preprocess:
                warnings.warn(
                    "inter_block_fn, create_kwargs and preprocess are not needed: the adapter "
                    "runs the HF model's own forward. They are ignored.",
                    stacklevel=2,
                )
        mapping = resolve_mapping(model, mapping)
        if input_embedding_name is not None:
            mapping = ArchitectureMapping(**{**mapping.__dict__, "embed": input_embedding_name})
            mapping = resolve_mapping(model, mapping)
        self.mapping = mapping
        self.model = model if isinstance(model, HookedModule) else auto_hook(model)
        self.cfg = hooked_transformer_cfg or hooked_transformer_config(model, mapping)
        if hooked_transformer_cfg is not None and move_to_device and not _dispatched(model):
            self.model.to(hooked_transformer_cfg.device)
        self.tokenizer = tokenizer
        if tokenizer is not None:
            tokenizer.padding_side = default_padding_side
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        self._add_transformer_lens_names()
        self.setup()

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HookedTransformerAdapter:
        """Load a causal LM and its tokenizer from a local HF folder, and adapt it.

        The adapter's own options (``mapping``, ``default_padding_side``, ...) are taken
        from ``kwargs``; everything else goes to transformers' ``from_pretrained``:
        ``device_map`` (``"auto"`` or a dict; blocks on CPU or ``"disk"`` are offloaded by
        accelerate), ``max_memory``, ``offload_folder``, ``dtype``/``torch_dtype``,
        ``attn_implementation``, ... Tokens then go to the embedding's device.
        """
        options = {name: kwargs.pop(name) for name in _ADAPTER_OPTIONS if name in kwargs}
        model, tokenizer = _load(str(path), **kwargs)
        return cls(model, tokenizer, **options)

    # ---------------------------------------------------------------- names
    def _add_transformer_lens_names(self) -> None:
        core, m = core_of(self.model), self.mapping
        aliases: list[tuple[str, str, SiteKind]] = [("hook_embed", m.embed, SiteKind.OUTPUT)]
        if m.pos_embed:
            aliases.append(("hook_pos_embed", m.pos_embed, SiteKind.OUTPUT))
        for i in range(self.cfg.n_layers):
            block = f"{m.blocks}.{i}"
            aliases += [
                (f"blocks.{i}.hook_resid_pre", block, SiteKind.INPUT),
                (f"blocks.{i}.hook_resid_post", block, SiteKind.OUTPUT),
            ]
            if m.attn:
                aliases.append((f"blocks.{i}.hook_attn_out", f"{block}.{m.attn}", SiteKind.OUTPUT))
            if m.mlp:
                aliases.append((f"blocks.{i}.hook_mlp_out", f"{block}.{m.mlp}", SiteKind.OUTPUT))
        if m.ln_final:
            aliases.append(("ln_final.hook_normalized", m.ln_final, SiteKind.OUTPUT))
        for name, path, kind in aliases:
            if name not in core.sites:  # an adapter made again on the same model
                core.add_site(name, path, kind)  # the core enters it in hook_dict/mod_dict

    def setup(self) -> None:
        """hook_dict / mod_dict: the HF model's sites and the TransformerLens aliases."""
        self.hook_dict = self.model.hook_dict
        self.mod_dict = self.model.mod_dict

    def _stop_site(self, stop_at_layer: int) -> str:
        """The site after which a forward with ``stop_at_layer`` ends."""
        layer = stop_at_layer % self.cfg.n_layers if stop_at_layer < 0 else stop_at_layer
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"stop_at_layer={stop_at_layer} with {self.cfg.n_layers} layers")
        if layer == 0:
            return "blocks.0.hook_resid_pre"
        return f"blocks.{layer - 1}.hook_resid_post"  # the last site on block layer-1's output

    # ---------------------------------------------------------------- running
    @not_traced  # compiled, the HF model's forward is one graph
    def forward(
        self,
        input: str | list[str] | torch.Tensor,  # noqa: A002
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: Literal["left", "right"] | None = USE_DEFAULT_VALUE,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        **hf_kwargs: Any,
    ) -> Any:
        """HookedTransformer.forward's contract on the HF model: logits [batch pos vocab],
        the next-token loss, both as an ``Output``, None, or (with ``stop_at_layer``) the
        residual stream after block ``stop_at_layer - 1``."""
        if isinstance(input, (str, list)):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
            if (
                attention_mask is None
                and isinstance(input, list)
                and self.tokenizer.pad_token_id is not None
            ):
                attention_mask = (tokens != self.tokenizer.pad_token_id).long()
        else:
            tokens = input.to(self._tokens_device)
        if attention_mask is not None:
            hf_kwargs["attention_mask"] = attention_mask.to(tokens.device)
        if stop_at_layer is not None:
            return run_until(
                self.model, self._stop_site(stop_at_layer), input_ids=tokens, **hf_kwargs
            ).activation
        logits = self.model(input_ids=tokens, **hf_kwargs).logits
        if return_type is None:
            return None
        if return_type == "logits":
            return logits
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return Output(logits, loss)
        raise ValueError(
            f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}"
        )

    @not_traced  # compiled, the HF model's forward is one graph
    def run_with_cache(  # type: ignore[override]
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """TransformerLens' run_with_cache, with ``stop_at_layer`` and the alias names.

        Returns (output, ActivationCache) as HookedTransformer does, or a dict with
        ``return_cache_object=False``.
        """
        core = core_of(self.model)
        names = resolve_names_filter(names_filter, core.sites, core.leaf_site)
        if incl_bwd or not reset_hooks_end:
            out, cache = super().run_with_cache(
                *model_args,
                names_filter=names,
                device=torch.device(device) if isinstance(device, str) else device,
                remove_batch_dim=remove_batch_dim,
                incl_bwd=incl_bwd,
                reset_hooks_end=reset_hooks_end,
                clear_contexts=clear_contexts,
                pos_slice=pos_slice,
                **model_kwargs,
            )
        else:
            try:
                out, cache = cached_forward(
                    core,
                    names,
                    functools.partial(self, *model_args, **model_kwargs),
                    device,
                    remove_batch_dim,
                    pos_slice,
                )
            finally:
                if clear_contexts:
                    self.clear_contexts()
        if return_cache_object:
            from transformer_lens import ActivationCache

            return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache

    def remove_all_hook_fns(self, *args: Any, **kwargs: Any) -> None:
        self.model.remove_all_hook_fns(*args, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input: str | torch.Tensor,
        max_new_tokens: int = 10,
        **hf_kwargs: Any,  # noqa: A002
    ) -> Any:
        """Generate with the HF model's own ``generate``; returns text for text input."""
        tokens = self.to_tokens(input) if isinstance(input, str) else input.to(self._tokens_device)
        hf_kwargs.setdefault("do_sample", False)
        hf_kwargs.setdefault("pad_token_id", getattr(self.tokenizer, "pad_token_id", None))
        out = self.model.generate(tokens, max_new_tokens=max_new_tokens, **hf_kwargs)
        return self.to_string(out[0]) if isinstance(input, str) else out

    # ---------------------------------------------------------------- tokens
    def to_tokens(
        self,
        input: str | list[str],  # noqa: A002
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: Literal["left", "right"] | None = USE_DEFAULT_VALUE,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Token ids [batch pos], with a BOS first unless ``prepend_bos=False``."""
        if self.tokenizer is None:
            raise ValueError("this adapter has no tokenizer; pass one to HookedTransformerAdapter")
        bos = (
            self.cfg.default_prepend_bos
            if prepend_bos is USE_DEFAULT_VALUE or prepend_bos is None
            else prepend_bos
        )
        side = (
            self.tokenizer.padding_side
            if padding_side in (USE_DEFAULT_VALUE, None)
            else padding_side
        )
        texts = [input] if isinstance(input, str) else list(input)
        bos_token = self.tokenizer.bos_token or ""
        if bos and bos_token:
            texts = [bos_token + t for t in texts]
        previous = self.tokenizer.padding_side
        self.tokenizer.padding_side = side
        try:
            tokens = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                truncation=truncate,
                max_length=self.cfg.n_ctx if truncate else None,
            )["input_ids"]
        finally:
            self.tokenizer.padding_side = previous
        return tokens.to(self._tokens_device) if move_to_device else tokens

    def to_string(self, tokens: torch.Tensor | list[int]) -> str | list[str]:
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2:
            return list(self.tokenizer.batch_decode(tokens, clean_up_tokenization_spaces=False))
        return str(self.tokenizer.decode(tokens, clean_up_tokenization_spaces=False))

    def to_str_tokens(
        self,
        input: str | torch.Tensor,
        prepend_bos: bool | None = USE_DEFAULT_VALUE,  # noqa: A002
    ) -> list[str]:
        tokens = self.to_tokens(input, prepend_bos=prepend_bos) if isinstance(input, str) else input
        flat = tokens.reshape(-1).tolist()
        return [self.tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in flat]

    # ---------------------------------------------------------------- weights
    @property
    def _tokens_device(self) -> torch.device:
        """Where tokens go: the device the token embedding computes on (on a model
        dispatched by accelerate, its execution device)."""
        embed = self.model.get_submodule(self.mapping.embed)
        return execution_device(embed) or torch.device(self.cfg.device or "cpu")

    @property
    def W_E(self) -> torch.Tensor:  # noqa: N802
        """The token embedding [d_vocab, d_model] (where accelerate keeps it, if offloaded)."""
        return resting_tensor(self.model.get_submodule(self.mapping.embed), "weight")

    @property
    def W_U(self) -> torch.Tensor:  # noqa: N802
        """The unembedding [d_model, d_vocab] (where accelerate keeps it, if offloaded)."""
        return resting_tensor(self.model.get_submodule(self.mapping.unembed), "weight").T

    @property
    def W_pos(self) -> torch.Tensor:  # noqa: N802
        if not self.mapping.pos_embed:
            raise AttributeError(
                f"{self.cfg.original_architecture} has no learned position embedding"
            )
        return resting_tensor(self.model.get_submodule(self.mapping.pos_embed), "weight")


# HookedTransformerAdapter.__init__'s own keyword options (from_pretrained keeps them).
_ADAPTER_OPTIONS = (
    "mapping", "adapter_cfg", "hooked_transformer_cfg", "input_embedding_name",
    "move_to_device", "default_padding_side",
)  # fmt: skip
# Options of transformers' from_pretrained that locate the files: the tokenizer's too.
_LOCATING = ("revision", "cache_dir", "local_files_only", "token", "trust_remote_code", "subfolder")


def _load(path: str, **hf_kwargs: Any) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, **hf_kwargs).eval()
    locating = {name: hf_kwargs[name] for name in _LOCATING if name in hf_kwargs}
    return model, AutoTokenizer.from_pretrained(path, **locating)


def _dispatched(model: nn.Module) -> bool:
    """Placed by accelerate (device_map): moving it would undo the placement."""
    return any(accelerate_forward(module) for module in model.modules())
