"""The hook core: the one owner of every torch hook auto_hookpoint puts on a model.

Per module it keeps at most one torch hook of each kind:

* a forward hook that fires the module's OUTPUT sites (its own, then any aliases);
* a forward pre-hook that fires its INPUT sites (and tells observers the module is entered);
* for PARAMETER sites, what :class:`~auto_hookpoint.core.lending.ParameterLending` places
  to show each parameter to its HookPoint and lend the module what the hook returns, for
  the call (on a module dispatched by accelerate, inside accelerate's own forward).

A module carries these only while one of its sites is *active*: its HookPoint holds a
hook, or an observer is watching it. Activity changes are counted and applied under a
lock, and never while another thread compiles (``compile_guards.changing_hooks``), so
with nothing active the model runs torch's own hook-free fast path. A module
muted in the current context (a block that ``resume_from`` skips) fires none of its sites.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from auto_hookpoint.core import compile_guards, structure_watch
from auto_hookpoint.core.context import active_observers, copied_for_this_call
from auto_hookpoint.core.lending import ParameterLending
from auto_hookpoint.core.muting import is_muted
from auto_hookpoint.core.observers import ACTIVE_OBSERVERS, Observer, StopForward, wants_enter
from auto_hookpoint.core.site_hook_point import SiteHookPoint
from auto_hookpoint.core.sites import (
    Site,
    SiteKind,
    SiteView,
    discover_sites,
    has_output_site,
    site_name,
)
from auto_hookpoint.core.structure import Path, find_primary, get_at, replace_at
from auto_hookpoint.errors import ReadOnlySiteError, StructureChangedError


class _ModuleHooks:
    """The sites of one module and the torch hooks currently placed for them."""

    def __init__(self, core: HookCore, module: nn.Module, path: str = ""):
        self.core = core
        self.module = module
        self.path = path
        self.output_sites: list[Site] = []
        self.leaf_sites: list[Site] = []
        self.input_sites: list[Site] = []
        self.lending = ParameterLending(self, module)
        self.param_sites = self.lending.sites
        self.observer_counts: dict[str, int] = {}
        self.enter_watchers = 0  # observers of its output sites that want on_enter
        self.output_handle: RemovableHandle | None = None
        self.pre_handle: RemovableHandle | None = None

    def add(self, site: Site) -> None:
        if site.kind is SiteKind.PARAMETER:
            self.param_sites.append(site)
        elif site.kind is SiteKind.INPUT:
            self.input_sites.append(site)
        elif site.kind is SiteKind.LEAF:
            self.leaf_sites.append(site)
        else:  # OUTPUT, or a model's own HookPoint (whose hooks fire natively)
            self.output_sites.append(site)

    def is_active(self, site: Site) -> bool:
        hook_point = site.hook_point
        held = isinstance(hook_point, SiteHookPoint) and hook_point.has_torch_hooks()
        return held or self.observer_counts.get(site.name, 0) > 0

    def any_active(self, sites: list[Site]) -> bool:
        for site in sites:  # a loop, not any(generator): this runs on every activity change
            if self.is_active(site):
                return True
        return False

    # Torch hooks are bound methods (not closures) so that copy.deepcopy of a model
    # with active hooks gives a copy whose hooks point at the copy's own sites.
    def fire_output(self, module: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        if torch.compiler.is_dynamo_compiling():
            if isinstance(output, StopForward):  # a compiled forward that ended early
                return None
            if self._watched_by_untraced():
                return _eagerly(self.fire_output, module, _args, output)
        if is_muted(module):
            return None
        # Which observers watch each output site, asked once per call.
        watching = self._watching(self.output_sites)
        path = find_primary(output)
        if path is None:
            for site, observers in watching:
                for observer in observers:
                    observer.on_no_tensor(site, output)
            replaced = None
        else:
            tensor = get_at(output, path)
            fired = self._fire(watching, tensor, path, _args)
            replaced = None if fired is tensor else replace_at(output, path, fired)
        final = output if replaced is None else replaced
        for site in self.leaf_sites:
            if not self.is_active(site):
                continue
            try:
                leaf = get_at(final, site.leaf_path)
            except (IndexError, KeyError, AttributeError, TypeError):
                continue  # not in this call's output (e.g. attention weights not asked for)
            if isinstance(leaf, torch.Tensor):
                fired = self._fire(self._watching([site]), leaf, site.leaf_path)
                if fired is not leaf:
                    final = replaced = replace_at(final, site.leaf_path, fired)
        for site, observers in watching:
            for observer in observers:
                observer.on_exit(site, final)
        return replaced

    def before_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if torch.compiler.is_dynamo_compiling() and self._watched_by_untraced():
            return _eagerly(self.before_forward, module, args, kwargs)  # type: ignore[no-any-return]
        if is_muted(module):
            return None
        replaced = None
        if self.enter_watchers:
            for site, observers in self._watching(self.output_sites):
                for observer in observers:
                    observer.on_enter(site, args, kwargs)
        if self.input_sites:
            inputs = (args, kwargs)
            path = find_primary(inputs)
            if path is not None:
                tensor = get_at(inputs, path)
                fired = self._fire(self._watching(self.input_sites), tensor, path[1:])
                if fired is not tensor:
                    replaced = replace_at(inputs, path, fired)
        return replaced

    def _watched_by_untraced(self) -> bool:
        """Whether an observer that is not ``traced`` watches a site of this module in this
        call. A call of the hooked model runs eagerly while one watches it, so compiled code
        meets one only in a part compiled on its own (a compiled ``model.forward``, a
        compiled submodule): there the dispatch runs eagerly, a graph break."""
        if not self.observer_counts and not copied_for_this_call():
            return False  # no observer anywhere: the context need not be asked (a break)
        return any(
            core is self.core
            and not observer.traced
            and any(name in names for name in self.observer_counts)
            for core, observer, names in active_observers()
        )

    def _watching(self, sites: list[Site]) -> list[tuple[Site, list[Observer]]]:
        core = self.core
        if torch.compiler.is_dynamo_compiling() and copied_for_this_call():
            # Traced code decides from the call's own copy of its context, never from the
            # counts all threads share: dynamo guards on what the trace read.
            return [(site, core.observers_of(site)) for site in sites]
        # A site no observer watches, in any context, needs no look at the context.
        counts = self.observer_counts
        return [(site, core.observers_of(site) if site.name in counts else []) for site in sites]

    def _fire(
        self,
        watching: list[tuple[Site, list[Observer]]],
        tensor: Any,
        path: Path,
        module_args: tuple[Any, ...] = (),
    ) -> Any:
        """Pass ``tensor`` through each site's HookPoint in turn, then its observers."""
        for site, observers in watching:
            if site.view is not None:
                tensor = _fire_view(site, observers, tensor, path, module_args)
                continue
            hook_point = site.hook_point
            # A model's own HookPoint ran its hooks itself; only ours are called here.
            if isinstance(hook_point, SiteHookPoint) and hook_point.has_torch_hooks():
                tensor = hook_point(tensor)
            for observer in observers:
                observer.on_output(site, tensor, path)
        return tensor

    def fire_parameter(self, site: Site, parameter: Any) -> Any:
        """Fire a PARAMETER site (called by the module's ParameterLending)."""
        return self._fire(self._watching([site]), parameter, ())


@torch.compiler.disable
def _eagerly(hook: Any, *args: Any) -> Any:
    """Call a torch hook of the core with dynamo off (from compiled code: a graph break)."""
    return hook(*args)


class _Observing:
    """The context of ``HookCore.observing``: a class, not a generator, as it is entered
    and left on every run_with_cache call."""

    __slots__ = ("core", "observer", "watched", "enter", "token")

    def __init__(self, core: HookCore, observer: Observer, watched: frozenset[str]):
        self.core, self.observer, self.watched = core, observer, watched
        self.enter = wants_enter(observer)

    def __enter__(self) -> None:
        self.token = ACTIVE_OBSERVERS.set(
            (*ACTIVE_OBSERVERS.get(), (self.core, self.observer, self.watched))
        )
        try:
            self.core._count_observer(self.watched, +1, self.enter)
        except BaseException:
            ACTIVE_OBSERVERS.reset(self.token)
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.core._count_observer(self.watched, -1, self.enter)
        finally:
            ACTIVE_OBSERVERS.reset(self.token)


def _fire_view(
    site: Site, observers: list[Observer], tensor: Any, path: Path, module_args: tuple[Any, ...]
) -> Any:
    """Fire a site that shows ``tensor`` through its view; write a replacement back."""
    view = site.view
    assert view is not None
    hook_point = site.hook_point
    hooked = isinstance(hook_point, SiteHookPoint) and hook_point.has_torch_hooks()
    if not hooked and not observers:
        return tensor  # idle here (another site of the module is active): nothing to show
    if view.uses_input:
        where = find_primary(module_args)
        shown = view.show(tensor, None if where is None else get_at(module_args, where))
    else:
        shown = view.show(tensor)
    if not hooked:  # observers only read: no edit to look for (nor a version to trace)
        for observer in observers:
            observer.on_output(site, shown, path)
        return tensor
    assert isinstance(hook_point, SiteHookPoint)  # (hooked says so)
    backward = hook_point.has_backward_hooks()
    if view.write_back is None and backward:
        raise ReadOnlySiteError(
            f"{site.name!r} has no gradient of its own here, so a backward hook there "
            f"would never run: {view.read_only_reason or 'its value is computed for reading'}"
        )
    if backward:
        # Backward hooks are tensor hooks on what the site passes on (core/grad_hooks.py).
        # On a view of the module's tensor, which the model may change in place later,
        # autograd would drop them: they go on a copy, which the model goes on from.
        shown = shown.clone()
    version = shown._version  # bumped by any in-place edit
    fired = hook_point(shown)
    edited = backward or fired is not shown or shown._version != version
    if edited and view.write_back is None:
        raise ReadOnlySiteError(
            f"a hook replaced or edited {site.name!r}, which can only be read: "
            f"{view.read_only_reason or 'its value is computed for reading'}"
        )
    for observer in observers:
        observer.on_output(site, fired, path)
    if not edited:
        return tensor
    assert view.write_back is not None
    return view.write_back(tensor, fired)


_RENUMBERED = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


@dataclass(frozen=True)
class _Added:
    """How a site added after discovery (:meth:`HookCore.add_site`) is made again when
    the sites follow a structure change: its view, and the module it was explicitly
    placed on (outside the model's tree; None: the module at its path)."""

    view: SiteView | None
    module: nn.Module | None


def _holds_hooks(hook_point: Any) -> bool:
    if isinstance(hook_point, SiteHookPoint):
        return hook_point.holds_hooks()
    return bool(hook_point.has_hooks() or hook_point._forward_hooks)


class HookCore:
    """Discovers the sites of ``root`` and fires them while they are active."""

    def __init__(self, root: nn.Module, inputs: bool = False, leaves: bool = False):
        self._lock = threading.RLock()
        self.root = root
        self.inputs = inputs
        self.leaves = leaves
        self.sites: dict[str, Site] = {}
        # Name -> HookPoint tables that learn of each site added after discovery (the
        # hooked model's hook_dict and mod_dict); set by whoever attaches the core.
        self.tables: tuple[dict[str, Any], ...] = ()
        # Site HookPoints that hold hooks, in the order they gained them: what
        # reset_hooks() has to visit.
        self.hooked: dict[str, SiteHookPoint] = {}
        self._site_modules: dict[str, _ModuleHooks] = {}
        by_module: dict[int, _ModuleHooks] = {}
        for site in discover_sites(root, self._new_hook_point, inputs):
            self._register(site, by_module)
        self.own_hook_points = [
            site.hook_point for site in self.sites.values() if site.kind is SiteKind.HOOK_POINT
        ]
        # Structure changes (see structure_watch): sites added after discovery (aliases,
        # views, probes; name -> how to make them again), whether the sites may no longer
        # match the model, and whether the next call must find them again first (set
        # while hooks are active; HookedModule.__call__ asks, eagerly, before the call).
        self._added: dict[str, _Added] = {}
        self.stale = False
        self.sync_before_call = False
        self._watch_structure()
        compile_guards.track(self)

    def _new_hook_point(self, name: str) -> SiteHookPoint:
        return SiteHookPoint(name, self._changed)

    def _register(self, site: Site, by_module: dict[int, _ModuleHooks]) -> None:
        if site.name in self.sites:
            raise ValueError(f"there is already a site named {site.name!r}")
        hooks = by_module.get(id(site.module))
        if hooks is None:
            hooks = by_module[id(site.module)] = _ModuleHooks(self, site.module, site.module_path)
        hooks.add(site)
        self.sites[site.name] = site
        self._site_modules[site.name] = hooks
        for table in self.tables:
            table[site.name] = site.hook_point

    def add_site(
        self,
        name: str,
        module_path: str,
        kind: SiteKind,
        *,
        view: SiteView | None = None,
        module: nn.Module | None = None,
    ) -> Site:
        """Add an OUTPUT or INPUT site named ``name`` on the module at ``module_path``.

        An OUTPUT site on a module that already has one is an alias: it fires after the
        module's own site, with what that site passed on. ``view`` shows the tensor to
        the site's hooks in another shape (see :class:`SiteView`). ``module`` places the
        site on a module outside the model's tree (one its code calls, e.g. from a
        function it looks up at run time); ``module_path`` then only labels it.
        Returns the new site.
        """
        if kind not in (SiteKind.OUTPUT, SiteKind.INPUT):
            raise ValueError(f"add_site adds OUTPUT or INPUT sites, not {kind}")
        explicit_module = module
        if module is None:
            module = self.root.get_submodule(module_path)
        site = Site(
            name, kind, module, module_path, hook_point=self._new_hook_point(name), view=view
        )
        with compile_guards.changing_hooks(), self._lock:
            self._register(site, {id(h.module): h for h in self._all_module_hooks()})
            self._added[name] = _Added(view, explicit_module)
        return site

    def remove_site(self, name: str) -> None:
        """Remove a site added with :meth:`add_site`, its hooks and its torch hooks."""
        with compile_guards.changing_hooks(), self._lock:
            hook_point = self.sites[name].hook_point
            if isinstance(hook_point, SiteHookPoint):
                hook_point.remove_hooks("both", including_permanent=True)
                hook_point.clear_torch_hooks()
            site = self.sites.pop(name)
            self._added.pop(name, None)
            hooks = self._site_modules.pop(name)
            self.hooked.pop(name, None)
            hooks.observer_counts.pop(name, None)
            for sites in (hooks.output_sites, hooks.input_sites, hooks.leaf_sites):
                if site in sites:
                    sites.remove(site)
            for table in self.tables:
                dict.pop(table, name, None)
            self._refresh(hooks)

    def leaf_site(self, name: str) -> Site | None:
        """With ``leaves=True``: the site for ``<output site>.<index or field>...``, made on
        first use (which tensors an output holds is known only when it runs). Else None."""
        if not self.leaves or name in self.sites:
            return self.sites.get(name)
        head, marker, rest = name.partition(".hook_point.")
        owner = self.sites.get(f"{head}.hook_point" if marker else "")
        if not marker and name.startswith("hook_point."):  # the root's output
            owner, rest = self.sites.get("hook_point"), name.removeprefix("hook_point.")
        if owner is None or owner.kind is not SiteKind.OUTPUT or not rest:
            return None
        path = tuple(int(p) if p.isdigit() else p for p in rest.split("."))
        site = Site(
            name, SiteKind.LEAF, owner.module, owner.module_path,
            hook_point=self._new_hook_point(name), leaf_path=path,
        )  # fmt: skip
        with compile_guards.changing_hooks(), self._lock:
            self._register(site, {id(h.module): h for h in self._all_module_hooks()})
        return site

    def _all_module_hooks(self) -> list[_ModuleHooks]:
        return list({id(h): h for h in self._site_modules.values()}.values())

    # A lock cannot be copied or pickled; a copied model gets a fresh one.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        # A copy's modules are not watched yet (they may not all exist at this point of
        # a deepcopy): the first sync (at the latest, the first call) watches them and
        # finds the sites again.
        self.stale = self.sync_before_call = True
        compile_guards.track(self)

    # ----------------------------------------------------------------- activity
    def _changed(self, hook_point: SiteHookPoint) -> None:
        name = hook_point.name
        assert name is not None
        with compile_guards.changing_hooks(), self._lock:
            held = hook_point.holds_hooks()
            site = self.sites.get(name)
            if self.stale or site is None or site.hook_point is not hook_point:
                # Follow the model's structure now if that loses no active site; if it
                # would, every run raises until those hooks go (see sync).
                with contextlib.suppress(StructureChangedError):
                    self._follow_structure()
                site = self.sites.get(name)
            if site is None or site.hook_point is not hook_point:
                if held:
                    raise StructureChangedError(
                        f"{name!r} is no longer a site of this model (the model changed "
                        "since this HookPoint was taken from hook_dict), so a hook on it "
                        "could never fire. Take the HookPoint from model.hook_dict again."
                    )
                return
            if held:
                self.hooked[name] = hook_point
            else:
                self.hooked.pop(name, None)
            self._refresh(self._site_modules[name])

    def _refresh(self, hooks: _ModuleHooks) -> None:
        """Place or take away the module's torch hooks to match which sites are active."""
        with compile_guards.changing_hooks(), self._lock:
            want_output = hooks.any_active(hooks.output_sites) or hooks.any_active(hooks.leaf_sites)
            want_params = hooks.any_active(hooks.param_sites)
            want_pre = hooks.enter_watchers > 0 or hooks.any_active(hooks.input_sites)
            module = hooks.module
            if want_output and hooks.output_handle is None:
                hooks.output_handle = module.register_forward_hook(hooks.fire_output)
            elif not want_output and hooks.output_handle is not None:
                hooks.output_handle.remove()
                hooks.output_handle = None
            if want_pre and hooks.pre_handle is None:
                hooks.pre_handle = module.register_forward_pre_hook(
                    hooks.before_forward, with_kwargs=True
                )
            elif not want_pre and hooks.pre_handle is not None:
                hooks.pre_handle.remove()
                hooks.pre_handle = None
            if want_params:
                hooks.lending.place()
            else:
                hooks.lending.remove()

    def observing(self, observer: Observer, names: Iterable[str]) -> _Observing:
        """Make ``observer`` see the sites ``names`` in this context only, until exit."""
        watched = frozenset(names)
        self.sync()
        sites = self.sites
        for name in watched:
            if name not in sites:
                unknown = sorted(n for n in watched if n not in sites)
                raise KeyError(f"not hook sites of this model: {unknown[:5]}")
        return _Observing(self, observer, watched)

    def _count_observer(self, names: frozenset[str], step: int, enter: bool) -> None:
        with compile_guards.changing_hooks(), self._lock:
            touched: dict[int, _ModuleHooks] = {}
            site_modules = self._site_modules
            for name in names:
                hooks = site_modules[name]
                counts = hooks.observer_counts
                count = counts.get(name, 0) + step
                if count:
                    counts[name] = count
                else:
                    del counts[name]
                touched[id(hooks)] = hooks
            if enter:  # once per module, however many of its sites are watched
                for hooks in touched.values():
                    hooks.enter_watchers += step
            for hooks in touched.values():
                self._refresh(hooks)

    def give_back_lent(self) -> None:
        """Give every module back the real parameters lent to it (after a
        ``KeyboardInterrupt`` or ``SystemExit`` ended a call; see core/lending.py)."""
        with self._lock:
            for hooks in self._all_module_hooks():
                hooks.lending.give_back_all()

    def installed_hook_count(self) -> int:
        """How many torch hooks the core has on the model right now (0 when idle)."""
        with self._lock:
            return sum(
                (h.output_handle is not None) + (h.pre_handle is not None) + h.lending.hook_count()
                for h in self._all_module_hooks()
            )

    def close(self) -> None:
        """Remove every hook from every site and every torch hook of the core."""
        compile_guards.untrack(self)
        with compile_guards.changing_hooks(), self._lock:
            for site in self.sites.values():
                if isinstance(site.hook_point, SiteHookPoint):
                    site.hook_point.remove_hooks("both", including_permanent=True)
                    site.hook_point.clear_torch_hooks()
            for hooks in self._all_module_hooks():
                hooks.observer_counts.clear()
                hooks.enter_watchers = 0
                self._refresh(hooks)
            self.sync_before_call = False
            structure_watch.unwatch(self, list(self.root.modules()))

    # ------------------------------------------------------- structure changes
    def mark_stale(self) -> None:
        """The model's modules or parameters changed (told by structure_watch): find the
        sites again before the next use, and before the next call if hooks are active."""
        with self._lock:
            self.stale = True
            busy = self.installed_hook_count() > 0 or any(
                _holds_hooks(hp) for hp in self.own_hook_points
            )
            if busy:
                self.sync_before_call = True

    def _watch_structure(self) -> None:
        modules = list(self.root.modules())
        structure_watch.watch(self, modules)
        # Deleting an item of a ModuleList, Sequential or ModuleDict registers nothing
        # (and renumbers the rest): each one's table of children is compared instead.
        self._containers = [
            (m, m._modules, len(m._modules)) for m in modules if isinstance(m, _RENUMBERED)
        ]

    def _containers_changed(self) -> bool:
        return any(m._modules is not d or len(d) != n for m, d, n in self._containers)

    def sync(self, strict: bool = True) -> None:  # cheap when nothing changed: every run calls it
        """Find the sites again if the model changed since they were found: sites follow
        their module path (a replaced module's hooks and observers move to the new one;
        new modules and parameters get sites). If a site that holds hooks or is observed
        no longer exists, nothing changes, every call of the model raises, and so does
        this (unless ``strict=False``): StructureChangedError."""
        if self.stale or self._containers_changed():
            with compile_guards.changing_hooks(), self._lock:  # sites and hooks may move
                if self.stale or self._containers_changed():
                    try:
                        self._follow_structure()
                    except StructureChangedError:
                        if strict:
                            raise

    def _follow_structure(self) -> None:
        self.stale = True
        if any(h.lending.lending_now() for h in self._all_module_hooks()):
            return  # a call is running with lent parameters: after it, not under it
        reuse = {
            n: s.hook_point for n, s in self.sites.items() if s.kind is not SiteKind.HOOK_POINT
        }
        fresh = {
            site.name: site
            for site in discover_sites(
                self.root, lambda name: reuse.get(name) or self._new_hook_point(name), self.inputs
            )
        }
        for name, old in self.sites.items():  # sites made after discovery: aliases, leaves
            added = self._added.get(name)
            if name in fresh or (added is None and old.kind is not SiteKind.LEAF):
                continue
            module = self._module_now(old, added, fresh)
            if module is not None:
                fresh[name] = Site(
                    name, old.kind, module, old.module_path,
                    hook_point=old.hook_point, leaf_path=old.leaf_path, view=old.view,
                )  # fmt: skip
        lost = [
            name
            for name, old in self.sites.items()
            if name not in fresh
            and (_holds_hooks(old.hook_point) or self._site_modules[name].observer_counts.get(name))
        ]
        if lost:
            self.sync_before_call = True
            raise StructureChangedError(
                f"the model changed since auto_hook found its sites: {sorted(lost)[:5]} no "
                "longer exist (their module was replaced or removed, or their parameter "
                "renamed, as pruning and parametrize do), yet hold hooks or are observed, "
                "which could never fire again. Remove those hooks "
                "(model.reset_hooks(including_permanent=True)), or call model.setup() to "
                "find the sites again (it removes all hooks)."
            )
        old_hooks = self._all_module_hooks()
        old_counts = {n: h.observer_counts.get(n, 0) for n, h in self._site_modules.items()}
        watchers = {h.path: h.enter_watchers for h in old_hooks}
        for hooks in old_hooks:  # every torch hook comes off; _refresh puts back what is due
            for handle in (hooks.output_handle, hooks.pre_handle):
                if handle is not None:
                    handle.remove()
            hooks.output_handle = hooks.pre_handle = None
            hooks.lending.remove()  # (puts back what accelerate had, on a dispatched module)
            # A torch hook of this call taken before now finds nothing left to do.
            hooks.output_sites, hooks.leaf_sites, hooks.input_sites = [], [], []
            hooks.param_sites.clear()  # the lending's own list
        self.sites, self._site_modules = {}, {}
        for table in self.tables:
            table.clear()
        by_module: dict[int, _ModuleHooks] = {}
        for site in fresh.values():
            if site.kind is SiteKind.HOOK_POINT:
                site.hook_point.name = site.name
            self._register(site, by_module)
        self.own_hook_points = [
            s.hook_point for s in self.sites.values() if s.kind is SiteKind.HOOK_POINT
        ]
        self.hooked = {n: hp for n, hp in self.hooked.items() if n in self.sites}
        for hooks in by_module.values():
            hooks.enter_watchers = watchers.get(hooks.path, 0)
            for site in (
                hooks.output_sites + hooks.leaf_sites + hooks.input_sites + hooks.param_sites
            ):
                if old_counts.get(site.name):
                    hooks.observer_counts[site.name] = old_counts[site.name]
            self._refresh(hooks)
        self._watch_structure()
        self.stale = False
        self.sync_before_call = False

    def _module_now(
        self, old: Site, added: _Added | None, fresh: dict[str, Site]
    ) -> nn.Module | None:
        """Where a site made after discovery belongs now, or None if nowhere."""
        if added is not None and added.module is not None:
            return added.module  # placed on a module outside the model's tree: it stays
        if old.kind is SiteKind.LEAF:
            owner = fresh.get(site_name(old.module_path))
            return None if owner is None else owner.module
        module = self._module_at(old.module_path)
        if module is None:
            return None
        if module is not old.module and not has_output_site(module, old.module_path):
            return None
        return module

    def _module_at(self, path: str) -> nn.Module | None:
        try:
            return self.root.get_submodule(path)
        except AttributeError:
            return None

    def observers_of(self, site: Site) -> list[Observer]:
        return [
            observer
            for core, observer, names in active_observers()
            if core is self and site.name in names
        ]
