"""The hook core: the one owner of every torch hook auto_hookpoint puts on a model.

Per module it keeps at most one torch hook of each kind:

* a forward hook that fires the module's OUTPUT sites (its own, then any aliases);
* a forward pre-hook that fires its INPUT sites and, for PARAMETER sites, shows each
  parameter to its HookPoint and lends the module whatever the hook returns for the
  duration of the call;
* an always-called forward hook that gives the module its real parameters back, also
  when the forward raises.

A module carries these only while one of its sites is *active*: its HookPoint holds a
hook, or an observer is watching it. Activity changes are counted and applied under a
lock, so with nothing active the model runs torch's own hook-free fast path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from auto_hookpoint.core import structure_watch
from auto_hookpoint.core.observers import ACTIVE_OBSERVERS, Observer, wants_enter
from auto_hookpoint.core.params_back import ParamsBack
from auto_hookpoint.core.site_hook_point import SiteHookPoint
from auto_hookpoint.core.sites import Site, SiteKind, discover_sites, has_output_site, site_name
from auto_hookpoint.core.structure import Path, find_primary, get_at, replace_at
from auto_hookpoint.errors import StructureChangedError


class _ModuleHooks:
    """The sites of one module and the torch hooks currently placed for them."""

    def __init__(self, core: HookCore, module: nn.Module, path: str = ""):
        self.core = core
        self.module = module
        self.path = path
        self.output_sites: list[Site] = []
        self.leaf_sites: list[Site] = []
        self.input_sites: list[Site] = []
        self.param_sites: list[Site] = []
        self.observer_counts: dict[str, int] = {}
        self.enter_watchers = 0  # observers of its output sites that want on_enter
        self.output_handle: RemovableHandle | None = None
        self.pre_handle: RemovableHandle | None = None
        self.return_handle: RemovableHandle | None = None
        # Real parameters stashed while the module runs with hooked ones; a stack,
        # because a module may be called again from inside its own forward.
        self.lent: list[dict[str, Any]] = []
        self.params_back: ParamsBack | None = None  # its forward, while it lends

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

    # Torch hooks are bound methods (not closures) so that copy.deepcopy of a model
    # with active hooks gives a copy whose hooks point at the copy's own sites.
    def fire_output(self, _module: nn.Module, _args: Any, output: Any) -> Any:
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
            fired = self._fire(watching, tensor, path)
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
        self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
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
        if self.param_sites:
            self._lend_params()
        return replaced

    def _watching(self, sites: list[Site]) -> list[tuple[Site, list[Observer]]]:
        return [(site, self.core.observers_of(site)) for site in sites]

    def _fire(self, watching: list[tuple[Site, list[Observer]]], tensor: Any, path: Path) -> Any:
        """Pass ``tensor`` through each site's HookPoint in turn, then its observers."""
        for site, observers in watching:
            hook_point = site.hook_point
            # A model's own HookPoint ran its hooks itself; only ours are called here.
            if isinstance(hook_point, SiteHookPoint) and hook_point.has_torch_hooks():
                tensor = hook_point(tensor)
            for observer in observers:
                observer.on_output(site, tensor, path)
        return tensor

    def _lend_params(self) -> None:
        parameters = self.module._parameters
        real: dict[str, Any] = {}
        for site in self.param_sites:
            name = site.param_name
            assert name is not None
            param = parameters[name]
            if param is None:
                continue
            # In a call nested in another call of this module (re-entrant), _parameters
            # holds what the outer call was lent: the hook still sees the real parameter.
            real_param = next((entry[name] for entry in self.lent if name in entry), param)
            shown = self._fire(self._watching([site]), real_param, ())
            if shown is not param:
                real[name] = param
                # The module reads self.<name> through Module.__getattr__, which looks
                # in _parameters: the hooked tensor is what it computes with, and
                # autograd carries gradients through it to the real parameter.
                parameters[name] = shown
        self.lent.append(real)

    def return_params(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        if self.lent:
            self.module._parameters.update(self.lent.pop())


_RENUMBERED = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


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
        # Structure changes (see structure_watch): names of sites added after discovery
        # (aliases), whether the sites may no longer match the model, and the forward
        # pre-hook on the root that checks before a call while they may not.
        self._added: dict[str, SiteKind] = {}
        self.stale = False
        self._guard: RemovableHandle | None = None
        self._watch_structure()

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

    def add_site(self, name: str, module_path: str, kind: SiteKind) -> Site:
        """Add an OUTPUT or INPUT site named ``name`` on the module at ``module_path``.

        An OUTPUT site on a module that already has one is an alias: it fires after the
        module's own site, with what that site passed on. Returns the new site.
        """
        if kind not in (SiteKind.OUTPUT, SiteKind.INPUT):
            raise ValueError(f"add_site adds OUTPUT or INPUT sites, not {kind}")
        module = self.root.get_submodule(module_path)
        site = Site(name, kind, module, module_path, hook_point=self._new_hook_point(name))
        with self._lock:
            self._register(site, {id(h.module): h for h in self._all_module_hooks()})
            self._added[name] = kind
        return site

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
        with self._lock:
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
        # a deepcopy): the first sync watches them and finds the sites again.
        self.stale = True

    # ----------------------------------------------------------------- activity
    def _changed(self, hook_point: SiteHookPoint) -> None:
        name = hook_point.name
        assert name is not None
        with self._lock:
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
        with self._lock:
            want_output = any(hooks.is_active(s) for s in hooks.output_sites + hooks.leaf_sites)
            want_params = any(hooks.is_active(s) for s in hooks.param_sites)
            want_pre = (
                want_params
                or hooks.enter_watchers > 0
                or any(hooks.is_active(s) for s in hooks.input_sites)
            )
            module = hooks.module
            if want_output and hooks.output_handle is None:
                hooks.output_handle = module.register_forward_hook(hooks.fire_output)
            elif not want_output and hooks.output_handle is not None:
                hooks.output_handle.remove()
                hooks.output_handle = None
            if want_pre and hooks.pre_handle is None:
                # First: another pre-hook may compute with the parameters we lend (pruning
                # computes weight = weight_orig * mask in one).
                hooks.pre_handle = module.register_forward_pre_hook(
                    hooks.before_forward, with_kwargs=True, prepend=True
                )
                if module is self.root and self._guard is not None:  # the guard stays first
                    self._set_guard(False)
                    self._set_guard(True)
            elif not want_pre and hooks.pre_handle is not None:
                hooks.pre_handle.remove()
                hooks.pre_handle = None
            if want_params and hooks.return_handle is None:
                # prepend: the real parameters are back before any output hook runs.
                hooks.return_handle = module.register_forward_hook(
                    hooks.return_params, prepend=True, always_call=True
                )
                hooks.params_back = ParamsBack(module, hooks.return_params)
                hooks.params_back.install()
            elif not want_params and hooks.return_handle is not None:
                hooks.return_handle.remove()
                hooks.return_handle = None
                if hooks.params_back is not None:
                    hooks.params_back.remove()
                    hooks.params_back = None

    @contextlib.contextmanager
    def observing(self, observer: Observer, names: Iterable[str]) -> Iterator[None]:
        """Make ``observer`` see the sites ``names`` in this context only, until exit."""
        watched = frozenset(names)
        self.sync()
        unknown = watched - self.sites.keys()
        if unknown:
            raise KeyError(f"not hook sites of this model: {sorted(unknown)[:5]}")
        enter = wants_enter(observer)
        self._count_observer(watched, +1, enter)  # may raise: nothing is set yet
        token = ACTIVE_OBSERVERS.set((*ACTIVE_OBSERVERS.get(), (self, observer, watched)))
        try:
            yield
        finally:
            self._count_observer(watched, -1, enter)
            ACTIVE_OBSERVERS.reset(token)

    def _count_observer(self, names: frozenset[str], step: int, enter: bool) -> None:
        with self._lock:
            touched: dict[int, _ModuleHooks] = {}
            for name in names:
                hooks = self._site_modules[name]
                count = hooks.observer_counts.get(name, 0) + step
                if count:
                    hooks.observer_counts[name] = count
                else:
                    hooks.observer_counts.pop(name, None)
                touched[id(hooks)] = hooks
            if enter:  # once per module, however many of its sites are watched
                for hooks in touched.values():
                    hooks.enter_watchers += step
            for hooks in touched.values():
                self._refresh(hooks)

    def installed_hook_count(self) -> int:
        """How many torch hooks the core has on the model right now (0 when idle)."""
        with self._lock:
            return (self._guard is not None) + sum(
                (h.output_handle is not None)
                + (h.pre_handle is not None)
                + (h.return_handle is not None)
                for h in self._all_module_hooks()
            )

    def close(self) -> None:
        """Remove every hook from every site and every torch hook of the core."""
        with self._lock:
            for site in self.sites.values():
                if isinstance(site.hook_point, SiteHookPoint):
                    site.hook_point.remove_hooks("both", including_permanent=True)
                    site.hook_point.clear_torch_hooks()
            for hooks in self._all_module_hooks():
                hooks.observer_counts.clear()
                hooks.enter_watchers = 0
                self._refresh(hooks)
            self._set_guard(False)
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
                self._set_guard(True)

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
            with self._lock:
                if self.stale or self._containers_changed():
                    try:
                        self._follow_structure()
                    except StructureChangedError:
                        if strict:
                            raise

    def _set_guard(self, on: bool) -> None:
        if on and self._guard is None:
            self._guard = self.root.register_forward_pre_hook(
                self._sync_before_call, prepend=True, with_kwargs=True
            )
        elif not on and self._guard is not None:
            self._guard.remove()
            self._guard = None

    def _sync_before_call(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        self.sync()
        # torch took this call's pre-hooks before the sites moved: the root's new
        # pre-hook (if it needs one) runs from here, the old one does nothing.
        root = next((h for h in self._all_module_hooks() if h.module is self.root), None)
        if root is not None and root.pre_handle is not None:
            return root.before_forward(module, args, kwargs)
        return None

    def _follow_structure(self) -> None:
        self.stale = True
        if any(h.lent for h in self._all_module_hooks()):
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
            if name in fresh or (name not in self._added and old.kind is not SiteKind.LEAF):
                continue
            owner_path = old.module_path
            owner = fresh.get(site_name(owner_path)) if old.kind is SiteKind.LEAF else None
            module = owner.module if owner is not None else self._module_at(owner_path)
            if module is not None and (owner is not None or has_output_site(module, owner_path)):
                fresh[name] = Site(
                    name, old.kind, module, owner_path,
                    hook_point=old.hook_point, leaf_path=old.leaf_path,
                )  # fmt: skip
        lost = [
            name
            for name, old in self.sites.items()
            if name not in fresh
            and (_holds_hooks(old.hook_point) or self._site_modules[name].observer_counts.get(name))
        ]
        if lost:
            self._set_guard(True)
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
            for handle in (hooks.output_handle, hooks.pre_handle, hooks.return_handle):
                if handle is not None:
                    handle.remove()
            hooks.output_handle = hooks.pre_handle = hooks.return_handle = None
            if hooks.params_back is not None:
                hooks.params_back.remove()
                hooks.params_back = None
            # A torch hook of this call taken before now finds nothing left to do.
            hooks.output_sites, hooks.leaf_sites, hooks.input_sites = [], [], []
            hooks.param_sites = []
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
        self._set_guard(False)

    def _module_at(self, path: str) -> nn.Module | None:
        try:
            return self.root.get_submodule(path)
        except AttributeError:
            return None

    def observers_of(self, site: Site) -> list[Observer]:
        return [
            observer
            for core, observer, names in ACTIVE_OBSERVERS.get()
            if core is self and site.name in names
        ]
