"""The package's caches: one limit policy, one registry, emptied by `clear_caches()`.

A `Cache` is a dict that empties itself when full (the entries of a long
program's early phase are rarely wanted again) and that `clear_caches()`
empties; caches of another kind (`functools.lru_cache` functions, weak
dictionaries) join the registry through `register`.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any, TypeVar

CACHE_LIMIT = 4096


_LIVE: weakref.WeakSet[Cache] = weakref.WeakSet()
_OTHERS: list[Any] = []


class Cache(dict[Any, Any]):
    """A dict that empties itself when full, and that `clear_caches()` empties."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        _LIVE.add(self)

    def remember(self, key: Hashable, value: Any) -> None:
        """`self[key] = value`, emptying a full cache first; an unhashable key is not kept."""
        if len(self) >= self.limit:
            self.clear()
        try:
            self[key] = value
        except TypeError:
            pass

    def __hash__(self) -> int:  # pyright: ignore[reportIncompatibleVariableOverride]
        # by identity, so that the registry's WeakSet can hold it
        return id(self)


_T = TypeVar("_T")


def register(cache: _T) -> _T:
    """Adds a cache that is no `Cache` (an `lru_cache` function, a weak dictionary)."""
    if not (hasattr(cache, "cache_clear") or hasattr(cache, "clear")):
        raise TypeError(f"{cache!r} has neither cache_clear() nor clear()")
    _OTHERS.append(cache)
    return cache


def clear_caches() -> None:
    """Empties every cache of `jax_dtypeguard`: verdicts, explanations, signatures,
    annotation checks and guarded loop bodies.

    For long programs that build many short-lived functions or types, and for
    tests; nothing else needs it, since every cache is bounded.
    """
    for cache in list(_LIVE):
        cache.clear()
    for other in _OTHERS:
        clear = getattr(other, "cache_clear", None) or other.clear
        clear()
