"""The shared hook core: sites and their names, output unpacking, torch hooks, dispatch."""

from auto_hookpoint.core.hook_core import HookCore
from auto_hookpoint.core.observers import Observer
from auto_hookpoint.core.sites import Site, SiteKind

__all__ = ["HookCore", "Observer", "Site", "SiteKind"]
