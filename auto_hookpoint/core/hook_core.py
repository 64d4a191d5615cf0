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

from auto_hookpoint.core.observers import ACTIVE_OBSERVERS, Observer, wants_enter
from auto_hookpoint.core.site_hook_point import SiteHookPoint
from auto_hookpoint.core.sites import Site, SiteKind, discover_sites
from auto_hookpoint.core.structure import Path, find_primary, get_at, replace_at


class _ModuleHooks:
    """The sites of one module and the torch hooks currently placed for them."""

    def __init__(self, core: HookCore, module: nn.Module):
        self.core = core
        self.module = module
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
            shown = self._fire(self._watching([site]), param, ())
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

    def _new_hook_point(self, name: str) -> SiteHookPoint:
        return SiteHookPoint(name, self._changed)

    def _register(self, site: Site, by_module: dict[int, _ModuleHooks]) -> None:
        if site.name in self.sites:
            raise ValueError(f"there is already a site named {site.name!r}")
        hooks = by_module.get(id(site.module))
        if hooks is None:
            hooks = by_module[id(site.module)] = _ModuleHooks(self, site.module)
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

    # ----------------------------------------------------------------- activity
    def _changed(self, hook_point: SiteHookPoint) -> None:
        name = hook_point.name
        assert name is not None
        with self._lock:
            if hook_point.holds_hooks():
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
                hooks.pre_handle = module.register_forward_pre_hook(
                    hooks.before_forward, with_kwargs=True
                )
            elif not want_pre and hooks.pre_handle is not None:
                hooks.pre_handle.remove()
                hooks.pre_handle = None
            if want_params and hooks.return_handle is None:
                # prepend: the real parameters are back before any output hook runs.
                hooks.return_handle = module.register_forward_hook(
                    hooks.return_params, prepend=True, always_call=True
                )
            elif not want_params and hooks.return_handle is not None:
                hooks.return_handle.remove()
                hooks.return_handle = None

    @contextlib.contextmanager
    def observing(self, observer: Observer, names: Iterable[str]) -> Iterator[None]:
        """Make ``observer`` see the sites ``names`` in this context only, until exit."""
        watched = frozenset(names)
        unknown = watched - self.sites.keys()
        if unknown:
            raise KeyError(f"not hook sites of this model: {sorted(unknown)[:5]}")
        token = ACTIVE_OBSERVERS.set((*ACTIVE_OBSERVERS.get(), (self, observer, watched)))
        enter = wants_enter(observer)
        self._count_observer(watched, +1, enter)
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
            return sum(
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

    def observers_of(self, site: Site) -> list[Observer]:
        return [
            observer
            for core, observer, names in ACTIVE_OBSERVERS.get()
            if core is self and site.name in names
        ]
