"""`state_dtype_invariant`: compare a step's output state with its input state."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar, Unpack, overload

from . import _config
from ._config import Configured, Mode
from ._guard import Guard
from ._guarded import guarded_callable
from ._plan import CallPlan, StateParameter, describe_location, is_index, parameter_name

__all__ = ["StateParameter", "describe_location", "parameter_name", "state_dtype_invariant"]

F = TypeVar("F", bound=Callable[..., Any])
StateSpec = int | str | tuple[int | str, ...] | None
OutSpec = int | tuple[int, ...] | None
InplaceSpec = bool | int | str | tuple[int | str, ...]


def validate_options(
    mode: object,
    weak_type: object,
    annotations: object,
    out: object,
    state: object,
    inplace: object = False,
) -> None:
    if mode is not None:
        _config.validate_mode(mode)
    for name, value in (("weak_type", weak_type), ("annotations", annotations)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {value!r}.")
    outs = out if isinstance(out, tuple) else (out,)
    if not outs or not all(o is None or is_index(o) for o in outs):
        raise TypeError(
            f"out must be None (the whole return value is the state), an int "
            f"(the state's index in a returned tuple) or a tuple of ints (several "
            f"returned states); got {out!r}."
        )
    states = state if isinstance(state, tuple) else (state,)
    if not states or not all(s is None or is_index(s) or isinstance(s, str) for s in states):
        raise TypeError(
            "state must be a parameter's name (str) or position (int), or a tuple of "
            f"them; got {state!r}."
        )
    if isinstance(state, tuple) and None in state:
        raise TypeError(f"state={state!r}: name each state parameter (a str or an int).")
    if not isinstance(inplace, bool):
        specs = inplace if isinstance(inplace, tuple) else (inplace,)
        if not specs or not all(is_index(s) or isinstance(s, str) for s in specs):
            raise TypeError(
                "inplace must be True, False, or the names/positions of the states "
                f"updated in place; got {inplace!r}."
            )


class _Options(TypedDict, total=False):
    """`state_dtype_invariant`'s keyword arguments, for its two typed forms."""

    state: StateSpec
    out: OutSpec
    mode: Mode | None
    weak_type: bool
    annotations: bool
    inplace: InplaceSpec


@overload
def state_dtype_invariant(fn: F, /, **options: Unpack[_Options]) -> F: ...


@overload
def state_dtype_invariant(fn: None = None, /, **options: Unpack[_Options]) -> Callable[[F], F]: ...


def state_dtype_invariant(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    state: StateSpec = None,
    out: OutSpec = None,
    mode: Mode | None = None,
    weak_type: bool = True,
    annotations: bool = True,
    inplace: InplaceSpec = False,
) -> Any:
    """Guards a step function so its output state keeps its input state's types.

    At trace time (or on an eager call) the new state is compared with the
    state argument leaf by leaf: tree structure, shape, dtype, weak_type and,
    under explicit sharding, sharding.

    **Arguments:**

    - `fn`: the step function. Omit it to get a decorator.
    - `state`: the state parameter, by name or position (default: the first
      parameter, skipping `self`/`cls`), or a tuple of them for a state spread
      over several parameters (paths then start with each one's name).
    - `out`: where the new state is in the return value: `None` for the whole
      return value, an int for an element of a returned tuple or list, a
      tuple of ints for several returned states (in `state`'s order).
    - `mode`: `"check"` (raise `StateDtypeError`), `"cast"` (cast dtype drift
      within a kind, float <-> float, int <-> int, complex <-> complex, and
      weak_type drift back; raise the rest), `"warn"` (emit a
      `StateDtypeWarning`), `"off"`; `None` uses `jax_dtypeguard.config.mode`.
    - `weak_type`: whether a change of weak_type alone counts as drift.
    - `annotations`: also check the function's jaxtyping annotations.
    - `inplace`: the state is updated in place (Flax NNX modules and
      optimizers, dicts, lists): it is compared with a snapshot taken before
      the call, and cast mode writes the cast values back. `True` for every
      state, or the names/positions of those updated in place (the others
      are returned, at `out`).

    **Returns:**

    The guarded function (same name, docstring and signature).

    **Raises:**

    `StateDtypeError` on drift (check mode, or what cast mode cannot fix);
    `TypeError`/`ValueError` on misuse.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard import state_dtype_invariant

        @state_dtype_invariant(mode="cast")
        def step(state, lr):
            return state - lr * state  # a float64 lr would promote the state

        assert step(jnp.ones(3, jnp.float16), 0.1).dtype == jnp.float16
        ```
    """
    validate_options(mode, weak_type, annotations, out, state, inplace)
    if fn is None:
        return functools.partial(
            state_dtype_invariant,
            state=state,
            out=out,
            mode=mode,
            weak_type=weak_type,
            annotations=annotations,
            inplace=inplace,
        )
    if not callable(fn):
        raise TypeError(
            f"state_dtype_invariant expects a function; got {type(fn).__name__} "
            f"{fn!r}. Use it bare (@state_dtype_invariant) or with keyword "
            'arguments (@state_dtype_invariant(mode="cast")).'
        )
    plan = CallPlan.of(fn, state, out, inplace)
    guard = Guard(fn, plan, settings=Configured(mode, weak_type), annotations=annotations)
    return guarded_callable(guard)
