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

import copy
import copyreg
import functools
import logging
import pickle
import warnings
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from types import MappingProxyType
from typing import Any, TypeVar, overload

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from auto_hookpoint.core.attached import CORE_ATTRIBUTE, core_of
from auto_hookpoint.core.cache import (
    NamesFilter,
    cached_forward,
    check_batch_removable,
    resolve_names_filter,
)
from auto_hookpoint.core.compile_guards import guard_hooks_when_compiling
from auto_hookpoint.core.context import (
    enter_call,
    exit_call,
    not_traced,
    runs_eagerly,
    watched_by_untraced_observer,
)
from auto_hookpoint.core.hook_core import HookCore
from auto_hookpoint.core.observers import StopForward
from auto_hookpoint.core.sites import Site, SiteKind
from auto_hookpoint.errors import (
    CompiledBeforeHookingError,
    NameClashWarning,
    UnknownHookNameError,
)
from auto_hookpoint.name_clashes import (
    ModelFirst,
    added_methods,
    class_clashes,
    how_to_reach,
    instance_clashes,
    raw_attribute,
    refuse_stored_name_clashes,
)
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


@not_traced
def _call_from_compiled_code(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return model(*args, **kwargs)


@torch.compiler.disable
def _run_eagerly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return call(*args, **kwargs)


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
            return functools.partial(original_class, owner)
        return functools.partial(unwrap, obj)


def original_class(cls: type) -> type:
    """The class ``@auto_hook`` decorated (``cls`` itself when it is not a decorated one)."""
    return cls.__dict__.get("__auto_hook_original__", cls)  # type: ignore[no-any-return]


class HookedModule:
    """The part of a hooked model's class that auto_hook adds in front of the model's own.

    ``isinstance(model, HookedModule)`` tells whether a model is hooked.
    """

    __auto_hook_original__: type[nn.Module]
    hook_dict: SiteDict
    mod_dict: SiteDict
    unwrap = _Unwrap()

    # Entry points are @not_traced: dynamo compiles what they call, not their own frames.
    # __call__ begins every call of the model, however it is compiled, so the copy of the
    # caller's context that the core's dispatch reads in compiled code is always taken
    # here, eagerly; see core/context.py.
    #
    # While an observer whose callbacks cannot be traced (trace, memory_profile,
    # find_nonfinite, generation_trace) watches the model, the call runs eagerly: dynamo
    # off in this thread, and the model's own compiled call (model.compile()) bypassed.
    @runs_eagerly
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_dynamo_compiling():  # dynamo traces a function that calls the model
            if torch.compiler.is_exporting():
                return super().__call__(*args, **kwargs)  # type: ignore[misc]  # as it is
            return _call_from_compiled_code(self, args, kwargs)  # a graph break, then this
        guard_hooks_when_compiling()  # again, after a torch._dynamo.reset()
        core = self.__dict__[_CORE]
        if core.sync_before_call:  # the model changed while hooks were active: follow first
            core.sync()  # (or refuse, if a site holding hooks is gone)
        enclosing = enter_call()
        try:
            if watched_by_untraced_observer(core):
                return _run_eagerly(self._call_impl, *args, **kwargs)  # type: ignore[attr-defined]
            output = super().__call__(*args, **kwargs)  # type: ignore[misc]
        except BaseException as error:
            if not isinstance(error, Exception):  # torch's always-called hooks did not run
                core.give_back_lent()
            raise
        finally:
            exit_call(enclosing)
        if isinstance(output, StopForward):  # caught in compiled code by the forward
            raise output
        return output

    @property
    def hook_sites(self) -> Mapping[str, Site]:
        """Every site by name, with its kind, module and module path (read-only)."""
        return MappingProxyType(core_of(self).sites)

    @not_traced
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
        # HookedModule.hooks, not self.hooks: the model may have a hooks() of its own.
        with HookedModule.hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)  # type: ignore[operator]

    @not_traced
    def hooks(
        self,
        fwd_hooks: Any = (),
        bwd_hooks: Any = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Any:
        """TransformerLens' ``hooks()`` context manager, with hooks that belong to the
        thread or task that added them; see :mod:`auto_hookpoint.scoped_hooks`."""
        core_of(self, "hooks()")  # a TypeError naming the fix on a model that is not hooked
        for argument, specs in (("fwd_hooks", fwd_hooks), ("bwd_hooks", bwd_hooks)):
            _check_hook_specs(argument, specs)
        return scoped_hooks(self, fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    @not_traced
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
        check_batch_removable(model_args, remove_batch_dim)
        if incl_bwd or not reset_hooks_end:
            # HookedRootModule's, named: super() could reach a run_with_cache of the
            # model's own class, which stands after HookedModule.
            return HookedRootModule.run_with_cache(  # type: ignore[no-any-return]
                self,  # type: ignore[arg-type]
                *model_args,
                names_filter=names,
                device=device,  # type: ignore[arg-type]
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
                functools.partial(self, *model_args, **model_kwargs),  # type: ignore[misc]
                device,
                remove_batch_dim,
                pos_slice,
            )
        finally:
            if clear_contexts:
                HookedRootModule.clear_contexts(self)  # type: ignore[arg-type]

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
        # HookedRootModule's, named (as in run_with_cache): super() could reach one of the
        # model's own class, which stands after HookedModule.
        cache, fwd, bwd = HookedRootModule.get_caching_hooks(
            self,  # type: ignore[arg-type]
            names,
            incl_bwd,
            device,  # type: ignore[arg-type]
            remove_batch_dim,
            cache,
            pos_slice,
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
        cache, fwd, bwd = HookedModule.get_caching_hooks(
            self, names_filter, incl_bwd, device, remove_batch_dim, cache
        )
        for name, hook in fwd:
            self.mod_dict[name].add_hook(hook, dir="fwd")
        for name, hook in bwd:
            self.mod_dict[name].add_hook(hook, dir="bwd")
        return cache

    @not_traced
    def run_until(self, site: str, *args: Any, bank: Any = (), **kwargs: Any) -> EarlyOutput:
        """Run the forward only until ``site`` fires; see :func:`auto_hookpoint.split.run_until`."""
        return run_until(self, site, *args, bank=bank, **kwargs)

    @not_traced
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

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle (``torch.save(model)``, ``pickle.dumps``) an instance hooked by
        ``auto_hook(model)`` as its original class plus its state: the composed class
        cannot be found by name, so loading composes it again and the model comes back
        hooked, with its sites. (Instances of an ``@auto_hook`` class pickle as that
        class, which is found by name.)

        A model that holds hooks, or that an observer is watching, is refused:
        TransformerLens keeps each hook in a closure, which pickle cannot save.
        """
        core = self.__dict__.get(_CORE)
        if core is not None and (core.hooked or core.installed_hook_count()):
            held = list(core.hooked)[:3] or ["an observer (capture, trace, ...) is active"]
            raise pickle.PicklingError(
                f"cannot pickle this hooked {type(self).__name__}: hooks are in place "
                f"({', '.join(held)}). TransformerLens keeps hooks in closures, which pickle "
                "cannot save: call model.reset_hooks(including_permanent=True) (and leave "
                "any observer's `with` block) before saving, and add the hooks again after "
                "loading; or save the weights alone with model.state_dict()."
            )
        reduced = super().__reduce_ex__(protocol)
        cls = type(self)
        original = cls.__dict__.get("__auto_hook_original__")
        if (
            _INSTANCE_CLASSES.get(original) is cls  # type: ignore[arg-type]
            and isinstance(reduced, tuple)
            and reduced[0] is copyreg.__newobj__  # type: ignore[attr-defined]
            and reduced[1][0] is cls
        ):
            return (_new_hooked, (original, *reduced[1][1:]), *reduced[2:])
        return reduced

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        """``copy.deepcopy``: what Python's default does, hooks included (a deep copy
        shares the hook functions), without the pickling path's refusal of hooks."""
        own = getattr(super(), "__deepcopy__", None)
        if own is not None:  # the model's class copies itself
            return own(memo)
        cls = type(self)
        copied = cls.__new__(cls)
        memo[id(self)] = copied
        copied.__setstate__(copy.deepcopy(self.__getstate__(), memo))  # type: ignore[attr-defined]
        return copied

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        forward = getattr(cls, "forward", None)
        if forward is not None and not getattr(forward, "_auto_hook_returns_stops", False):
            cls.forward = _returning_stops(forward)  # type: ignore[attr-defined]
        if cls.__dict__.get("__auto_hook_composed__"):
            return  # a class auto_hook composes, not a user subclass
        # A user subclass of a decorated class: its own names follow the name-clash
        # rule (hooked.name_clashes), and it is hooked once the outermost __init__ is done.
        refuse_stored_name_clashes(cls)
        _warn_name_clashes(
            cls.__qualname__, {n: f"{cls.__qualname__} defines it" for n in vars(cls) if n in ADDED}
        )
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_auto_hook_attaches", False):
            setattr(cls, "__init__", _attach_after(init))  # noqa: B010


def _returning_stops(forward: Callable[..., Any]) -> Callable[..., Any]:
    """The forward of a hooked class: the model's own, except that in compiled code a
    StopForward raised inside it (run_until's exit) is returned rather than raised.

    Dynamo cannot compile an exception that leaves the compiled function; caught here,
    inside it, the forward up to the exit compiles into one graph, and ``__call__``
    raises the exception again outside the compiled region. Eagerly, nothing changes.
    """

    @functools.wraps(forward)
    def forward_returning_stops(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_dynamo_compiling():
            return forward(self, *args, **kwargs)
        try:
            return forward(self, *args, **kwargs)
        except StopForward as stop:
            return stop

    forward_returning_stops._auto_hook_returns_stops = True  # type: ignore[attr-defined]
    return forward_returning_stops


def _check_hook_specs(argument: str, specs: Any) -> None:
    """``fwd_hooks``/``bwd_hooks`` are a list of (site name or name predicate, hook) pairs."""
    shape = f"{argument} is a list of (site name, hook) pairs, e.g. [('layers.0.hook_point', fn)]"
    if isinstance(specs, (str, Mapping)) or not isinstance(specs, (list, tuple)):
        raise TypeError(f"{shape}; got a {type(specs).__name__}")
    for spec in specs:
        if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
            raise TypeError(f"{shape}; got the entry {spec!r}")
        name, hook = spec
        if not (isinstance(name, str) or callable(name)):
            raise TypeError(f"{shape}: the name in {spec!r} is neither a string nor a predicate")
        if not callable(hook):
            what = type(hook).__name__
            raise TypeError(f"{shape}: the hook for {name!r} is a {what}, not a function")


# Every method name a hooked model gains, with our attribute, and whose it is.
ADDED: dict[str, Any] = added_methods(HookedModule)
_OWNER = {n: "HookedModule" if n in vars(HookedModule) else "HookedRootModule" for n in ADDED}


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
    for option, value in (("inputs", inputs), ("leaves", leaves)):
        if not isinstance(value, bool):
            raise TypeError(f"auto_hook's {option}= is True or False, not {value!r}")
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
        if issubclass(target, torch.jit.ScriptModule):
            what = f"{target.__qualname__} is a TorchScript class"
            raise TypeError(_TORCHSCRIPT.format(what=what))
        return _decorated_class(target, inputs, leaves)
    if isinstance(target, HookedModule):
        warnings.warn(f"this {type(target).__name__} is already auto_hooked", stacklevel=2)
        return target
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"auto_hook takes an nn.Module instance (e.g. auto_hook(model)) or an nn.Module "
            f"subclass (as @auto_hook); got {type(target).__module__}.{type(target).__qualname__}."
        )
    # Refusals and HookCore may raise; nothing on the model has changed before them.
    _refuse_compiled_submodules(target)
    original = type(target)
    _refuse_torchscript(target)
    refuse_stored_name_clashes(original, target)
    core = HookCore(target, inputs, leaves)
    target.__class__ = _instance_class(original)
    try:
        _attach(target, core)
    except BaseException:
        _detach(target)
        raise
    clashes = {**type(target).__dict__["__auto_hook_clashes__"], **_instance_clashes(target)}
    _warn_name_clashes(original.__qualname__, clashes)
    return target


def _refuse_compiled_submodules(model: nn.Module) -> None:
    """Code dynamo compiled for a submodule before auto_hook does not check the hooks of
    the modules it calls (nothing made it, then), so hooks added later would be skipped
    there; the model itself is fine (its class changes, which makes dynamo recompile)."""
    for path, module in model.named_modules():
        if path and module._compiled_call_impl is not None:
            raise CompiledBeforeHookingError(
                f"{path!r} was compiled ({type(module).__name__}.compile()) before auto_hook: "
                "its compiled code would not notice hooks that auto_hook adds later, and "
                "they would be skipped there. Call auto_hook(model) first and compile "
                "afterwards (each submodule's .compile() or the whole model's)."
            )


_TORCHSCRIPT = (
    "auto_hook cannot hook TorchScript: {what} (a torch.jit.script or torch.jit.trace "
    "result), and TorchScript modules take no Python hooks. Pass auto_hook the original "
    "nn.Module instead (before torch.jit.script/trace); to compile a hooked model, use "
    "torch.compile."
)


def _refuse_torchscript(model: nn.Module) -> None:
    for path, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            what = f"the submodule {path!r} is" if path else "this model is"
            raise TypeError(_TORCHSCRIPT.format(what=f"{what} a {type(module).__name__}"))


def _instance_clashes(model: nn.Module) -> dict[str, str]:
    return {
        name: "a submodule, parameter, buffer or attribute of the instance"
        for name in instance_clashes(model, ADDED)
    }


def _warn_name_clashes(model_class: str, clashes: dict[str, str]) -> None:
    """Say which of the model's own attributes stand in front of ours, and how to reach
    ours (see auto_hookpoint.name_clashes)."""
    if not clashes:
        return
    listed = "; ".join(
        f"{name} ({where}; auto_hookpoint's: {how_to_reach(name, _OWNER[name])})"
        for name, where in clashes.items()
    )
    warnings.warn(
        NameClashWarning(
            f"{model_class} has its own attributes under names a hooked model gains: "
            f"{listed}. The model's own are kept, so model.<name> is yours (and so is what "
            "TransformerLens or sae_lens code calling that name gets); auto_hookpoint's own "
            "stay reachable as shown."
        ),
        stacklevel=3,
    )


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
    # The handles themselves (not their ids): copied with the model by deepcopy and
    # pickle, they still say which hooks were there before auto_hook.
    hand_placed = {
        site.name: (site.hook_point.name, [*site.hook_point.fwd_hooks, *site.hook_point.bwd_hooks])
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
                for handle in [h for h in handles if not any(h is k for k in kept)]:
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
    """The class of a hooked ``original``: HookedModule, then ``original``, then
    HookedRootModule. Of every method name a hooked model gains, the model's own class
    keeps its own; the others stand aside for the instance's submodules, parameters and
    buffers of that name (auto_hookpoint.name_clashes)."""
    refuse_stored_name_clashes(original)
    bases: tuple[type, ...] = (HookedModule, original)
    if not issubclass(original, HookedRootModule):
        bases += (HookedRootModule,)
    clashes = class_clashes(original, ADDED)
    for name, ours in ADDED.items():
        theirs = clashes.get(name)
        namespace[name] = raw_attribute(theirs, name) if theirs else ModelFirst(name, ours)
    namespace = {
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "__doc__": original.__doc__,
        "__auto_hook_original__": original,
        "__auto_hook_composed__": True,
        # name -> where the model's own comes from, for the NameClashWarning
        "__auto_hook_clashes__": {n: f"{c.__qualname__} defines it" for n, c in clashes.items()},
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


def _new_hooked(original: type[nn.Module], *args: Any) -> Any:
    """Unpickling: a new, empty instance of the class auto_hook composes for ``original``
    (its state, the hook core included, is set next by ``__setstate__``)."""
    cls = _instance_class(original)
    return cls.__new__(cls, *args)


def _decorated_class(original: type[M], inputs: bool = False, leaves: bool = False) -> type[M]:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        super(hooked, self).__init__(*args, **kwargs)

    functools.update_wrapper(init, original.__init__)
    options = {"__init__": _attach_after(init), "__auto_hook_options__": (inputs, leaves)}
    hooked = _compose(original, options)
    _warn_name_clashes(original.__qualname__, hooked.__auto_hook_clashes__)
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
            _refuse_torchscript(self)
            refuse_stored_name_clashes(type(self), self)
            _attach(self, HookCore(self, *options))
            _warn_name_clashes(type(self).__qualname__, _instance_clashes(self))

    __init__._auto_hook_attaches = True  # type: ignore[attr-defined]
    return __init__
