"""What the user (or JAX) calls: a guard wrapped as a function, marked as guarded."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._delivery import raised_by
from ._errors import StateDtypeError

# The attribute that marks a guarded callable; its value is the guard.
MARK = "__dtypeguard__"


def is_guarded(fn: Any) -> bool:
    """Whether `fn` (or the function a `functools.partial` wraps) runs a guard already:
    a decorated function, a `dg.lax` body, a loop hook's body."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return hasattr(fn, MARK)


def _from_here(error: StateDtypeError, guard: Any) -> StateDtypeError:
    """`guard`'s own report without the frames inside the guard (raised by the caller);
    a report from a guard inside the function keeps its frames, which matter."""
    return error.with_traceback(None) if raised_by(error) is guard else error


def copy_names(wrapper: Any, fn: Any) -> None:
    """Gives a wrapper object `fn`'s module, name, qualified name and docstring."""
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(fn, attribute, None)
        if isinstance(value, str):
            setattr(wrapper, attribute, value)


class _WeaklyGuarded:
    """What JAX receives for a cached loop body: calls the guard, unwraps to the user's function.

    Holds the function only through the guard's weak reference, so a cache of
    these keeps nothing alive.
    """

    def __init__(self, guard: Any, fn: Callable[..., Any]) -> None:
        setattr(self, MARK, guard)
        copy_names(self, fn)

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return getattr(self, MARK).fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        guard = getattr(self, MARK)
        try:
            return guard(*args, **kwargs)
        except StateDtypeError as error:
            raise _from_here(error, guard) from error.__cause__


def guarded_callable(guard: Any) -> Callable[..., Any]:
    """The callable that runs `guard`, marked with it: a `functools.wraps` wrapper of its
    function, or, for a guard that holds its function weakly, an object that unwraps to it."""
    fn = guard.fn
    if guard.holds_weakly:
        return _WeaklyGuarded(guard, fn)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return guard(*args, **kwargs)
        except StateDtypeError as error:
            raise _from_here(error, guard) from error.__cause__

    setattr(guarded, MARK, guard)
    return guarded
