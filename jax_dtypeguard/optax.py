"""Optax transformations whose `update` keeps `opt_state`'s types.

Optax is an optional dependency: it is imported only by this module.
"""

from __future__ import annotations

import functools
from typing import Any

import optax

from ._config import validate_mode
from ._guard import Guard
from ._plan import CallPlan, StateParameter, describe_location

__all__ = ["invariant"]


def _as_transformation(tx: Any) -> optax.GradientTransformation:
    if isinstance(tx, optax.GradientTransformation):
        return tx
    if isinstance(tx, optax.MultiSteps):
        # Its `update` takes extra arguments, though `gradient_transformation()` says otherwise.
        return optax.GradientTransformationExtraArgs(tx.init, tx.update)  # pyright: ignore
    what, hint = f"{type(tx).__name__} {tx!r:.80}", ""
    if callable(tx) and hasattr(tx, "__qualname__"):
        what = f"{type(tx).__name__} {getattr(tx, '__module__', '?')}.{tx.__qualname__}"
        hint = " Did you pass the optimizer's factory? Call it first: invariant(optax.adam(1e-3))."
    raise TypeError(
        "invariant expects an optax.GradientTransformation or "
        f"optax.GradientTransformationExtraArgs (or optax.MultiSteps); got {what}.{hint}"
    )


def invariant(tx: Any, mode: str | None = "cast", updates: str | None = "check") -> Any:
    """An Optax transformation whose `update` keeps the optimizer state's types.

    Each `update(updates, opt_state, params=None, **extra_args)` is guarded
    like a function decorated with `state_dtype_invariant`: the new
    `opt_state` is compared with the one given (structure, shape, dtype,
    weak_type), and, where `params` are given, each update with its param
    (structure, shape, dtype). So `optax.lbfgs()` keeps float16 or bfloat16
    state under a float64 `value`, runs inside `jax.lax.while_loop`, and a
    jitted `update` compiles once. `jax_dtypeguard.strict()` turns both
    guards into `"check"`.

    **Arguments:**

    - `tx`: an `optax.GradientTransformation`,
      `optax.GradientTransformationExtraArgs` or `optax.MultiSteps`.
    - `mode`: what to do when `opt_state` drifts: `"cast"` (cast dtype and
      weak_type drift back; structure and shape drift still raise),
      `"check"`, `"warn"` or `"off"`; `None` uses `jax_dtypeguard.config.mode`.
    - `updates`: the same choice for updates whose dtype differs from their
      param's (only when `params` are passed to `update`).

    **Returns:**

    The same kind of transformation: `GradientTransformationExtraArgs` if
    `tx` takes extra arguments (or is a `MultiSteps`), else
    `GradientTransformation`. `init` is `tx.init`.

    **Raises:**

    `TypeError` if `tx` is not a gradient transformation. Its `update`
    raises `StateDtypeError`, naming the state's paths
    (`opt_state[0].mu`, `updates['w']`), on drift its mode does not repair.

    !!! Example
        ```python
        import jax.numpy as jnp
        import optax
        from jax_dtypeguard.optax import invariant

        tx = invariant(optax.adam(1e-3))
        params = jnp.ones(3, jnp.bfloat16)
        state = tx.init(params)
        updates, new_state = tx.update(jnp.ones(3, jnp.bfloat16), state, params)
        assert new_state[0].mu.dtype == jnp.bfloat16
        ```
    """
    inner = _as_transformation(tx)
    if mode is not None:
        validate_mode(mode)
    if updates is not None:
        validate_mode(updates, "updates")
    state_guard = Guard(
        inner.update,
        CallPlan.single(StateParameter.argument("opt_state", 1, "state", None), out=1),
        mode=mode,  # type: ignore[arg-type]
        annotations=False,
    )

    @functools.wraps(inner.update)
    def guarded_update(*args: Any, **kwargs: Any) -> Any:
        return state_guard(*args, **kwargs)

    updates_guard = Guard(
        guarded_update,
        CallPlan.single(StateParameter.argument("updates", 2, "params", None), out=0),
        mode=updates,  # type: ignore[arg-type]
        weak_type=False,
        annotations=False,
    )

    if isinstance(inner, optax.GradientTransformationExtraArgs):

        def update_with_extra_args(
            updates: Any, state: Any, params: Any = None, **extra_args: Any
        ) -> tuple[Any, Any]:
            guard = state_guard if params is None else updates_guard
            return guard(updates, state, params, **extra_args)

        name = describe_location(inner.update)[0]
        update_with_extra_args.__qualname__ = f"invariant({name})"
        return optax.GradientTransformationExtraArgs(inner.init, update_with_extra_args)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        guard = state_guard if params is None else updates_guard
        return guard(updates, state, params)

    update.__qualname__ = f"invariant({describe_location(inner.update)[0]})"
    return optax.GradientTransformation(inner.init, update)
