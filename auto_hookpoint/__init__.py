"""auto_hookpoint: TransformerLens hooks on any PyTorch model.

>>> from auto_hookpoint import auto_hook
>>> model = auto_hook(model)          # every module output is now a HookPoint site
>>> logits, cache = model.run_with_cache(x, names_filter="layers.0.hook_point")

Every public name is importable from here. Each is loaded on first use (PEP 562), so
``import auto_hookpoint`` costs almost nothing and a feature whose dependencies are
missing or too new (the adapter under TransformerLens 4) fails only when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # the hooked model
    "auto_hook": "auto_hookpoint.hooked",
    "unwrap": "auto_hookpoint.hooked",
    "HookedModule": "auto_hookpoint.hooked",
    "Site": "auto_hookpoint.core.sites",
    "SiteKind": "auto_hookpoint.core.sites",
    "describe_sites": "auto_hookpoint.site_report",
    "carry_context": "auto_hookpoint.core.context",
    # observers
    "capture": "auto_hookpoint.observers.capture",
    "trace": "auto_hookpoint.observers.trace",
    "memory_profile": "auto_hookpoint.observers.memory",
    "find_nonfinite": "auto_hookpoint.observers.numerics",
    "generation_trace": "auto_hookpoint.observers.generation",
    "current_step": "auto_hookpoint.observers.generation",
    # split computing
    "run_until": "auto_hookpoint.split.exit",
    "resume_from": "auto_hookpoint.split.resume",
    "EarlyOutput": "auto_hookpoint.split.early_output",
    # split inference across machines
    "SplitClient": "auto_hookpoint.remote.client",
    "SplitStats": "auto_hookpoint.remote.client",
    "SplitServer": "auto_hookpoint.remote.server",
    "split_server_app": "auto_hookpoint.remote.server",
    "load_model_dir": "auto_hookpoint.remote.loading",
    "profile_split": "auto_hookpoint.remote.profile",
    "SplitProfile": "auto_hookpoint.remote.profile",
    "plan_split": "auto_hookpoint.remote.planner",
    "SplitPlan": "auto_hookpoint.remote.planner",
    # the adapter, and the original Auto_HookPoint names
    "HookedTransformerAdapter": "auto_hookpoint.adapter",
    "ArchitectureMapping": "auto_hookpoint.adapter",
    "BlockParts": "auto_hookpoint.adapter",
    "HookedTransformerAdapterCfg": "auto_hookpoint.adapter",
    "HookedTransformerConfig_From_AutoConfig": "auto_hookpoint.adapter",
    # checking
    "check_auto_hook": "auto_hookpoint.check",
    "AutoHookReport": "auto_hookpoint.check",
    "auto_hook_cases": "auto_hookpoint.testing",
    # errors
    "AutoHookError": "auto_hookpoint.errors",
    "HookFunctionError": "auto_hookpoint.errors",
    "HookResultError": "auto_hookpoint.errors",
    "BackwardHookLostError": "auto_hookpoint.errors",
    "StructureChangedError": "auto_hookpoint.errors",
    "UnknownHookNameError": "auto_hookpoint.errors",
    "ReadOnlySiteError": "auto_hookpoint.errors",
    "SiteNeverFiredError": "auto_hookpoint.errors",
    "ResumeError": "auto_hookpoint.errors",
    "EarlyOutputError": "auto_hookpoint.errors",
    "NameClashError": "auto_hookpoint.errors",
    "NameClashWarning": "auto_hookpoint.errors",
    "SplitServerError": "auto_hookpoint.errors",
    "SplitConnectionError": "auto_hookpoint.errors",
    "CompiledBeforeHookingError": "auto_hookpoint.errors",
    "NonFiniteError": "auto_hookpoint.observers.numerics",
    "ArchitectureError": "auto_hookpoint.adapter",
    "AutoHookCheckError": "auto_hookpoint.check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'auto_hookpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from auto_hookpoint.adapter import (
        ArchitectureError,
        ArchitectureMapping,
        BlockParts,
        HookedTransformerAdapter,
        HookedTransformerAdapterCfg,
        HookedTransformerConfig_From_AutoConfig,
    )
    from auto_hookpoint.check import AutoHookCheckError, AutoHookReport, check_auto_hook
    from auto_hookpoint.core.context import carry_context
    from auto_hookpoint.core.sites import Site, SiteKind
    from auto_hookpoint.errors import (
        AutoHookError,
        BackwardHookLostError,
        CompiledBeforeHookingError,
        EarlyOutputError,
        HookFunctionError,
        HookResultError,
        NameClashError,
        NameClashWarning,
        ReadOnlySiteError,
        ResumeError,
        SiteNeverFiredError,
        SplitConnectionError,
        SplitServerError,
        StructureChangedError,
        UnknownHookNameError,
    )
    from auto_hookpoint.hooked import HookedModule, auto_hook, unwrap
    from auto_hookpoint.observers.capture import capture
    from auto_hookpoint.observers.generation import current_step, generation_trace
    from auto_hookpoint.observers.memory import memory_profile
    from auto_hookpoint.observers.numerics import NonFiniteError, find_nonfinite
    from auto_hookpoint.observers.trace import trace
    from auto_hookpoint.remote.client import SplitClient, SplitStats
    from auto_hookpoint.remote.loading import load_model_dir
    from auto_hookpoint.remote.planner import SplitPlan, plan_split
    from auto_hookpoint.remote.profile import SplitProfile, profile_split
    from auto_hookpoint.remote.server import SplitServer, split_server_app
    from auto_hookpoint.site_report import describe_sites
    from auto_hookpoint.split.early_output import EarlyOutput
    from auto_hookpoint.split.exit import run_until
    from auto_hookpoint.split.resume import resume_from
    from auto_hookpoint.testing import auto_hook_cases
