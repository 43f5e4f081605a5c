"""Drop-in `jax.lax` loops and branches whose bodies keep the carry's types.

Each form takes the same arguments as its `jax.lax` namesake plus a keyword
`mode` (default `"cast"`): the body or branches are guarded like functions
decorated with `state_dtype_invariant`, the carry (or the operands) being the
state.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ._caches import Cache
from ._carry_rules import Rule
from ._comparisons import LoopRule
from ._config import Configured, Mode, effective, validate_mode
from ._guard import Guard
from ._guarded import guarded_callable
from ._plan import CallPlan, StateParameter
from ._policy import Governance, Policy, as_policy

__all__ = ["cond", "fori_loop", "scan", "switch", "while_loop"]

_NO_OPERAND = object()

# id(fn) -> (weak reference to fn, {(state key, mode, out): guarded body}); an entry
# leaves when its function is collected. JAX caches traced bodies by the identity of
# the function it is given: one guarded body per (function, kind of state, mode)
# keeps those caches warm across calls, so an eager loop is not traced again each time.
_CACHE = Cache()


def _forget(key: int, reference: weakref.ref[Any]) -> None:
    entry = _CACHE.get(key)
    if entry is not None and entry[0] is reference:
        _CACHE.pop(key, None)  # `clear_caches()` in another thread may have emptied it


def _guard(
    fn: Callable[..., Any],
    role: str,
    make_state: Callable[[Callable[..., Any]], StateParameter],
    state_key: tuple[Any, ...],
    mode: str,
    out: int | None = None,
    rule: Rule = "lax",
    policy: Policy | None = None,
) -> Callable[..., Any]:
    """`fn` guarded with `make_state(fn)` as its state: one cached wrapper per setting.

    `rule` is what JAX accepts of the body's output: a Python scalar for an
    array leaf is cast in cast mode (reported in check mode), as `jax.lax` converts it.
    """
    if mode == "off":
        return fn
    # The effective settings are part of the key: a new strict scope gets a new
    # function, which JAX traces again instead of reusing a non-strict trace.
    key = (state_key, mode, effective(mode, True), out, policy)
    entry = _CACHE.get(id(fn))
    if entry is not None and entry[0]() is fn and key in entry[1]:
        return entry[1][key]
    if not callable(fn):
        raise TypeError(f"{role} must be a function; got {type(fn).__name__} {fn!r:.80}.")
    plan = CallPlan.single(make_state(fn), out)
    governance = None if policy is None else Governance(policy)
    guard_for = functools.partial(
        Guard,
        fn,
        plan,
        comparison=LoopRule(rule),
        settings=Configured(mode),
        policy=governance,
    )
    if isinstance(fn, types.MethodType):  # a new object on each attribute access
        return guarded_callable(guard_for())
    fn_id = id(fn)
    try:
        reference = weakref.ref(fn, lambda ref: _forget(fn_id, ref))
    except TypeError:  # not weakly referenceable: no caching
        return guarded_callable(guard_for())
    guard = guard_for(hold_weakly=True)
    guarded = guarded_callable(guard)
    if guard.annotations is not None:  # its checker holds `fn`: caching it would leak `fn`
        return guarded
    if entry is None or entry[0]() is not fn:
        entry = (reference, {})
        _CACHE.remember(fn_id, entry)
    entry[1][key] = guarded
    return guarded


def _carry(position: int) -> Callable[[Callable[..., Any]], StateParameter]:
    return lambda fn: StateParameter.at(fn, position, "carry")


def _operands(count: int) -> Callable[[Callable[..., Any]], StateParameter]:
    return lambda fn: StateParameter.branch_operands(fn, count)


def while_loop(
    cond_fun: Callable[[Any], Any],
    body_fun: Callable[[Any], Any],
    init_val: Any,
    *,
    mode: Mode = "cast",
    policy: Policy | dict[str, Any] | None = None,
) -> Any:
    """`jax.lax.while_loop` whose `body_fun` keeps `init_val`'s types.

    **Arguments:**

    - `cond_fun`, `body_fun`, `init_val`: as for `jax.lax.while_loop`.
    - `mode`: what to do when `body_fun` returns a carry of another type:
      `"cast"` casts dtype and weak_type drift back to the carry's (a weak
      `init_val` such as `1.0` stays weak instead of being promoted by the
      body), `"check"` raises, `"warn"` warns, `"off"` leaves it to JAX.
    - `policy`: a `jax_dtypeguard.Policy` (or its rules) for the body's
      arguments, paths starting with its parameters' names: the carry must
      hold it when the loop starts, and the body's new carry is checked (cast,
      in cast mode) against it. See [Dtype policies](policies.md).

    **Returns:**

    The final carry, with `init_val`'s types.

    **Raises:**

    `StateDtypeError` naming `body_fun` and each drifting leaf path, on drift
    that the mode does not repair (in cast mode: structure or shape).

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        x = dg.lax.while_loop(lambda x: x < 10, lambda x: x * 2.0, jnp.float16(1))
        assert x.dtype == jnp.float16
        ```
    """
    validate_mode(mode)
    body = _guard(body_fun, "body_fun", _carry(0), ("carry", 0), mode, policy=as_policy(policy))
    return jax.lax.while_loop(cond_fun, body, init_val)


def fori_loop(
    lower: Any,
    upper: Any,
    body_fun: Callable[[Any, Any], Any],
    init_val: Any,
    *,
    unroll: int | bool | None = None,
    mode: Mode = "cast",
    policy: Policy | dict[str, Any] | None = None,
) -> Any:
    """`jax.lax.fori_loop` whose `body_fun(i, val)` keeps `init_val`'s types.

    **Arguments:**

    - `lower`, `upper`, `body_fun`, `init_val`, `unroll`: as for
      `jax.lax.fori_loop`.
    - `mode`, `policy`: as for `while_loop`.

    **Returns:**

    The final `val`, with `init_val`'s types.

    **Raises:**

    `StateDtypeError` naming `body_fun` and each drifting leaf path.

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        total = dg.lax.fori_loop(0, 3, lambda i, x: x + 0.5 * i, jnp.zeros(2, jnp.bfloat16))
        assert total.dtype == jnp.bfloat16
        ```
    """
    validate_mode(mode)
    body = _guard(body_fun, "body_fun", _carry(1), ("carry", 1), mode, policy=as_policy(policy))
    return jax.lax.fori_loop(lower, upper, body, init_val, unroll=unroll)


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    *,
    mode: Mode = "cast",
    policy: Policy | dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """`jax.lax.scan` whose `f(carry, x) -> (carry, y)` keeps `init`'s types.

    Only the carry is guarded; the stacked outputs `y` are `f`'s own.

    **Arguments:**

    - `f`, `init`, `xs`, `length`, `reverse`, `unroll` and any further
      keyword arguments: as for `jax.lax.scan`.
    - `mode`, `policy`: as for `while_loop`.

    **Returns:**

    `(final carry, stacked ys)`, the carry with `init`'s types.

    **Raises:**

    `StateDtypeError` naming `f` and each drifting leaf path.

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        def step(total, x):
            return total + x, total

        total, partial_sums = dg.lax.scan(step, jnp.float16(0), jnp.arange(4.0))
        assert total.dtype == jnp.float16
        ```
    """
    validate_mode(mode)
    body = _guard(f, "f", _carry(0), ("carry", 0), mode, out=0, policy=as_policy(policy))
    return jax.lax.scan(body, init, xs, length=length, reverse=reverse, unroll=unroll, **kwargs)


def _collect_operands(operands: tuple[Any, ...], operand: Any) -> tuple[Any, ...]:
    if operand is _NO_OPERAND:
        return operands
    if operands:
        raise TypeError(
            "if 'operand' keyword is passed then no positional operands can be passed, "
            f"got operand={operand!r:.60} and positional operands {operands!r:.60}"
        )
    return (operand,)


def cond(
    pred: Any,
    true_fun: Callable[..., Any],
    false_fun: Callable[..., Any],
    *operands: Any,
    operand: Any = _NO_OPERAND,
    mode: Mode = "cast",
    policy: Policy | dict[str, Any] | None = None,
) -> Any:
    """`jax.lax.cond` whose branches return their operands' types.

    The state is the one operand, or the tuple of operands, so each branch
    must return that type; for branches that return something else, use
    `jax.lax.cond`. With no operands there is no state, and the branches go
    to `jax.lax.cond` as they are.

    **Arguments:**

    - `pred`, `true_fun`, `false_fun`, `*operands` (or `operand=`): as for
      `jax.lax.cond`.
    - `mode`: `"cast"` casts each branch's dtype and weak_type drift back
      to the operands' types (so branches that differ only in dtype agree),
      `"check"` raises, `"warn"` warns, `"off"` leaves it to JAX.
    - `policy`: as for `while_loop`, for the branches' operands.

    **Returns:**

    The chosen branch's output, with the operands' types.

    **Raises:**

    `StateDtypeError` naming the branch and each drifting leaf path.

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        x = jnp.ones(3, jnp.bfloat16)
        y = dg.lax.cond(True, lambda x: x * jnp.float32(2), lambda x: x, x)
        assert y.dtype == jnp.bfloat16
        ```
    """
    validate_mode(mode)
    operands = _collect_operands(operands, operand)
    if not operands:
        return jax.lax.cond(pred, true_fun, false_fun)
    state, key = _operands(len(operands)), ("operands", len(operands))
    rules = as_policy(policy)
    branches = [
        _guard(fn, role, state, key, mode, policy=rules)
        for role, fn in (("true_fun", true_fun), ("false_fun", false_fun))
    ]
    return jax.lax.cond(pred, *branches, *operands)


def switch(
    index: Any,
    branches: Sequence[Callable[..., Any]],
    *operands: Any,
    operand: Any = _NO_OPERAND,
    mode: Mode = "cast",
    policy: Policy | dict[str, Any] | None = None,
) -> Any:
    """`jax.lax.switch` whose branches return their operands' types.

    As for `cond`: the state is the one operand or the tuple of operands;
    with no operands the branches go to `jax.lax.switch` as they are.

    **Arguments:**

    - `index`, `branches`, `*operands` (or `operand=`): as for
      `jax.lax.switch`.
    - `mode`, `policy`: as for `cond`.

    **Returns:**

    The chosen branch's output, with the operands' types.

    **Raises:**

    `StateDtypeError` naming the branch and each drifting leaf path.

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        branches = [lambda x: x + 1.0, lambda x: x * jnp.float32(2)]
        y = dg.lax.switch(1, branches, jnp.ones(2, jnp.float16))
        assert y.dtype == jnp.float16
        ```
    """
    validate_mode(mode)
    operands = _collect_operands(operands, operand)
    if not operands:
        return jax.lax.switch(index, branches)
    try:
        branches = list(branches)
    except TypeError:
        raise TypeError(
            f"branches must be a sequence of functions; got {type(branches).__name__}."
        ) from None
    state, key = _operands(len(operands)), ("operands", len(operands))
    rules = as_policy(policy)
    guarded = [
        _guard(fn, f"branches[{number}]", state, key, mode, policy=rules)
        for number, fn in enumerate(branches)
    ]
    return jax.lax.switch(index, guarded, *operands)
