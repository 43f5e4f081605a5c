"""Abstract checks for test suites: assertions, reusable cases, dtype sweeps.

Everything here traces abstractly (`jax.eval_shape`): nothing is compiled and
no FLOPs run, so a check of a large model costs a trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._compat import enable_x64
from ._decorator import _validate
from ._errors import Mismatch, StateDtypeError
from ._guard import Guard
from ._plan import CallPlan, StateParameter, describe_location

__all__ = [
    "DTYPES",
    "Case",
    "CaseError",
    "assert_state_dtype_invariant",
    "dtype_sweep",
    "parametrize_dtypes",
    "x64_for",
]

DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")

# The pytest marker through which the plugin scopes x64 around a swept test's fixtures.
X64_MARKER = "dtypeguard_x64"


class CaseError(RuntimeError):
    """A `Case` could not be run at a dtype: a factory or the function raised.

    The message names the case and the dtype; the original exception is the
    `__cause__`. `.case` and `.dtype` hold them.
    """

    def __init__(self, message: str, case: str = "", dtype: str = "") -> None:
        super().__init__(message)
        self.case = case
        self.dtype = dtype


CaseError.__module__ = "jax_dtypeguard.testing"


_TRACEABLE = (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic, bool, int, float, complex)


def _split_static(
    tree: Any, traced_types: tuple[type, ...] = _TRACEABLE
) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The leaves of `tree` that JAX should trace, and a function rebuilding the
    tree from new values for them; every other leaf (a function, a string) is
    kept as it is, a constant of the trace."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    traced = [isinstance(leaf, traced_types) for leaf in leaves]

    def rebuild(values: list[Any]) -> Any:
        it = iter(values)
        full = [next(it) if t else leaf for leaf, t in zip(leaves, traced)]
        return jax.tree_util.tree_unflatten(treedef, full)

    return [leaf for leaf, t in zip(leaves, traced) if t], rebuild


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
    run. Array leaves (and `jax.ShapeDtypeStruct`s, and Python scalars) of the
    arguments are traced, as `jax.jit` would trace them; any other leaf (a
    function, a string) is passed through as a constant. The check is exactly
    the one asked for: `jax_dtypeguard.config` and strict mode do not change
    it (guarded functions called inside `fn` still follow them).

    **Arguments:**

    - `fn`: the step function.
    - `state`: the state; it is inserted among `args` at position `state_arg`.
    - `*args`, `**kwargs`: the other arguments of `fn`.
    - `state_arg`: the state's position among `fn`'s positional arguments.
    - `out`: where the new state is in `fn`'s return value (as in
      `state_dtype_invariant`): `None` for the whole return value.
    - `weak_type`: whether a change of weak_type alone counts as drift.

    **Returns:**

    `None` when every leaf keeps its type.

    **Raises:**

    `StateDtypeError` listing every drifting leaf; `TypeError`/`ValueError`
    on misuse; whatever `fn` raises while tracing.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard.testing import assert_state_dtype_invariant

        assert_state_dtype_invariant(lambda s, g: s - 0.1 * g, jnp.ones(3), jnp.ones(3))
        ```
    """
    if not callable(fn):
        raise TypeError(
            f"assert_state_dtype_invariant expects a function; got {type(fn).__name__} {fn!r}."
        )
    if isinstance(state_arg, bool) or not isinstance(state_arg, int):
        raise TypeError(f"state_arg must be an int position; got {state_arg!r}.")
    if not 0 <= state_arg <= len(args):
        raise ValueError(
            f"state_arg={state_arg} must be a position from 0 to {len(args)}: the state "
            f"is inserted among the {len(args)} other positional arguments."
        )
    _validate("check", weak_type, True, out, None)
    call_args = [*args[:state_arg], state, *args[state_arg:]]
    plan = CallPlan.single(StateParameter.at(fn, state_arg, "state"), out)
    guard = Guard(fn, plan, mode="check", weak_type=weak_type, follows_config=False)
    inputs, rebuild = _split_static((call_args, kwargs))

    def traced(values: list[Any]) -> Any:
        positional, keywords = rebuild(values)
        guard(*positional, **keywords)

    jax.eval_shape(traced, inputs)


def _no_args(dtype: str) -> tuple[Any, ...]:
    return ()


@dataclasses.dataclass(frozen=True)
class Case:
    """A reusable state-invariance check, swept over dtypes.

    **Attributes:**

    - `name`: shown in reports and errors.
    - `fn`: the step function.
    - `make_state`: `make_state(dtype)` builds the state for a dtype name
      (`"float16"`, ...).
    - `make_args`: `make_args(dtype)` builds the other positional arguments,
      as a tuple (default: none).
    - `state_arg`: where the state is inserted among the positional
      arguments, as in `assert_state_dtype_invariant`.
    - `out`: where the new state is in `fn`'s return value.
    - `kwargs`: keyword arguments for `fn`.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard.testing import Case

        case = Case(
            "sgd",
            lambda params, grads: params - 0.1 * grads,
            make_state=lambda dtype: jnp.ones(3, dtype),
            make_args=lambda dtype: (jnp.ones(3, dtype),),
        )
        assert case.run("bfloat16") == []
        ```
    """

    name: str
    fn: Callable[..., Any]
    make_state: Callable[[str], Any]
    make_args: Callable[[str], Sequence[Any]] = _no_args
    state_arg: int = 0
    out: int | None = None
    kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(
                f"Case name must be a str; got {type(self.name).__name__} {self.name!r}."
            )
        for field in ("fn", "make_state", "make_args"):
            value = getattr(self, field)
            if not callable(value):
                raise TypeError(
                    f"Case {self.name!r}: {field} must be callable; got "
                    f"{type(value).__name__} {value!r}."
                )
        if isinstance(self.state_arg, bool) or not isinstance(self.state_arg, int):
            raise TypeError(
                f"Case {self.name!r}: state_arg must be an int position; got {self.state_arg!r}."
            )
        if self.out is not None and (isinstance(self.out, bool) or not isinstance(self.out, int)):
            raise TypeError(
                f"Case {self.name!r}: out must be None or an int index; got {self.out!r}."
            )
        if self.kwargs is not None and not isinstance(self.kwargs, Mapping):
            raise TypeError(
                f"Case {self.name!r}: kwargs must be a mapping of keyword arguments; "
                f"got {type(self.kwargs).__name__} {self.kwargs!r}."
            )

    def run(self, dtype: str, *, weak_type: bool = True) -> list[Mismatch]:
        """The mismatches of this case at `dtype`; an empty list means it holds.

        Runs abstractly, with x64 on exactly when `dtype` is a 64-bit type
        (see `x64_for`).

        **Arguments:**

        - `dtype`: a dtype name such as `"bfloat16"` (or a dtype).
        - `weak_type`: whether a change of weak_type alone counts as drift.

        **Returns:**

        The list of `Mismatch`es.

        **Raises:**

        `CaseError` naming the case and the dtype when a factory or the
        function raises (the original exception is its `__cause__`);
        `ValueError` for an unknown dtype.
        """
        return self._run(dtype, weak_type=weak_type, widest=dtype)

    def _run(self, dtype: Any, *, weak_type: bool, widest: Any) -> list[Mismatch]:
        """`run`, with x64 set by `widest`, the widest dtype the inputs hold
        (the audit's mixed precision gives the arguments another dtype)."""
        name = _dtype_name(dtype)
        where = f"Case {self.name!r} at dtype {name}"
        with x64_for(_dtype_name(widest)):
            state = self._build(where, name, "make_state", self.make_state)
            args = self._build(where, name, "make_args", self.make_args)
            if not isinstance(args, (tuple, list)):
                raise CaseError(
                    f"{where}: make_args must return a tuple of the other positional "
                    f"arguments; got {type(args).__name__}. Wrap a single argument: (x,).",
                    self.name,
                    name,
                )
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
                function = describe_location(self.fn)[0]
                raise CaseError(
                    f"{where}: tracing {function} raised {type(error).__name__}: {error}",
                    self.name,
                    name,
                ) from error
        return []

    def _build(self, where: str, dtype: str, field: str, factory: Callable[[str], Any]) -> Any:
        try:
            return factory(dtype)
        except Exception as error:
            raise CaseError(
                f"{where}: {field}({dtype!r}) raised {type(error).__name__}: {error}",
                self.name,
                dtype,
            ) from error


def _dtype_name(dtype: Any) -> str:
    """The canonical name of a dtype given by name or as a dtype (`"bfloat16"`)."""
    try:
        if isinstance(dtype, str):
            resolved = getattr(jax.numpy, dtype) if hasattr(jax.numpy, dtype) else dtype
            return np.dtype(resolved).name
        return np.dtype(dtype).name
    except TypeError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use a dtype name such as {', '.join(DTYPES)}."
        ) from None


def _needs_x64(name: str) -> bool:
    resolved = np.dtype(getattr(jax.numpy, name) if hasattr(jax.numpy, name) else name)
    return resolved.itemsize >= (16 if resolved.kind == "c" else 8)


@contextlib.contextmanager
def x64_for(dtype: str) -> Iterator[None]:
    """x64 on within the block for a 64-bit dtype, off for any other.

    The caller's setting is restored on exit, so each dtype of a sweep sees
    the same configuration whatever the caller's.

    **Arguments:**

    - `dtype`: a dtype name (or a dtype).

    **Raises:**

    `ValueError` for an unknown dtype.

    !!! Example
        ```python
        import jax
        import jax.numpy as jnp
        from jax_dtypeguard.testing import x64_for

        with x64_for("float64"):
            assert jnp.ones(2, "float64").dtype == jnp.float64
        assert not jax.config.jax_enable_x64
        ```
    """
    with enable_x64(_needs_x64(_dtype_name(dtype))):
        yield


def dtype_sweep(
    case: Case, dtypes: Sequence[str] = DTYPES, *, weak_type: bool = True
) -> dict[str, list[Mismatch]]:
    """Runs `case` at each dtype; an empty list means the dtype holds.

    x64 is on only within 64-bit runs, and the caller's setting is restored.

    **Arguments:**

    - `case`: the `Case`.
    - `dtypes`: dtype names (default `DTYPES`: float16, bfloat16, float32,
      float64).
    - `weak_type`: whether a change of weak_type alone counts as drift.

    **Returns:**

    `{dtype name: [Mismatch, ...]}` in the order of `dtypes`.

    **Raises:**

    `CaseError` naming the case and the dtype when a factory or the function
    raises; `ValueError` for an unknown dtype (before anything runs).

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard.testing import Case, dtype_sweep

        case = Case("halve", lambda s: s * 0.5, lambda dtype: jnp.ones(2, dtype))
        assert dtype_sweep(case) == {d: [] for d in ("float16", "bfloat16", "float32", "float64")}
        ```
    """
    if not isinstance(case, Case):
        raise TypeError(
            f"dtype_sweep expects a jax_dtypeguard.testing.Case; got {type(case).__name__} "
            f"{case!r}."
        )
    names = [_dtype_name(d) for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]
    return {name: case.run(name, weak_type=weak_type) for name in names}


def parametrize_dtypes(dtypes: Sequence[str] = DTYPES) -> Callable[[Any], Any]:
    """A pytest parametrization giving the test a `dtype` argument (a name).

    x64 is on within the 64-bit cases only, and off in the others. With the
    plugin active (the default once `jax_dtypeguard` is installed), that
    scope also covers the test's function-scoped fixtures.

    **Arguments:**

    - `dtypes`: dtype names (default `DTYPES`).

    **Returns:**

    A decorator for a test function that takes a `dtype` argument.

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

    names = [_dtype_name(d) for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]
    params = [
        pytest.param(name, id=name, marks=getattr(pytest.mark, X64_MARKER)(name)) for name in names
    ]

    def decorate(test: Callable[..., Any]) -> Any:
        @functools.wraps(test)
        def with_x64(*args: Any, dtype: str, **kwargs: Any) -> Any:
            with x64_for(dtype):
                return test(*args, dtype=dtype, **kwargs)

        return pytest.mark.parametrize("dtype", params)(with_x64)

    return decorate
