"""Hook sites: where a model can be hooked, and what each site is called.

Naming contract (see the README):

* every submodule output is ``<module path>.hook_point``; the root output is ``hook_point``;
* container modules (``ModuleList``, ``ModuleDict``, ``Sequential`` below the root,
  ``ParameterList``, ``ParameterDict``) have no output site: they are either never
  called or merely forward their last child's output;
* each parameter owned directly by a module whose class is not one of torch's own
  (an autoencoder's ``W_enc``, an RMSNorm's ``weight``) is ``<param path>.hook_point``;
* a ``HookPoint`` already placed in the model keeps its own path as its name.

Module paths are those of ``named_modules()``; a module reachable by several paths
gets the first, as ``named_modules()`` reports it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

HOOK_SUFFIX = "hook_point"
INPUT_SUFFIX = "hook_in"

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


class SiteKind(enum.Enum):
    OUTPUT = "output"
    """The primary tensor of a module's output."""
    PARAMETER = "parameter"
    """A parameter, as its owning module is about to compute with it."""
    HOOK_POINT = "hook_point"
    """A ``HookPoint`` the model's author placed in the forward themselves."""
    INPUT = "input"
    """The primary tensor of a module's input (positional, then keyword arguments)."""
    LEAF = "leaf"
    """A tensor at a given path inside a module's structured output (``leaves=True``)."""


@dataclass(frozen=True)
class SiteView:
    """How a site shows its module's tensor in another shape, and takes a replacement back.

    ``show(tensor)`` is what the site's hooks and observers see (ideally a view of
    ``tensor``, so that an in-place edit by a hook reaches the module's tensor); with
    ``uses_input`` (OUTPUT sites only) it is ``show(tensor, module_input)``, the input
    being the first tensor among the module's positional arguments.
    ``write_back(tensor, shown)`` returns what the module passes on once a hook has
    replaced or edited ``shown``; ``None`` makes the site read-only: a hook that replaces
    or edits it in place raises :class:`~auto_hookpoint.errors.ReadOnlySiteError`.
    """

    show: Callable[..., torch.Tensor]
    write_back: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # Why the site is read-only, for the error message.
    read_only_reason: str = ""
    uses_input: bool = False


@dataclass(eq=False)
class Site:
    """One hookable place in the model.

    ``hook_point`` is the TransformerLens ``HookPoint`` that user hooks are attached to.
    For OUTPUT and PARAMETER sites it is created by auto_hookpoint and lives outside the
    module tree (so ``state_dict`` and ``named_modules`` are untouched); for HOOK_POINT
    sites it is the model's own module.
    """

    name: str
    kind: SiteKind
    module: nn.Module
    module_path: str
    param_name: str | None = None
    hook_point: HookPoint = field(repr=False, kw_only=True)
    leaf_path: tuple[int | str, ...] = field(default=(), kw_only=True)
    view: SiteView | None = field(default=None, kw_only=True, repr=False)

    @property
    def module_type(self) -> str:
        return type(self.module).__name__


def site_name(path: str) -> str:
    """The name of the site at module or parameter ``path`` ('' is the root)."""
    return f"{path}.{HOOK_SUFFIX}" if path else HOOK_SUFFIX


def is_torch_builtin(module: nn.Module) -> bool:
    """True for modules whose class is torch's own (``nn.Linear``, ``nn.Embedding``, ...)."""
    return type(module).__module__.startswith("torch.")


def has_output_site(module: nn.Module, path: str) -> bool:
    if isinstance(module, HookPoint):
        return False
    if path and type(module) is nn.Sequential:
        return False
    return not isinstance(module, _CONTAINERS)


def discover_sites(
    root: nn.Module, make_hook_point: Callable[[str], HookPoint], inputs: bool = False
) -> list[Site]:
    """List every site of ``root`` in ``named_modules()`` order.

    ``make_hook_point(name)`` creates the HookPoint of each OUTPUT, INPUT and PARAMETER
    site. With ``inputs=True`` every module with an output site also has an input site,
    ``<module path>.hook_in`` (``hook_in`` for the root).

    Raises ValueError if two sites would share a name (for example a hand-placed
    HookPoint stored under the attribute name ``hook_point`` on the root).
    """
    sites: list[Site] = []
    for path, module in root.named_modules():
        if isinstance(module, HookPoint):
            if path:  # a HookPoint as the root has nothing to hook around it
                sites.append(Site(path, SiteKind.HOOK_POINT, module, path, hook_point=module))
            continue
        if has_output_site(module, path):
            if inputs:
                name = f"{path}.{INPUT_SUFFIX}" if path else INPUT_SUFFIX
                sites.append(
                    Site(name, SiteKind.INPUT, module, path, hook_point=make_hook_point(name))
                )
            name = site_name(path)
            sites.append(
                Site(name, SiteKind.OUTPUT, module, path, hook_point=make_hook_point(name))
            )
        if not is_torch_builtin(module):
            for param_name, _ in module.named_parameters(recurse=False):
                param_path = f"{path}.{param_name}" if path else param_name
                name = site_name(param_path)
                sites.append(
                    Site(
                        name,
                        SiteKind.PARAMETER,
                        module,
                        path,
                        param_name,
                        hook_point=make_hook_point(name),
                    )
                )
    _check_unique(sites)
    return sites


def _check_unique(sites: list[Site]) -> None:
    seen: dict[str, Site] = {}
    for site in sites:
        other = seen.setdefault(site.name, site)
        if other is not site:
            raise ValueError(
                f"Two hook sites would both be named {site.name!r}: the {other.kind.value} "
                f"of {other.module_path or 'the root'!r} and the {site.kind.value} of "
                f"{site.module_path or 'the root'!r}. Rename the attribute that holds "
                f"the module called {HOOK_SUFFIX!r} so that names stay unique."
            )
