"""HookedTransformerAdapter: a HuggingFace causal LM that sae_lens and TransformerLens
code can use as if it were a ``HookedTransformer``.

The HF model is hooked with ``auto_hook`` and run with its own forward (so masks,
rotary tables and caches are the model's own). On top, TransformerLens' names are sites
of the hook core (:mod:`auto_hookpoint.adapter.hook_names`), each meaning what it
means in TransformerLens: the parity suite compares every one of them, per family,
with TransformerLens' own ``HookedTransformer`` built from the same weights.

Inputs follow TransformerLens' rules (:mod:`auto_hookpoint.adapter.tokens`): BOS,
padding side, which tokens the attention mask hides, and positions that count from each
row's first real token under left padding. ``stop_at_layer=k`` ends the forward after
block k-1 (Python slice semantics, as TransformerLens) with the hook core's split exit,
so nothing after it is computed, and returns the residual stream there, on the
autograd graph.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from auto_hookpoint.adapter import attention, selfcheck
from auto_hookpoint.adapter.architectures import (
    ARCHITECTURES,
    ArchitectureMapping,
    check_mapping,
    embeddings_from_hf,
    for_config,
)
from auto_hookpoint.adapter.config import hooked_transformer_config
from auto_hookpoint.adapter.detect import detect_mapping
from auto_hookpoint.adapter.generate import GenerateMixin
from auto_hookpoint.adapter.hook_names import add_transformer_lens_names
from auto_hookpoint.adapter.legacy import HookedTransformerAdapterCfg
from auto_hookpoint.adapter.stop import run_to_site
from auto_hookpoint.adapter.tl_compat import (
    USE_DEFAULT_VALUE,
    ActivationCache,
    HookedRootModule,
    Output,
    tl_utils,
)
from auto_hookpoint.adapter.tokens import PaddingSide, TokensMixin, model_inputs, prepare_tokenizer
from auto_hookpoint.adapter.views import CURRENT_BATCH
from auto_hookpoint.adapter.weights import WeightsMixin
from auto_hookpoint.core.attached import core_of
from auto_hookpoint.core.cache import (
    NamesFilter,
    cached_forward,
    check_batch_removable,
    resolve_names_filter,
)
from auto_hookpoint.core.context import not_traced
from auto_hookpoint.core.devices import accelerate_forward, execution_device
from auto_hookpoint.hooked import HookedModule, auto_hook
from auto_hookpoint.scoped_hooks import scoped_hooks

ReturnType = Literal["logits", "loss", "both"] | None


class HookedTransformerAdapter(TokensMixin, WeightsMixin, GenerateMixin, HookedRootModule):
    """A HookedTransformer-like view of an HF causal LM; see the module docstring.

    ``HookedTransformerAdapter(hf_model, tokenizer)`` finds the architecture's parts
    (from the table for llama, mistral, mixtral, qwen2, gemma, gemma2, phi, phi3, gpt2,
    gpt_neo, gpt_neox and opt; detected and checked for other families);
    ``mapping=ArchitectureMapping(...)`` names them by hand. The original Auto_HookPoint
    form (``adapter_cfg=``, ``hooked_transformer_cfg=``, ``model=``/``tokenizer=`` or
    ``hf_model_name=``) works too. ``unavailable_hook_names`` says which of
    TransformerLens' names this architecture cannot offer exactly, and why.
    """

    cfg: Any  # HookedTransformerConfig (TransformerLens 3) / TransformerBridgeConfig (4)
    tokenizer: Any
    mapping: ArchitectureMapping
    model: Any  # the HF model, auto_hooked
    unavailable_hook_names: dict[str, str]

    def __init__(
        self,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        *,
        mapping: ArchitectureMapping | None = None,
        adapter_cfg: HookedTransformerAdapterCfg | None = None,
        hooked_transformer_cfg: Any = None,
        hf_model_name: str | None = None,
        input_embedding_name: str | None = None,
        move_to_device: bool = True,
        default_padding_side: PaddingSide | None = "right",
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
        mapping, detected = _resolve(model, mapping, input_embedding_name)
        self.mapping = mapping
        self.model = model if isinstance(model, HookedModule) else auto_hook(model)
        self.train(model.training)  # the adapter is in the HF model's mode
        self.cfg = hooked_transformer_config(model, mapping)
        if hooked_transformer_cfg is not None:
            self.cfg = hooked_transformer_cfg
            if move_to_device and not _dispatched(model):
                self.model.to(hooked_transformer_cfg.device)
        self.tokenizer = tokenizer
        if tokenizer is not None:
            self.cfg.tokenizer_prepends_bos = prepare_tokenizer(tokenizer, default_padding_side)
        names = add_transformer_lens_names(core_of(self.model), self.model, mapping, self.cfg)
        self.unavailable_hook_names = names.unavailable
        self._takes_position_ids = "position_ids" in inspect.signature(model.forward).parameters
        self.setup()
        if detected:
            selfcheck.check_detected(self, names.added)

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

    def setup(self) -> None:
        """hook_dict / mod_dict: the HF model's sites and the TransformerLens names."""
        self.hook_dict = self.model.hook_dict
        self.mod_dict = self.model.mod_dict

    def unwrap(self) -> nn.Module:
        """The HF model as it was: its attention function back, auto_hook's sites gone."""
        attention.uninstall(self.model)
        return self.model.unwrap()  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- running
    @not_traced  # compiled, the HF model's forward is one graph
    def forward(
        self,
        input: str | list[str] | torch.Tensor,  # noqa: A002
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: PaddingSide | None = USE_DEFAULT_VALUE,
        start_at_layer: int | None = None,
        tokens: torch.Tensor | None = None,
        shortformer_pos_embed: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: Any = None,
        **hf_kwargs: Any,
    ) -> Any:
        """HookedTransformer.forward's contract on the HF model: logits ``[batch pos vocab]``,
        the next-token loss, both as an ``Output``, None, or (with ``stop_at_layer``) the
        residual stream after block ``stop_at_layer - 1``. Other keyword arguments go to
        the HF model's forward."""
        if (
            start_at_layer is not None
            or past_kv_cache is not None
            or shortformer_pos_embed is not None
        ):
            raise NotImplementedError(
                "start_at_layer, past_kv_cache and shortformer_pos_embed are HookedTransformer "
                "internals the adapter does not offer: it runs the HF model's own forward "
                "(generate() uses the HF model's KV cache)."
            )
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(
                f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}"
            )
        tokens, mask, positions = model_inputs(
            self, input, prepend_bos, padding_side, attention_mask
        )
        if mask is not None:
            hf_kwargs["attention_mask"] = mask
        if self._takes_position_ids:
            hf_kwargs.setdefault("position_ids", positions)
        batch = CURRENT_BATCH.set(tokens.shape[0])
        try:
            if stop_at_layer is not None:
                layer = len(range(self.cfg.n_layers)[:stop_at_layer])  # as blocks[:stop_at_layer]
                site = f"blocks.{layer - 1}.hook_resid_post" if layer else "blocks.0.hook_resid_pre"
                return run_to_site(self.model, site, input_ids=tokens, **hf_kwargs)
            logits = self.model(input_ids=tokens, **hf_kwargs).logits
        finally:
            CURRENT_BATCH.reset(batch)
        if return_type is None:
            return None
        if return_type == "logits":
            return logits
        loss = tl_utils.lm_cross_entropy_loss(logits, tokens, mask, per_token=loss_per_token)
        return loss if return_type == "loss" else Output(logits, loss)

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
        """TransformerLens' run_with_cache: (output, ActivationCache), or a dict with
        ``return_cache_object=False``. With ``incl_bwd=True`` the output must be a scalar
        (``return_type="loss"``) and gradients are cached as ``<name>_grad``, except at
        the read-only ``hook_scale`` names."""
        core = core_of(self.model)
        names = resolve_names_filter(names_filter, core.sites, core.leaf_site)
        check_batch_removable(model_args, remove_batch_dim)
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
            return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)
        return out, cache

    def get_caching_hooks(self, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens' caching hooks, without backward hooks at read-only names
        (a norm's hook_scale), whose gradient the adapter does not have."""
        cache, fwd, bwd = super().get_caching_hooks(*args, **kwargs)
        sites = core_of(self.model).sites
        readable_only = {n for n, s in sites.items() if s.view and s.view.write_back is None}
        return cache, fwd, [(name, hook) for name, hook in bwd if name not in readable_only]

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """TransformerLens' run_with_hooks, with hooks that belong to the calling thread."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    def hooks(
        self,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Any:
        """TransformerLens' ``hooks()``, scoped to the calling thread or task as on a
        model from ``auto_hook`` (see :mod:`auto_hookpoint.scoped_hooks`)."""
        return scoped_hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    def remove_all_hook_fns(self, *args: Any, **kwargs: Any) -> None:
        self.model.remove_all_hook_fns(*args, **kwargs)

    @property
    def _tokens_device(self) -> torch.device:
        """Where tokens go: the device the token embedding computes on (on a model
        dispatched by accelerate, its execution device)."""
        embed = self.model.get_submodule(self.mapping.embed)
        return execution_device(embed) or torch.device(self.cfg.device or "cpu")

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``.to()``, ``.cuda()``, ``.half()`` ...: the cfg follows the weights."""
        result = super()._apply(fn, *args, **kwargs)
        if "cfg" in self.__dict__:
            embed = self.model.get_submodule(self.mapping.embed)
            self.cfg.device, self.cfg.dtype = str(self._tokens_device), embed.weight.dtype
        return result


def _resolve(
    model: nn.Module, mapping: ArchitectureMapping | None, input_embedding_name: str | None
) -> tuple[ArchitectureMapping, bool]:
    """(the mapping for ``model``, whether it was detected rather than given or tabled)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    label = model_type or type(model).__name__
    detected = False
    if mapping is None:
        mapping = ARCHITECTURES.get(model_type) if model_type else None
        if mapping is not None:
            mapping = embeddings_from_hf(model, mapping)
        else:
            mapping, detected = detect_mapping(model, label), True
    if input_embedding_name is not None:
        mapping = ArchitectureMapping(**{**mapping.__dict__, "embed": input_embedding_name})
    mapping = for_config(mapping, config)
    check_mapping(model, mapping, label)
    return mapping, detected


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
