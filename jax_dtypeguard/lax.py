"""Drop-in `jax.lax` loops and branches whose bodies keep the carry's types.

Each form takes the same arguments as its `jax.lax` namesake plus a keyword
`mode` (default `"cast"`): the body or branches are guarded with
`state_dtype_invariant`, the carry (or operands) being the state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from ._config import validate_mode
from ._decorator import StateParameter, _Guard

__all__ = ["cond", "fori_loop", "scan", "switch", "while_loop"]


class _Operands(StateParameter):
    """The state of a branch: its one operand, or the tuple of its operands."""

    def __init__(self) -> None:
        self.name = "operands"

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        return True, args[0] if len(args) == 1 else args


def _guard(
    fn: Callable[..., Any], state: StateParameter, mode: str, out: int | None = None
) -> Callable[..., Any]:
    validate_mode(mode)
    if not callable(fn):
        raise TypeError(f"expected a function, got {type(fn).__name__} {fn!r}.")
    guard = _Guard(fn, state, out, mode, weak_type=True, annotations=True)
    return guard.__call__


def while_loop(
    cond_fun: Callable[[Any], Any],
    body_fun: Callable[[Any], Any],
    init_val: Any,
    *,
    mode: str = "cast",
) -> Any:
    """`jax.lax.while_loop` whose `body_fun` keeps `init_val`'s types.

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        x = dg.lax.while_loop(lambda x: x < 10, lambda x: x * 2.0, jnp.float16(1))
        assert x.dtype == jnp.float16
        ```
    """
    body = _guard(body_fun, StateParameter.at(body_fun, 0, "carry"), mode)
    return jax.lax.while_loop(cond_fun, body, init_val)


def fori_loop(
    lower: Any,
    upper: Any,
    body_fun: Callable[[Any, Any], Any],
    init_val: Any,
    *,
    unroll: int | bool | None = None,
    mode: str = "cast",
) -> Any:
    """`jax.lax.fori_loop` whose `body_fun(i, val)` keeps `init_val`'s types."""
    body = _guard(body_fun, StateParameter.at(body_fun, 1, "carry"), mode)
    return jax.lax.fori_loop(lower, upper, body, init_val, unroll=unroll)


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    *,
    mode: str = "cast",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """`jax.lax.scan` whose `f(carry, x) -> (carry, y)` keeps `init`'s types."""
    body = _guard(f, StateParameter.at(f, 0, "carry"), mode, out=0)
    return jax.lax.scan(body, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)


def cond(
    pred: Any,
    true_fun: Callable[..., Any],
    false_fun: Callable[..., Any],
    *operands: Any,
    mode: str = "cast",
) -> Any:
    """`jax.lax.cond` whose branches return their operands' types.

    The state is the one operand, or the tuple of operands; branches that
    return another type belong in `jax.lax.cond`.
    """
    branches = [_guard(fn, _Operands(), mode) for fn in (true_fun, false_fun)]
    return jax.lax.cond(pred, *branches, *operands)


def switch(
    index: Any, branches: Sequence[Callable[..., Any]], *operands: Any, mode: str = "cast"
) -> Any:
    """`jax.lax.switch` whose branches return their operands' types."""
    guarded = [_guard(fn, _Operands(), mode) for fn in branches]
    return jax.lax.switch(index, guarded, *operands)
