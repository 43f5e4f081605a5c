"""The package's caches: one limit policy, one registry, emptied by `clear_caches()`.

Every cache holds at most `CACHE_LIMIT` entries and empties itself when full
(the entries of a long program's early phase are rarely wanted again):

- `Cache`, a dict;
- `WeakCache`, a dict whose keys are held weakly (functions, classes), so an
  entry also leaves when its key is collected;
- `memoized`, a function of hashable arguments whose results a `Cache` keeps.

All three join the registry when built; `clear_caches()` empties every one.
Something else with a `clear()` (a set of learnt types) joins through `register`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

CACHE_LIMIT = 4096

_R = TypeVar("_R")

_LIVE: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # id -> cache
_OTHERS: list[Any] = []


class Cache(dict[Any, Any]):
    """A dict that empties itself when full, and that `clear_caches()` empties."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = CACHE_LIMIT if limit is None else limit
        _LIVE[id(self)] = self

    def remember(self, key: Hashable, value: Any) -> None:
        """`self[key] = value`, emptying a full cache first; an unhashable key is not kept."""
        _remember(self, key, value)


class WeakCache(weakref.WeakKeyDictionary[Any, Any]):
    """A `Cache` whose keys are held weakly: an entry also leaves when its key is collected."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = CACHE_LIMIT if limit is None else limit
        _LIVE[id(self)] = self

    def remember(self, key: Any, value: Any) -> None:
        """`self[key] = value`, emptying a full cache first; a key that cannot be hashed
        or held weakly is not kept."""
        _remember(self, key, value)


def _remember(cache: Cache | WeakCache, key: Any, value: Any) -> None:
    if len(cache) >= cache.limit:
        cache.clear()
    try:
        cache[key] = value
    except TypeError:
        pass


def memoized(fn: Callable[..., _R]) -> Callable[..., _R]:
    """`fn` with its results kept in a `Cache`, keyed by its (hashable, positional) arguments."""
    cache = Cache()

    @functools.wraps(fn)
    def lookup(*args: Hashable) -> _R:
        try:
            return cache[args]
        except KeyError:
            pass
        value = fn(*args)
        cache.remember(args, value)
        return value

    lookup.cache = cache  # type: ignore[attr-defined]
    return lookup


_T = TypeVar("_T")


def register(cache: _T) -> _T:
    """Adds a container that is no `Cache` but can be emptied (a set of learnt types)."""
    if not callable(getattr(cache, "clear", None)):
        raise TypeError(f"{cache!r} has no clear(): it cannot join the cache registry")
    _OTHERS.append(cache)
    return cache


def clear_caches() -> None:
    """Empties every cache of `jax_dtypeguard`: eager verdicts and explanations,
    leaf signatures, annotation checks, guarded loop bodies, function parameters
    and source locations.

    Every cache is bounded, so a program never needs this; it frees memory in
    long programs that build many short-lived functions or types, and starts
    a test from a clean slate. A guarded function keeps working after it and
    recomputes what it needs. It does not touch JAX's own caches
    (`jax.clear_caches()`).
    """
    for cache in list(_LIVE.values()):
        cache.clear()
    for other in _OTHERS:
        other.clear()
