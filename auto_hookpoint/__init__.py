"""auto_hookpoint: TransformerLens hooks on any PyTorch model.

>>> from auto_hookpoint import auto_hook
>>> model = auto_hook(model)          # every module output is now a HookPoint site
>>> logits, cache = model.run_with_cache(x, names_filter="layers.0.hook_point")
"""

from auto_hookpoint.adapter import HookedTransformerAdapter
from auto_hookpoint.check import AutoHookCheckError, AutoHookReport, check_auto_hook
from auto_hookpoint.core.sites import Site, SiteKind
from auto_hookpoint.errors import AutoHookError, HookFunctionError, UnknownHookNameError
from auto_hookpoint.hooked import HookedModule, auto_hook, unwrap

__all__ = [
    "AutoHookCheckError",
    "AutoHookError",
    "AutoHookReport",
    "HookFunctionError",
    "HookedModule",
    "HookedTransformerAdapter",
    "Site",
    "SiteKind",
    "UnknownHookNameError",
    "auto_hook",
    "check_auto_hook",
    "unwrap",
]
