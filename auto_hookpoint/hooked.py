"""``auto_hook``: make any ``nn.Module`` a TransformerLens ``HookedRootModule``.

On an instance, the model's class is swapped for a subclass composed of
:class:`HookedModule`, the model's own class and ``HookedRootModule``: the object stays
the same object, still an instance of its class (same name, so ``save_pretrained`` and
friends see nothing new), and gains ``hook_dict``, ``run_with_hooks``,
``run_with_cache``, ``hooks()``, ``reset_hooks``. Nothing is added to the module tree,
so parameters, buffers and ``state_dict`` keys are unchanged.

On a class (as a decorator), every instance comes out hooked once its ``__init__``
(and that of any subclass) has finished.

``unwrap()`` undoes all of it: every hook of ours is removed, the attributes we set are
taken away and the original class is restored.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from types import MappingProxyType
from typing import Any, TypeVar, overload

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from auto_hookpoint.core.attached import CORE_ATTRIBUTE, core_of
from auto_hookpoint.core.cache import NamesFilter, cached_forward, resolve_names_filter
from auto_hookpoint.core.hook_core import HookCore
from auto_hookpoint.core.sites import Site, SiteKind
from auto_hookpoint.errors import UnknownHookNameError
from auto_hookpoint.scoped_hooks import scoped_hooks
from auto_hookpoint.split.early_output import EarlyOutput
from auto_hookpoint.split.exit import run_until
from auto_hookpoint.split.resume import resume_from

M = TypeVar("M", bound=nn.Module)

_CORE = CORE_ATTRIBUTE
_SAVED = "_auto_hook_saved"
_INIT_DEPTH = "_auto_hook_init_depth"
# Instance attributes auto_hook sets (HookedRootModule's state, plus ours).
_STATE = ("hook_dict", "mod_dict", "is_caching", "context_level", _CORE)
_PLAIN_STATE = frozenset({"is_caching", "context_level"})


class SiteDict(dict[str, HookPoint]):
    """``hook_dict``/``mod_dict``: site name to HookPoint; a wrong name gets the closest ones.

    On a model hooked with ``leaves=True`` a leaf name (``<site>.<index or field>``) is
    made into a site on first use (the core enters it in hook_dict and mod_dict alike).
    """

    core: HookCore | None = None

    # Listing the sites first finds them again if the model changed since (new modules
    # get sites; see HookCore.sync): one attribute check when it did not.
    def _current(self) -> None:
        if self.core is not None and self.core.stale:
            self.core.sync(strict=False)

    def __iter__(self) -> Iterator[str]:
        self._current()
        return super().__iter__()

    def __len__(self) -> int:
        self._current()
        return super().__len__()

    def __contains__(self, name: object) -> bool:
        self._current()
        return super().__contains__(name)

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        self._current()
        return super().keys()

    def values(self) -> ValuesView[HookPoint]:  # type: ignore[override]
        self._current()
        return super().values()

    def items(self) -> ItemsView[str, HookPoint]:  # type: ignore[override]
        self._current()
        return super().items()

    def __missing__(self, name: str) -> HookPoint:
        if self.core is not None and self.core.stale:  # a site of a module added since?
            self.core.sync(strict=False)
            if super().__contains__(name):
                return super().__getitem__(name)
        site = self.core.leaf_site(name) if self.core is not None else None
        if site is None:
            raise UnknownHookNameError(name, self.keys())
        return site.hook_point


class _Unwrap:
    """``unwrap``: on a decorated class, the original class; on an instance, see unwrap()."""

    def __get__(self, obj: Any, owner: type) -> Callable[[], Any]:
        if obj is None:
            return lambda: owner.__dict__.get("__auto_hook_original__", owner)
        return functools.partial(unwrap, obj)


class HookedModule:
    """The part of a hooked model's class that auto_hook adds in front of the model's own.

    ``isinstance(model, HookedModule)`` tells whether a model is hooked.
    """

    __auto_hook_original__: type[nn.Module]
    hook_dict: SiteDict
    mod_dict: SiteDict
    unwrap = _Unwrap()

    @property
    def hook_sites(self) -> Mapping[str, Site]:
        """Every site by name, with its kind, module and module path (read-only)."""
        return MappingProxyType(core_of(self).sites)

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: list[tuple[str | Callable[[str], bool], Callable[..., Any]]] = [],  # noqa: B006
        bwd_hooks: list[tuple[str | Callable[[str], bool], Callable[..., Any]]] = [],  # noqa: B006
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """TransformerLens' ``run_with_hooks``, calling the model (not ``forward``) so
        that the root output site ``hook_point`` fires too."""
        if bwd_hooks and reset_hooks_end:
            logging.warning(
                "WARNING: Hooks will be reset at the end of run_with_hooks. This removes "
                "the backward hooks before a backward pass can occur."
            )
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)  # type: ignore[operator]

    def hooks(
        self,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Any:
        """TransformerLens' ``hooks()`` context manager, with hooks that belong to the
        thread or task that added them; see :mod:`auto_hookpoint.scoped_hooks`."""
        return scoped_hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        **model_kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """TransformerLens' ``run_with_cache``: ``(model output, {site name: activation})``.

        Activations are stored as TransformerLens stores them. With ``incl_bwd=True`` or
        ``reset_hooks_end=False`` this is TransformerLens' own implementation; otherwise
        a cache observer of the hook core does the work, at lower cost and visible only
        to the calling thread. A site name in ``names_filter`` that does not exist
        raises ``UnknownHookNameError`` instead of caching nothing.
        """
        core = core_of(self)
        names = resolve_names_filter(names_filter, core.sites, core.leaf_site)
        if incl_bwd or not reset_hooks_end:
            return super().run_with_cache(  # type: ignore[misc, no-any-return]
                *model_args,
                names_filter=names,
                device=device,
                remove_batch_dim=remove_batch_dim,
                incl_bwd=incl_bwd,
                reset_hooks_end=reset_hooks_end,
                clear_contexts=clear_contexts,
                pos_slice=pos_slice,
                **model_kwargs,
            )
        try:
            return cached_forward(
                core,
                names,
                lambda: self(*model_args, **model_kwargs),  # type: ignore[operator]
                device,
                remove_batch_dim,
                pos_slice,
            )
        finally:
            if clear_contexts:
                self.clear_contexts()  # type: ignore[attr-defined]

    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict[str, torch.Tensor], list[Any], list[Any]]:
        """TransformerLens' caching hooks, except that each stores a copy of the value its
        site fired with (TransformerLens keeps a view, which a later in-place op in the
        forward rewrites), and a name in ``names_filter`` that is not a site raises
        ``UnknownHookNameError``. TransformerLens' ``run_with_cache`` (with ``incl_bwd``),
        ``add_caching_hooks``, ``cache_all`` and ``cache_some`` all use these."""
        core = core_of(self)
        names = resolve_names_filter(names_filter, core.sites, core.leaf_site)
        cache, fwd, bwd = super().get_caching_hooks(  # type: ignore[misc]
            names, incl_bwd, device, remove_batch_dim, cache, pos_slice
        )
        return (
            cache,
            [(n, _storing_a_copy(h)) for n, h in fwd],
            [(n, _storing_a_copy(h)) for n, h in bwd],
        )

    def add_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """TransformerLens' ``add_caching_hooks``, with :meth:`get_caching_hooks`' hooks."""
        cache, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim, cache
        )
        for name, hook in fwd:
            self.mod_dict[name].add_hook(hook, dir="fwd")
        for name, hook in bwd:
            self.mod_dict[name].add_hook(hook, dir="bwd")
        return cache

    def run_until(self, site: str, *args: Any, bank: Any = (), **kwargs: Any) -> EarlyOutput:
        """Run the forward only until ``site`` fires; see :func:`auto_hookpoint.split.run_until`."""
        return run_until(self, site, *args, bank=bank, **kwargs)

    def resume_from(
        self, site: str, activation: torch.Tensor | EarlyOutput, *args: Any, **kwargs: Any
    ) -> Any:
        """Finish the forward from block ``site``'s output; see
        :func:`auto_hookpoint.split.resume_from`."""
        return resume_from(self, site, activation, *args, **kwargs)

    def remove_all_hook_fns(
        self, direction: Any = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """TransformerLens' method, visiting only the sites that hold hooks (and the
        model's own HookPoints) rather than all of them: same result, O(hooked sites)."""
        core = core_of(self)
        for hook_point in [*core.hooked.values(), *core.own_hook_points]:
            hook_point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    # HookedRootModule's bookkeeping, set on every hooks()/run_with_cache call: plain
    # values, so skip nn.Module.__setattr__'s parameter/module/buffer checks.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PLAIN_STATE:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def setup(self) -> None:
        """Find the sites again, after the model's structure has changed.

        All hooks are removed. (Before auto_hook has attached, this does nothing, so a
        TransformerLens-style ``__init__`` that calls ``self.setup()`` still works.)
        """
        if _CORE in self.__dict__:
            hooked_class, core = type(self), core_of(self)
            _detach(self)  # type: ignore[arg-type]
            self.__class__ = hooked_class  # _detach restored the original class
            _attach(self, HookCore(self, core.inputs, core.leaves))  # type: ignore[arg-type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A user subclass of a decorated class: attach once the outermost __init__ is done.
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_auto_hook_attaches", False):
            setattr(cls, "__init__", _attach_after(init))  # noqa: B010


@overload
def auto_hook(target: type[M], *, inputs: bool = False, leaves: bool = False) -> type[M]: ...
@overload
def auto_hook(target: M, *, inputs: bool = False, leaves: bool = False) -> M: ...
@overload
def auto_hook(
    target: None = None, *, inputs: bool = False, leaves: bool = False
) -> Callable[[Any], Any]: ...
def auto_hook(target: Any = None, *, inputs: bool = False, leaves: bool = False) -> Any:
    """Hook every submodule output and direct parameter of a model (or of a class's
    instances) with TransformerLens HookPoints.

    With ``inputs=True`` each module's input (the first tensor among its positional,
    then keyword arguments) is a site too, ``<module path>.hook_in``; a hook there may
    replace it. With ``leaves=True`` every tensor inside a structured output is a site
    too, named ``<site>.<index or field>`` (``model.layers.0.self_attn.hook_point.1``,
    the attention weights), made when first named: readable, editable, cacheable.
    Returns the same object (an instance) or a subclass standing in for the class;
    ``@auto_hook(inputs=True)`` works as a decorator. Applying it to something already
    hooked warns and returns it unchanged.
    """
    if target is None:
        return functools.partial(auto_hook, inputs=inputs, leaves=leaves)
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(
                f"auto_hook takes an nn.Module subclass or instance; {target.__qualname__} "
                "is a class that does not derive from torch.nn.Module."
            )
        if issubclass(target, HookedModule):
            warnings.warn(f"{target.__qualname__} is already auto_hooked", stacklevel=2)
            return target
        return _decorated_class(target, inputs, leaves)
    if isinstance(target, HookedModule):
        warnings.warn(f"this {type(target).__name__} is already auto_hooked", stacklevel=2)
        return target
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"auto_hook takes an nn.Module instance (e.g. auto_hook(model)) or an nn.Module "
            f"subclass (as @auto_hook); got {type(target).__module__}.{type(target).__qualname__}."
        )
    core = HookCore(target, inputs, leaves)  # may raise; nothing on the model has changed yet
    original = type(target)
    target.__class__ = _instance_class(original)
    try:
        _attach(target, core)
    except BaseException:
        _detach(target)
        raise
    return target


def unwrap(model: M) -> M:
    """Remove everything auto_hook put on ``model`` and return it, as its original class.

    Hooks that were on the model's own HookPoints before auto_hook are kept.
    """
    if not isinstance(model, HookedModule):
        raise TypeError(f"this {type(model).__name__} is not auto_hooked; nothing to unwrap")
    if not type(model).__dict__.get("__auto_hook_composed__"):
        raise TypeError(
            f"{type(model).__qualname__} subclasses an @auto_hook class; there is no "
            "un-hooked version of it to return to. Unwrap the decorated class instead "
            "(`Decorated.unwrap()`) and subclass that."
        )
    _detach(model)  # type: ignore[arg-type]
    return model


def _attach(model: nn.Module, core: HookCore) -> None:
    state = model.__dict__
    saved: dict[str, Any] = {name: state[name] for name in _STATE if name in state}
    hand_placed = {
        site.name: (
            site.hook_point.name,
            {id(h) for h in site.hook_point.fwd_hooks + site.hook_point.bwd_hooks},
        )
        for site in core.sites.values()
        if site.kind is SiteKind.HOOK_POINT
    }
    state[_SAVED] = (saved, hand_placed)
    for site in core.sites.values():
        if site.kind is SiteKind.HOOK_POINT:
            site.hook_point.name = site.name
    hook_dict = SiteDict((name, site.hook_point) for name, site in core.sites.items())
    mod_dict = SiteDict(hook_dict)
    hook_dict.core = mod_dict.core = core
    core.tables = (hook_dict, mod_dict)  # sites added later (leaves, aliases) go in both
    state.update(
        hook_dict=hook_dict,
        mod_dict=mod_dict,
        is_caching=False,
        context_level=0,
        **{_CORE: core},
    )


def _detach(model: nn.Module) -> None:
    """Undo _attach and the class swap; safe on a half-attached model."""
    state = model.__dict__
    core: HookCore | None = state.get(_CORE)
    saved, hand_placed = state.pop(_SAVED, ({}, {}))
    if core is not None:
        core.close()
        core.tables = ()
        for name, (old_name, kept) in hand_placed.items():
            if name not in core.sites:
                continue  # its module was removed from the model since
            hook_point = core.sites[name].hook_point
            for handles in (hook_point.fwd_hooks, hook_point.bwd_hooks):
                for handle in [h for h in handles if id(h) not in kept]:
                    handle.hook.remove()
                    handles.remove(handle)
            hook_point.name = old_name
    for name in _STATE:
        state.pop(name, None)
    state.update(saved)
    model.__class__ = type(model).__dict__.get("__auto_hook_original__", type(model))


def _storing_a_copy(save_hook: Callable[..., Any]) -> Callable[..., Any]:
    """A TransformerLens caching hook that is handed a copy of the value, not the value."""

    @functools.wraps(save_hook)
    def save_copy(tensor: torch.Tensor, hook: HookPoint) -> Any:
        return save_hook(tensor.detach().clone(), hook=hook)

    return save_copy


def _compose(original: type[nn.Module], namespace: dict[str, Any]) -> type[Any]:
    bases: tuple[type, ...] = (HookedModule, original)
    if not issubclass(original, HookedRootModule):
        bases += (HookedRootModule,)
    namespace = {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": original.__doc__,
        "__auto_hook_original__": original,
        "__auto_hook_composed__": True,
        **namespace,
    }
    metaclass: Any = type(original)  # the original's metaclass, whatever it is
    return metaclass(original.__name__, bases, namespace)  # type: ignore[no-any-return]


_INSTANCE_CLASSES: dict[type[nn.Module], type[Any]] = {}


def _instance_class(original: type[nn.Module]) -> type[Any]:
    """One composed class per original class, shared by all its hooked instances."""
    composed = _INSTANCE_CLASSES.get(original)
    if composed is None:
        composed = _INSTANCE_CLASSES.setdefault(original, _compose(original, {}))
    return composed


def _decorated_class(original: type[M], inputs: bool = False, leaves: bool = False) -> type[M]:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        super(hooked, self).__init__(*args, **kwargs)

    functools.update_wrapper(init, original.__init__)
    options = {"__init__": _attach_after(init), "__auto_hook_options__": (inputs, leaves)}
    hooked = _compose(original, options)
    return hooked


def _attach_after(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``init`` so that the model is hooked when the outermost ``__init__`` returns."""

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get(_INIT_DEPTH, 0)
        self.__dict__[_INIT_DEPTH] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            if depth:
                self.__dict__[_INIT_DEPTH] = depth
            else:
                self.__dict__.pop(_INIT_DEPTH, None)
        if not depth:
            options = getattr(type(self), "__auto_hook_options__", (False, False))
            _attach(self, HookCore(self, *options))

    __init__._auto_hook_attaches = True  # type: ignore[attr-defined]
    return __init__
