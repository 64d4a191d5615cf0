"""The hook core: the one owner of every torch hook auto_hookpoint puts on a model.

Per module it keeps at most one torch hook of each kind:

* a forward hook that fires the module's OUTPUT site (and its observers);
* a forward pre-hook that, for PARAMETER sites, shows each parameter to its HookPoint
  and lends the module whatever the hook returns for the duration of the call;
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

from torch import nn
from torch.utils.hooks import RemovableHandle

from auto_hookpoint.core.observers import ACTIVE_OBSERVERS, Observer
from auto_hookpoint.core.site_hook_point import SiteHookPoint
from auto_hookpoint.core.sites import Site, SiteKind, discover_sites
from auto_hookpoint.core.structure import find_primary, get_at, replace_at


class _ModuleHooks:
    """The sites of one module and the torch hooks currently placed for them."""

    def __init__(self, core: HookCore, module: nn.Module):
        self.core = core
        self.module = module
        self.output_site: Site | None = None
        self.param_sites: list[Site] = []
        self.observer_counts: dict[str, int] = {}
        self.output_handle: RemovableHandle | None = None
        self.param_handles: tuple[RemovableHandle, RemovableHandle] | None = None
        # Real parameters stashed while the module runs with hooked ones; a stack,
        # because a module may be called again from inside its own forward.
        self.lent: list[dict[str, Any]] = []

    def sites(self) -> list[Site]:
        return ([self.output_site] if self.output_site else []) + self.param_sites

    def is_active(self, site: Site) -> bool:
        hook_point = site.hook_point
        held = hook_point.has_torch_hooks() if isinstance(hook_point, SiteHookPoint) else False
        return held or self.observer_counts.get(site.name, 0) > 0

    # Torch hooks are bound methods (not closures) so that copy.deepcopy of a model
    # with active hooks gives a copy whose hooks point at the copy's own sites.
    def fire_output(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        site = self.output_site
        assert site is not None
        path = find_primary(output)
        observers = self.core.observers_of(site)
        if path is None:
            for observer in observers:
                observer.on_no_tensor(site, output)
            return None
        tensor = get_at(output, path)
        fired = tensor
        hook_point = site.hook_point
        # A model's own HookPoint ran its hooks itself; only ours are called from here.
        if isinstance(hook_point, SiteHookPoint) and hook_point.has_torch_hooks():
            fired = hook_point(tensor)
        for observer in observers:
            observer.on_output(site, fired, path)
        if fired is tensor:
            return None
        return replace_at(output, path, fired)

    def lend_params(self, _module: nn.Module, _args: Any) -> None:
        parameters = self.module._parameters
        real: dict[str, Any] = {}
        for site in self.param_sites:
            name = site.param_name
            assert name is not None
            param = parameters[name]
            if param is None:
                continue
            shown = param
            hook_point = site.hook_point
            if isinstance(hook_point, SiteHookPoint) and hook_point.has_torch_hooks():
                shown = hook_point(param)
            for observer in self.core.observers_of(site):
                observer.on_output(site, shown)
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

    def __init__(self, root: nn.Module):
        self._lock = threading.RLock()
        self.sites: dict[str, Site] = {
            site.name: site
            for site in discover_sites(root, lambda name: SiteHookPoint(name, self._changed))
        }
        # Site HookPoints that hold hooks, in the order they gained them: what
        # reset_hooks() has to visit.
        self.hooked: dict[str, SiteHookPoint] = {}
        by_module: dict[int, _ModuleHooks] = {}
        self._site_modules: dict[str, _ModuleHooks] = {}
        for site in self.sites.values():
            hooks = by_module.get(id(site.module)) or _ModuleHooks(self, site.module)
            by_module[id(site.module)] = hooks
            self._site_modules[site.name] = hooks
            if site.kind is SiteKind.OUTPUT:
                hooks.output_site = site
            elif site.kind is SiteKind.PARAMETER:
                hooks.param_sites.append(site)
            # HOOK_POINT sites are HookPoint modules in the forward; the output hook of
            # their _ModuleHooks serves only observers, their own hooks fire natively.
            else:
                hooks.output_site = site
        self.own_hook_points = [
            site.hook_point for site in self.sites.values() if site.kind is SiteKind.HOOK_POINT
        ]

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
            output = hooks.output_site
            want_output = output is not None and hooks.is_active(output)
            want_params = any(hooks.is_active(site) for site in hooks.param_sites)
            module = hooks.module
            if want_output and hooks.output_handle is None:
                hooks.output_handle = module.register_forward_hook(hooks.fire_output)
            elif not want_output and hooks.output_handle is not None:
                hooks.output_handle.remove()
                hooks.output_handle = None
            if want_params and hooks.param_handles is None:
                hooks.param_handles = (
                    module.register_forward_pre_hook(hooks.lend_params),
                    # prepend: the real parameters are back before any output hook runs.
                    module.register_forward_hook(
                        hooks.return_params, prepend=True, always_call=True
                    ),
                )
            elif not want_params and hooks.param_handles is not None:
                for handle in hooks.param_handles:
                    handle.remove()
                hooks.param_handles = None

    @contextlib.contextmanager
    def observing(self, observer: Observer, names: Iterable[str]) -> Iterator[None]:
        """Make ``observer`` see the sites ``names`` in this context only, until exit."""
        watched = frozenset(names)
        unknown = watched - self.sites.keys()
        if unknown:
            raise KeyError(f"not hook sites of this model: {sorted(unknown)[:5]}")
        token = ACTIVE_OBSERVERS.set((*ACTIVE_OBSERVERS.get(), (self, observer, watched)))
        self._count_observer(watched, +1)
        try:
            yield
        finally:
            self._count_observer(watched, -1)
            ACTIVE_OBSERVERS.reset(token)

    def _count_observer(self, names: frozenset[str], step: int) -> None:
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
            for hooks in touched.values():
                self._refresh(hooks)

    def installed_hook_count(self) -> int:
        """How many torch hooks the core has on the model right now (0 when idle)."""
        with self._lock:
            return sum(
                (h.output_handle is not None) + 2 * (h.param_handles is not None)
                for h in self._all_module_hooks()
            )

    def close(self) -> None:
        """Remove every hook from every site and every torch hook of the core."""
        with self._lock:
            for site in self.sites.values():
                if isinstance(site.hook_point, SiteHookPoint):
                    site.hook_point.remove_hooks("both", including_permanent=True)
                    # Hooks registered without add_hook are not in TL's lists.
                    site.hook_point._forward_hooks.clear()
                    site.hook_point._forward_pre_hooks.clear()
                    site.hook_point._backward_hooks.clear()
            for hooks in self._all_module_hooks():
                hooks.observer_counts.clear()
                self._refresh(hooks)

    def observers_of(self, site: Site) -> list[Observer]:
        return [
            observer
            for core, observer, names in ACTIVE_OBSERVERS.get()
            if core is self and site.name in names
        ]
