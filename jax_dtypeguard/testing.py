"""Abstract checks for test suites: assertions, reusable cases, dtype sweeps."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._compat import enable_x64
from ._decorator import StateParameter, _Guard
from ._errors import Mismatch, StateDtypeError

__all__ = [
    "DTYPES",
    "Case",
    "CaseError",
    "assert_state_dtype_invariant",
    "dtype_sweep",
    "parametrize_dtypes",
]

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")


class CaseError(RuntimeError):
    """A `Case` could not be run at a dtype (its factories or function raised)."""


CaseError.__module__ = "jax_dtypeguard.testing"


def _is_dynamic(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex))


def assert_state_dtype_invariant(
    fn: Callable[..., Any],
    state: Any,
    *args: Any,
    state_arg: int = 0,
    out: int | None = None,
    weak_type: bool = True,
    **kwargs: Any,
) -> None:
    """Checks that `fn` keeps `state`'s types, by abstract evaluation only.

    `fn` is traced with `jax.eval_shape`: nothing is compiled and no FLOPs
    run. Array leaves of the arguments are traced; any other leaf (a
    function, a string) is passed through as a constant.

    **Arguments:**

    - `fn`: the step function.
    - `state`: the state; it is inserted among `args` at position `state_arg`.
    - `out`: where the new state is in `fn`'s return value (as in
      `state_dtype_invariant`).
    - `weak_type`: whether a change of weak_type alone counts as drift.

    **Raises:**

    `StateDtypeError` listing every drifting leaf.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard.testing import assert_state_dtype_invariant

        assert_state_dtype_invariant(lambda s, g: s - 0.1 * g, jnp.ones(3), jnp.ones(3))
        ```
    """
    if not isinstance(state_arg, int) or not 0 <= state_arg <= len(args):
        raise ValueError(
            f"state_arg={state_arg!r} must be a position from 0 to {len(args)} "
            f"among the {len(args)} other positional arguments."
        )
    call_args = [*args[:state_arg], state, *args[state_arg:]]
    parameter = StateParameter.at(fn, state_arg, "state")
    guard = _Guard(fn, parameter, out, "check", weak_type, annotations=True)
    leaves, treedef = jax.tree_util.tree_flatten((call_args, kwargs))
    dynamic = [_is_dynamic(leaf) for leaf in leaves]

    def traced(dynamic_leaves: list[Any]) -> Any:
        it = iter(dynamic_leaves)
        full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic)]
        positional, keywords = jax.tree_util.tree_unflatten(treedef, full)
        return guard(*positional, **keywords)

    jax.eval_shape(traced, [leaf for leaf, d in zip(leaves, dynamic) if d])


@dataclasses.dataclass(frozen=True)
class Case:
    """A reusable state-invariance check, swept over dtypes.

    **Attributes:**

    - `name`: shown in reports.
    - `fn`: the step function.
    - `make_state`: `make_state(dtype_name)` builds the state.
    - `make_args`: `make_args(dtype_name)` builds the other positional
      arguments, as a tuple.
    - `state_arg`: the state's position among the positional arguments.
    - `out`: where the new state is in `fn`'s return value.
    - `kwargs`: keyword arguments for `fn`.
    """

    name: str
    fn: Callable[..., Any]
    make_state: Callable[[str], Any]
    make_args: Callable[[str], tuple[Any, ...]] = lambda dtype: ()
    state_arg: int = 0
    out: int | None = None
    kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"Case name must be a str; got {self.name!r}.")
        for field in ("fn", "make_state", "make_args"):
            if not callable(getattr(self, field)):
                raise TypeError(
                    f"Case {self.name!r}: {field} must be callable; got {getattr(self, field)!r}."
                )

    def run(self, dtype: str, *, weak_type: bool = True) -> list[Mismatch]:
        """The mismatches of this case at `dtype` (x64 on for 64-bit dtypes)."""
        with x64_for(dtype):
            try:
                state = self.make_state(dtype)
                args = tuple(self.make_args(dtype))
            except Exception as error:
                raise CaseError(
                    f"case {self.name!r} at dtype {dtype}: building its inputs raised "
                    f"{type(error).__name__}: {error}"
                ) from error
            try:
                assert_state_dtype_invariant(
                    self.fn,
                    state,
                    *args,
                    state_arg=self.state_arg,
                    out=self.out,
                    weak_type=weak_type,
                    **dict(self.kwargs or {}),
                )
            except StateDtypeError as error:
                return error.mismatches
            except Exception as error:
                raise CaseError(
                    f"case {self.name!r} at dtype {dtype}: {type(error).__name__}: {error}"
                ) from error
        return []


def _check_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(getattr(jax.numpy, name)) if hasattr(jax.numpy, name) else np.dtype(name)
    except TypeError:
        raise ValueError(
            f"unknown dtype {name!r}; use a JAX dtype name such as {', '.join(DTYPES)}."
        ) from None


@contextlib.contextmanager
def x64_for(dtype: str) -> Iterator[None]:
    """x64 on within the block if `dtype` is a 64-bit type, else unchanged."""
    resolved = _check_dtype(dtype)
    if resolved.itemsize >= (16 if resolved.kind == "c" else 8):
        with enable_x64(True):
            yield
    else:
        yield


def dtype_sweep(
    case: Case, dtypes: Sequence[str] = DTYPES, *, weak_type: bool = True
) -> dict[str, list[Mismatch]]:
    """Runs `case` at each dtype; an empty list means the dtype holds.

    x64 is enabled only within 64-bit runs, and the caller's setting restored.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard.testing import Case, dtype_sweep

        case = Case("halve", lambda s: s * 0.5, lambda dtype: jnp.ones(2, dtype))
        assert dtype_sweep(case) == {d: [] for d in ("float16", "bfloat16", "float32", "float64")}
        ```
    """
    if not isinstance(case, Case):
        raise TypeError(f"dtype_sweep expects a jax_dtypeguard.testing.Case; got {case!r}.")
    if isinstance(dtypes, str):
        dtypes = [dtypes]
    for dtype in dtypes:
        _check_dtype(dtype)
    return {dtype: case.run(dtype, weak_type=weak_type) for dtype in dtypes}


def parametrize_dtypes(dtypes: Sequence[str] = DTYPES) -> Callable[[Any], Any]:
    """A pytest parametrization giving the test a `dtype` argument (a name).

    x64 is on within the 64-bit cases only.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard.testing import parametrize_dtypes

        @parametrize_dtypes()
        def test_ones(dtype):
            assert jnp.ones(2, dtype).dtype == dtype
        ```
    """
    import pytest

    for dtype in dtypes:
        _check_dtype(dtype)

    def decorate(test: Callable[..., Any]) -> Any:
        @functools.wraps(test)
        def with_x64(*args: Any, dtype: str, **kwargs: Any) -> Any:
            with x64_for(dtype):
                return test(*args, dtype=dtype, **kwargs)

        return pytest.mark.parametrize("dtype", list(dtypes))(with_x64)

    return decorate
