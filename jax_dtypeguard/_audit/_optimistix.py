"""The audit's Optimistix target: every minimiser, root finder, least-squares and
fixed-point solver Optimistix exports, on a small problem of its kind.

Each case is one `solver.step(fn, y, args, options, state, tags)`: the carried
`(y, state)` must keep the types `solver.init` gave them, as Optimistix's own
`while_loop` requires. Leaves are split with Equinox's partition
(`eqx.is_array`), as Optimistix does: a Python int such as L-BFGS's
`history_length` stays a Python int, and a change in the static half (which
Optimistix asserts away with `eqx.tree_equal`) is structure drift.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..testing import AuditSubject, Case, InitCheck, SkippedCase
from ._probe import fails_on_problem, first_that_runs, rows_of
from ._targets import INSTALL_HINT, Item

# The kinds of solver, each with its problems (tried in order: vector, then scalar).
_KINDS = ("AbstractMinimiser", "AbstractRootFinder", "AbstractLeastSquaresSolver")
_FIXED_POINT = "AbstractFixedPointSolver"
_TOLERANCES = {"rtol": 1e-3, "atol": 1e-6, "learning_rate": 0.1}


@dataclasses.dataclass(frozen=True)
class Problem:
    """`fn(y, args) -> (out, aux)` at `y0(dtype)`, with `options`."""

    fn: Callable[[Any, Any], Any]
    y0: Callable[[str], Any]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str | None = None


def _vector(dtype: str) -> jax.Array:
    return jnp.asarray([0.5, 1.0, 1.5], dtype)


def _scalar(dtype: str) -> jax.Array:
    return jnp.asarray(0.25, dtype)


def _quadratic(y: Any, args: Any) -> Any:
    return 0.5 * jnp.sum(jnp.square(y - 1.0)) + 0.1 * jnp.sum(y**4), None


def _cubic(y: Any, args: Any) -> Any:
    return y**3 + y - 1.0, None


def _residuals(y: Any, args: Any) -> Any:
    matrix = jnp.arange(1.0, 13.0, dtype=y.dtype).reshape(4, 3) / 10
    return matrix @ y - jnp.ones(4, y.dtype), None


def _contraction(y: Any, args: Any) -> Any:
    return 0.5 * jnp.cos(y), None


_BRACKET = {"lower": 0.0, "upper": 1.0}
PROBLEMS = {
    "AbstractMinimiser": [
        Problem(_quadratic, _vector),
        Problem(_quadratic, _scalar, _BRACKET, "a scalar y in [0, 1]"),
    ],
    "AbstractRootFinder": [
        Problem(_cubic, _vector),
        Problem(_cubic, _scalar, _BRACKET, "a scalar y in [0, 1]"),
    ],
    "AbstractLeastSquaresSolver": [Problem(_residuals, _vector)],
    "AbstractFixedPointSolver": [Problem(_contraction, _vector)],
}


def _kind_of(optx: Any, cls: type) -> str | None:
    for kind in (*_KINDS, _FIXED_POINT):
        if issubclass(cls, getattr(optx, kind)):
            return kind
    return None


def _representatives(optx: Any) -> dict[str, Any]:
    """The solver a `BestSoFar*` wrapper wraps, per kind."""
    return {
        "AbstractMinimiser": ("BFGS", optx.BFGS(rtol=1e-3, atol=1e-6)),
        "AbstractRootFinder": ("Newton", optx.Newton(rtol=1e-3, atol=1e-6)),
        "AbstractLeastSquaresSolver": (
            "LevenbergMarquardt",
            optx.LevenbergMarquardt(rtol=1e-3, atol=1e-6),
        ),
        "AbstractFixedPointSolver": (
            "FixedPointIteration",
            optx.FixedPointIteration(rtol=1e-3, atol=1e-6),
        ),
    }


def _optax_optimizers() -> list[tuple[str, Any]]:
    import optax

    return [
        ("adam", optax.adam(1e-2)),
        ("sgd", optax.sgd(1e-2)),
        ("lbfgs", optax.lbfgs()),
    ]


def _solvers(optx: Any) -> list[tuple[str, str, Any] | SkippedCase]:
    """`(row name, kind, solver)` for every solver class Optimistix exports."""
    found: list[tuple[str, str, Any] | SkippedCase] = []
    representatives = _representatives(optx)
    for name in sorted(dir(optx), key=str.lower):
        cls = getattr(optx, name)
        if not inspect.isclass(cls) or name.startswith(("Abstract", "_")):
            continue
        kind = _kind_of(optx, cls)
        if kind is None:
            continue
        row = f"optimistix.{name}"
        build: Any = cls
        parameters = inspect.signature(cls).parameters.values()
        required = [p.name for p in parameters if p.default is p.empty]
        if required == ["solver"]:
            inner_name, inner = representatives[kind]
            found.append((f"{row}({inner_name})", kind, build(inner)))
            continue
        if "optim" in required:
            try:
                optimizers = _optax_optimizers()
            except ImportError:
                found.append(SkippedCase(row, f"optax is not installed: {INSTALL_HINT}"))
                continue
            for optimizer_name, optimizer in optimizers:
                found.append(
                    (f"{row}({optimizer_name})", kind, build(optimizer, rtol=1e-3, atol=1e-6))
                )
            continue
        missing = [p for p in required if p not in _TOLERANCES]
        if missing:
            found.append(
                SkippedCase(
                    row,
                    f"needs {', '.join(missing)}, which the audit cannot guess; audit it "
                    "with your own Case (module:attribute target)",
                )
            )
            continue
        found.append((row, kind, build(**{p: _TOLERANCES[p] for p in required})))
    return found


def _case(row: str, solver: Any, problem: Problem) -> AuditSubject:
    import equinox as eqx

    tags: frozenset[object] = frozenset()

    def init_args(dtype: str) -> tuple[Any, ...]:
        y0 = problem.y0(dtype)
        f_struct, aux_struct = jax.eval_shape(lambda: problem.fn(y0, None))
        return problem.fn, y0, None, dict(problem.options), f_struct, aux_struct, tags

    def make(dtype: str) -> tuple[Any, list[Any]]:
        fn, y0, args, options, f_struct, aux_struct, _ = init_args(dtype)
        state = solver.init(fn, y0, args, options, f_struct, aux_struct, tags)
        return (y0, state), [fn, args, options, tags]

    def step(fn: Any, y: Any, args: Any, options: Any, state: Any, tags: Any) -> Any:
        return solver.step(fn, y, args, options, state, tags)

    step.__qualname__ = f"{type(solver).__qualname__}.step"
    case = Case(row, step, make=make, state_arg=(1, 4), out=(0, 1), traced=eqx.is_array)
    init = InitCheck(solver.init, init_args, reference=1, root="state", traced=eqx.is_array)
    notes = (f"audited on {problem.note}",) if problem.note else ()
    return AuditSubject(case, init=init, warnings=notes, source=type(solver).step)


def optimistix_target() -> list[Item]:
    """The `optimistix` target: `solver.step` of every minimiser, root finder,
    least-squares and fixed-point solver Optimistix exports (`BestSoFar*`
    wrapping one solver of their kind, `OptaxMinimiser` over Adam, SGD and
    L-BFGS), with `(y, state)` as the state, on a small problem of its kind."""
    import optimistix as optx

    def solver_rows(row: str, kind: str, solver: Any) -> list[Item]:
        subject = first_that_runs(_case(row, solver, problem) for problem in PROBLEMS[kind])
        return [fails_on_problem(row, subject) if isinstance(subject, BaseException) else subject]

    return rows_of(_solvers(optx), solver_rows)
