"""Observers built on the hook core: each watches sites while a forward runs."""

from auto_hookpoint.observers.cache import CacheObserver, resolve_names_filter

__all__ = ["CacheObserver", "resolve_names_filter"]
