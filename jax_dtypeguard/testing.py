"""Abstract checks for test suites: assertions, reusable cases, dtype sweeps, and
what a target of `jax-dtypeguard audit` returns besides cases.

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

from ._columns import Column
from ._comparisons import partitioned_by
from ._compat import enable_x64
from ._config import Fixed
from ._decorator import validate_options
from ._errors import Mismatch, StateDtypeError
from ._guard import Guard
from ._plan import CallPlan, describe_location, is_index
from ._signature import split_traced

__all__ = [
    "DTYPES",
    "AuditSubject",
    "Case",
    "CaseError",
    "InitCheck",
    "NotApplicable",
    "SkippedCase",
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


def _positions(state_arg: Any, what: str) -> tuple[int, ...]:
    """`state_arg` as a tuple of positions; `TypeError` unless ints or a tuple of them."""
    items = state_arg if isinstance(state_arg, tuple) else (state_arg,)
    if not items or not all(map(is_index, items)):
        raise TypeError(
            f"{what}state_arg must be an int position or a tuple of them; got {state_arg!r}."
        )
    if len(set(items)) != len(items):
        raise ValueError(f"{what}state_arg={state_arg!r} names a position twice.")
    return items


def _outs(out: Any, count: int, what: str) -> Any:
    """`out` checked against a state of `count` parts (a tuple of ints for several)."""
    if count == 1:
        if out is not None and not is_index(out):
            raise TypeError(f"{what}out must be None or an int index; got {out!r}.")
        return out
    if out is None:
        return tuple(range(count))  # the return value is the tuple of the parts
    if not isinstance(out, tuple) or len(out) != count or not all(map(is_index, out)):
        raise TypeError(
            f"{what}out must be a tuple of {count} int indices, one per part of the state "
            f"(state_arg has {count}); got {out!r}."
        )
    return out


def _insert_parts(args: Sequence[Any], positions: Any, parts: Sequence[Any]) -> list[Any]:
    """`args` with each part of the state inserted at its position in the full call."""
    total = len(args) + len(positions)
    for position in positions:
        if not 0 <= position < total:
            raise ValueError(
                f"state_arg={positions if len(positions) > 1 else positions[0]} must be "
                f"position(s) from 0 to {total - 1}: the state is inserted among the "
                f"{len(args)} other positional arguments."
            )
    call_args = list(args)
    for position, part in sorted(zip(positions, parts), key=lambda item: item[0]):
        call_args.insert(position, part)
    return call_args


def assert_state_dtype_invariant(
    fn: Callable[..., Any],
    state: Any,
    *args: Any,
    state_arg: int | tuple[int, ...] = 0,
    out: int | tuple[int, ...] | None = None,
    weak_type: bool = True,
    traced: Callable[[Any], bool] | None = None,
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
      For a state spread over several arguments, a tuple of its parts.
    - `*args`, `**kwargs`: the other arguments of `fn`.
    - `state_arg`: the state's position among `fn`'s positional arguments, or
      a tuple of positions, one per part (`(1, 4)` for Optimistix's
      `step(fn, y, args, options, state, tags)`).
    - `out`: where the new state is in `fn`'s return value (as in
      `state_dtype_invariant`): `None` for the whole return value; for a
      state in several parts, a tuple of indices, one per part (`(0, 1)`).
    - `weak_type`: whether a change of weak_type alone counts as drift.
    - `traced`: which leaves are traced, a predicate such as `eqx.is_array`
      (Python scalars then stay static, as under `eqx.filter_jit`); default:
      every array and Python scalar. Leaves that are neither are static always.

    **Returns:**

    `None` when every leaf keeps its type.

    **Raises:**

    `StateDtypeError` listing every drifting leaf, with paths that start with
    the name of the parameter that holds it; `TypeError`/`ValueError` on
    misuse; whatever `fn` raises while tracing.

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
    positions = _positions(state_arg, "")
    several = isinstance(state_arg, tuple)
    if several:
        if not isinstance(state, (tuple, list)) or len(state) != len(positions):
            raise TypeError(
                f"state_arg={state_arg!r} spreads the state over {len(positions)} arguments: "
                f"pass the state as a tuple of {len(positions)} parts; got "
                f"{type(state).__name__}."
            )
        out = _outs(out, len(positions), "")
        parts = tuple(state)
    else:
        out = _outs(out, 1, "")
        parts = (state,)
        if not 0 <= positions[0] <= len(args):
            raise ValueError(
                f"state_arg={state_arg} must be a position from 0 to {len(args)}: the state "
                f"is inserted among the {len(args)} other positional arguments."
            )
    validate_options("check", weak_type, True, None, None)
    call_args = _insert_parts(args, positions, parts)
    plan = CallPlan.at_positions(fn, state_arg, out)
    guard = Guard(fn, plan, comparison=partitioned_by(traced), settings=Fixed("check", weak_type))
    inputs, rebuild = split_traced((call_args, kwargs), traced)

    def run(values: list[Any]) -> Any:
        positional, keywords = rebuild(values)
        guard(*positional, **keywords)

    jax.eval_shape(run, inputs)


def _no_args(dtype: str) -> tuple[Any, ...]:
    return ()


@dataclasses.dataclass(frozen=True)
class Case:
    """A reusable state-invariance check, swept over dtypes.

    **Attributes:**

    - `name`: shown in reports and errors.
    - `fn`: the step function.
    - `make_state`: `make_state(dtype)` builds the state for a dtype name
      (`"float16"`, ...); a tuple of parts when `state_arg` is a tuple.
    - `make_args`: `make_args(dtype)` builds the other positional arguments,
      as a tuple (default: none).
    - `state_arg`: where the state is inserted among the positional
      arguments, as in `assert_state_dtype_invariant`; a tuple of positions
      for a state spread over several arguments.
    - `out`: where the new state is in `fn`'s return value; a tuple of
      indices for a state in several parts.
    - `kwargs`: keyword arguments for `fn`.
    - `make`: instead of `make_state` and `make_args`, one factory
      `make(dtype) -> (state, args)`, for when both come from one `init`.
    - `traced`: which leaves are traced, as in `assert_state_dtype_invariant`
      (`eqx.is_array`: Python scalars stay static, as under `eqx.filter_jit`).

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
    make_state: Callable[[str], Any] | None = None
    make_args: Callable[[str], Sequence[Any]] = _no_args
    state_arg: int | tuple[int, ...] = 0
    out: int | tuple[int, ...] | None = None
    kwargs: Mapping[str, Any] | None = None
    make: Callable[[str], tuple[Any, Sequence[Any]]] | None = None
    traced: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(
                f"Case name must be a str; got {type(self.name).__name__} {self.name!r}."
            )
        what = f"Case {self.name!r}: "
        if (self.make is None) == (self.make_state is None):
            raise TypeError(
                f"{what}give either make_state (and make_args) or make, not "
                f"{'both' if self.make is not None else 'neither'}."
            )
        if self.make is not None and self.make_args is not _no_args:
            raise TypeError(f"{what}make builds the arguments too; drop make_args.")
        for field in ("fn", "make_state", "make_args", "make", "traced"):
            value = getattr(self, field)
            if (value is not None or field == "fn") and not callable(value):
                raise TypeError(
                    f"{what}{field} must be callable; got {type(value).__name__} {value!r}."
                )
        positions = _positions(self.state_arg, what)
        _outs(self.out, len(positions) if isinstance(self.state_arg, tuple) else 1, what)
        if self.kwargs is not None and not isinstance(self.kwargs, Mapping):
            raise TypeError(
                f"{what}kwargs must be a mapping of keyword arguments; "
                f"got {type(self.kwargs).__name__} {self.kwargs!r}."
            )

    def run(self, dtype: str, *, weak_type: bool = True) -> list[Mismatch]:
        """The mismatches of this case at `dtype`; an empty list means it holds.

        Runs abstractly. x64 is on within a 64-bit run and a `"float32+x64"`
        run (a float32 state with x64 on); any other run keeps the caller's
        setting (see `x64_for`).

        **Arguments:**

        - `dtype`: a dtype name such as `"bfloat16"` (or a dtype), or
          `"float32+x64"`.
        - `weak_type`: whether a change of weak_type alone counts as drift.

        **Returns:**

        The list of `Mismatch`es.

        **Raises:**

        `CaseError` naming the case and the dtype when a factory or the
        function raises (the original exception is its `__cause__`);
        `ValueError` for an unknown dtype.
        """
        column = Column.named(dtype)
        with _x64(column):
            return self._run(column.dtype, weak_type=weak_type, label=column.label)

    def inputs(self, dtype: str, label: str | None = None) -> tuple[Any, list[Any]]:
        """`(state, args)` at dtype name `dtype`, from the factories; `CaseError` if they fail."""
        where = f"Case {self.name!r} at dtype {label or dtype}"
        if self.make is not None:
            made = self._build(where, dtype, "make", self.make)
            if not isinstance(made, (tuple, list)) or len(made) != 2:
                raise CaseError(
                    f"{where}: make must return (state, args); got {type(made).__name__}.",
                    self.name,
                    label or dtype,
                )
            state, args = made
        else:
            assert self.make_state is not None
            state = self._build(where, dtype, "make_state", self.make_state)
            args = self._build(where, dtype, "make_args", self.make_args)
        if not isinstance(args, (tuple, list)):
            factory = "make" if self.make is not None else "make_args"
            raise CaseError(
                f"{where}: {factory} must return a tuple of the other positional "
                f"arguments; got {type(args).__name__}. Wrap a single argument: (x,).",
                self.name,
                label or dtype,
            )
        return state, list(args)

    def _run(self, dtype: str, *, weak_type: bool, label: str | None = None) -> list[Mismatch]:
        """`run` at dtype name `dtype` under the x64 setting in force."""
        label = label or dtype
        where = f"Case {self.name!r} at dtype {label}"
        state, args = self.inputs(dtype, label)
        try:
            assert_state_dtype_invariant(
                self.fn,
                state,
                *args,
                state_arg=self.state_arg,
                out=self.out,
                weak_type=weak_type,
                traced=self.traced,
                **dict(self.kwargs or {}),
            )
        except StateDtypeError as error:
            return error.mismatches
        except Exception as error:
            function = describe_location(self.fn)[0]
            raise CaseError(
                f"{where}: tracing {function} raised {type(error).__name__}: {error}",
                self.name,
                label,
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


class NotApplicable(Exception):
    """Raised by a `Case`'s factory: the case does not apply at this dtype.

    `jax-dtypeguard audit` shows the cell as `skipped`, with the message as
    the reason (say why in words: `"float64 times need x64 on"`). Elsewhere it
    is the `__cause__` of the `CaseError` that running the case raises.
    """


NotApplicable.__module__ = "jax_dtypeguard.testing"


@dataclasses.dataclass(frozen=True)
class InitCheck:
    """How an audited case's state is built, so that `jax-dtypeguard audit`
    checks `init` too.

    Most drift is born in `init`: a leaf built weak (`jnp.array(0.0)`) or in
    a fixed dtype (`jnp.zeros(n)`). With an `InitCheck`, the audit names the
    `init` line that built each weak leaf the step makes strong, and reports
    each buffer that mirrors the params (same structure and shapes) in
    another float dtype than theirs.

    **Attributes:**

    - `fn`: the `init` function.
    - `make_args`: `make_args(dtype)` builds `init`'s positional arguments at
      a dtype name, as a tuple.
    - `reference`: the index among them of the params (or `y0`) whose dtypes
      the state's buffers follow.
    - `root`: the state's name in the step's report (`"opt_state"`,
      `"state"`): the paths of the `Case`'s mismatches that start with it
      are the state `init` builds.
    - `select`: picks the state out of `init`'s return value (default: all
      of it).
    - `traced`: which leaves of the arguments are traced, as in
      `Case.traced`.
    - `mirrored`: whether the buffers that mirror the params should have
      their dtype (`False` where the library fixes another dtype on purpose,
      as `MultiSteps(accumulator_dtype=jnp.float32)` does).
    """

    fn: Callable[..., Any]
    make_args: Callable[[str], Sequence[Any]]
    _: dataclasses.KW_ONLY
    reference: int
    root: str
    select: Callable[[Any], Any] | None = None
    traced: Callable[[Any], bool] | None = None
    mirrored: bool = True


@dataclasses.dataclass(frozen=True)
class AuditSubject:
    """A `Case` with what `jax-dtypeguard audit` checks besides its step.

    An audit target may return these among its `Case`s.

    **Attributes:**

    - `case`: the `Case`.
    - `init`: an `InitCheck`, to audit the `init` that builds the state.
    - `warnings`: lines for the case's rows (shown as `warning:` lines, and in
      the JSON `warnings`), such as how the target had to build it.
    - `source`: the library's step function, named as the origin of a drift
      whose first operation cannot be found (a value from one of the
      library's constants).
    """

    case: Case
    _: dataclasses.KW_ONLY
    init: InitCheck | None = None
    warnings: tuple[str, ...] = ()
    source: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        """The case's name."""
        return self.case.name


@dataclasses.dataclass(frozen=True)
class SkippedCase:
    """A case an audit target could not build, and why, in words: one `skipped`
    row of `jax-dtypeguard audit` (say what to do about it, too)."""

    name: str
    reason: str


def _x64(column: Column) -> Any:
    """x64 on in a column that has it on; else the caller's setting."""
    return enable_x64(True) if column.x64 else contextlib.nullcontext()


@contextlib.contextmanager
def x64_for(dtype: str) -> Iterator[None]:
    """x64 on within the block for a 64-bit dtype or a `"+x64"` configuration
    (`"float32+x64"`); for any other dtype the caller's setting stays as it is.

    The caller's setting is restored on exit.

    **Arguments:**

    - `dtype`: a dtype name (or a dtype), or a `"+x64"` configuration.

    **Raises:**

    `ValueError` for an unknown dtype.

    !!! Example
        ```python
        import jax
        import jax.numpy as jnp
        from jax_dtypeguard.testing import x64_for

        with x64_for("float64"):
            assert jnp.ones(2, "float64").dtype == jnp.float64
        with x64_for("float32+x64"):
            assert jax.config.jax_enable_x64
        assert not jax.config.jax_enable_x64
        ```
    """
    with _x64(Column.named(dtype)):
        yield


def dtype_sweep(
    case: Case, dtypes: Sequence[str] = DTYPES, *, weak_type: bool = True
) -> dict[str, list[Mismatch]]:
    """Runs `case` at each dtype; an empty list means the dtype holds.

    x64 is forced on within 64-bit runs and `"float32+x64"` (a float32 state
    with x64 on); the other runs keep the caller's setting, which is restored
    at the end.

    **Arguments:**

    - `case`: the `Case`.
    - `dtypes`: dtype names (default `DTYPES`: float16, bfloat16, float32,
      float64), and `"float32+x64"`.
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
        assert dtype_sweep(case, ["float32+x64"]) == {"float32+x64": []}
        ```
    """
    if not isinstance(case, Case):
        raise TypeError(
            f"dtype_sweep expects a jax_dtypeguard.testing.Case; got {type(case).__name__} "
            f"{case!r}."
        )
    names = [Column.named(d).label for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]
    return {name: case.run(name, weak_type=weak_type) for name in names}


def parametrize_dtypes(dtypes: Sequence[str] = DTYPES) -> Callable[[Any], Any]:
    """A pytest parametrization giving the test a `dtype` argument (a name).

    x64 is forced on within the 64-bit cases (and `"float32+x64"`); the
    others keep the caller's setting. With the plugin active (the default once `jax_dtypeguard` is installed), that
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

    names = [Column.named(d).label for d in ([dtypes] if isinstance(dtypes, str) else dtypes)]
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
