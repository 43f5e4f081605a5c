"""The audit's Diffrax target: Runge-Kutta solvers' `step` and step-size
controllers' `adapt_step_size`, as `diffeqsolve`'s loop carries them.

`y` is in the column's dtype; the times are in the column's dtype, then in
float32 and in float64 (three rows per solver), since a float32 `t` with a
float16 `y` is where a step promotes `y`. Leaves are traced from the carried
state whole, as `diffeqsolve`'s `while_loop` carries it (a Python int in a state is
traced, as the loop makes it an array); functions and other objects are static.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from ..testing import AuditSubject, Case, InitCheck, NotApplicable, SkippedCase
from ._probe import fails_on_problem, first_that_runs, rows_of
from ._targets import Item, first_line

TIME_DTYPES = (None, "float32", "float64")  # None: the column's dtype
_TOLERANCES = {"rtol": 1e-3, "atol": 1e-6}


def _decay(t: Any, y: Any, args: Any) -> Any:
    return -0.5 * y


def _stiff(t: Any, y: Any, args: Any) -> Any:
    return -2.0 * y


def _times(dtype: str, time_dtype: str | None) -> tuple[Any, Any, Any]:
    """`(t0, t1, dt0)` in `time_dtype` (default: `dtype`)."""
    wanted = time_dtype or dtype
    if jnp.dtype(wanted).itemsize == 8 and not jax.config.read("jax_enable_x64"):
        raise NotApplicable(
            "float64 times need x64 on: see this row's float32+x64 and float64 columns"
        )
    # Exact in every dtype, so that StepTo's ts (built once) match them.
    return (jnp.asarray(0.0, wanted), jnp.asarray(0.125, wanted), jnp.asarray(0.0625, wanted))


def _y0(dtype: str) -> jax.Array:
    return jnp.asarray([1.0, 0.5, 0.25], dtype)


def _terms(diffrax: Any, solver: Any) -> Any | None:
    """The terms `solver` takes: one ODE term, or two for IMEX solvers; else None."""
    structure = solver.term_structure
    if structure is diffrax.AbstractTerm or structure is diffrax.ODETerm:
        return diffrax.ODETerm(_decay)
    if typing.get_origin(structure) is diffrax.MultiTerm:
        return diffrax.MultiTerm(diffrax.ODETerm(_decay), diffrax.ODETerm(_stiff))
    return None


def _carried(leaf: Any) -> bool:
    """Every leaf JAX can trace is traced: `diffeqsolve`'s `while_loop` carries the
    solver's and controller's states whole, so a Python int (StepTo's index)
    becomes an array there, unlike under `eqx.partition`."""
    return True


def _as_carried(tree: Any) -> Any:
    """`tree` as `diffeqsolve`'s `while_loop` carries it: a Python scalar that a
    step returns (FSAL solvers return `False` for `first_step`) becomes the array
    JAX makes of it."""
    return jax.tree.map(
        lambda leaf: jnp.asarray(leaf) if isinstance(leaf, (bool, int, float, complex)) else leaf,
        tree,
    )


def _with_tolerances(solver: Any) -> Any:
    """An implicit solver's root finder with the tolerances `diffeqsolve` would
    take from the step-size controller."""
    import equinox as eqx
    import optimistix as optx

    if getattr(solver, "root_finder", None) is None:
        return solver
    return eqx.tree_at(
        lambda s: (s.root_finder.rtol, s.root_finder.atol, s.root_finder.norm),
        solver,
        (_TOLERANCES["rtol"], _TOLERANCES["atol"], optx.rms_norm),
    )


def _row(name: str, time_dtype: str | None) -> str:
    return f"diffrax.{name}" + (f" (t {time_dtype})" if time_dtype else "")


def _solver_case(
    diffrax: Any, name: str, solver: Any, terms: Any, time_dtype: str | None
) -> AuditSubject:
    def init_args(dtype: str) -> tuple[Any, ...]:
        t0, t1, _ = _times(dtype, time_dtype)
        return terms, t0, t1, _y0(dtype), None

    def make(dtype: str) -> tuple[Any, list[Any]]:
        terms_, t0, t1, y0, args = init_args(dtype)
        state = solver.init(terms_, t0, t1, y0, args)
        return (y0, state), [terms_, t0, t1, args, jnp.asarray(False)]

    def step(
        terms: Any, t0: Any, t1: Any, y0: Any, args: Any, solver_state: Any, made_jump: Any
    ) -> Any:
        y1, y_error, dense_info, state, result = solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        return y1, y_error, dense_info, _as_carried(state), result

    step.__qualname__ = f"{type(solver).__qualname__}.step"
    case = Case(
        _row(name, time_dtype), step, make=make, state_arg=(3, 5), out=(0, 3), traced=_carried
    )
    init = InitCheck(solver.init, init_args, reference=3, root="solver_state", traced=_carried)
    return AuditSubject(case, init=init, source=type(solver).step)


def _controller_case(
    diffrax: Any, name: str, controller: Any, time_dtype: str | None, fixed_steps: bool = False
) -> AuditSubject:
    terms = diffrax.ODETerm(_decay)

    def func(terms: Any, t: Any, y: Any, args: Any) -> Any:
        return terms.vf(t, y, args)

    def init_args(dtype: str) -> tuple[Any, ...]:
        t0, t1, dt0 = _times(dtype, time_dtype)
        # A controller that fixes the steps itself (StepTo) takes no dt0.
        return terms, t0, t1, _y0(dtype), None if fixed_steps else dt0, None, func, 5

    def make(dtype: str) -> tuple[Any, list[Any]]:
        terms_, t0, t1, y0, dt0, args, func_, order = init_args(dtype)
        t1, state = controller.init(terms_, t0, t1, y0, dt0, args, func_, order)
        y1 = y0 * 0.99
        y_error = jnp.full_like(y0, 1e-4)
        return (t0, t1, state), [y0, y1, args, y_error, order]

    def adapt_step_size(
        t0: Any,
        t1: Any,
        y0: Any,
        y1_candidate: Any,
        args: Any,
        y_error: Any,
        error_order: Any,
        controller_state: Any,
    ) -> Any:
        return controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )

    adapt_step_size.__qualname__ = f"{type(controller).__qualname__}.adapt_step_size"
    case = Case(
        _row(name, time_dtype),
        adapt_step_size,
        make=make,
        state_arg=(0, 1, 7),
        out=(1, 2, 4),
        traced=_carried,
    )
    init = InitCheck(
        controller.init,
        init_args,
        reference=3,
        root="controller_state",
        select=lambda out: out[1],
        traced=_carried,
    )
    return AuditSubject(case, init=init, source=type(controller).adapt_step_size)


def _exported(diffrax: Any, base: type) -> list[tuple[str, type]]:
    """The concrete subclasses of `base` that Diffrax exports, by name."""
    return [
        (name, cls)
        for name in sorted(dir(diffrax), key=str.lower)
        if inspect.isclass(cls := getattr(diffrax, name))
        and not name.startswith(("Abstract", "_"))
        and issubclass(cls, base)
    ]


def _controllers(diffrax: Any) -> list[tuple[str, Any] | SkippedCase]:
    found: list[tuple[str, Any] | SkippedCase] = []
    for name, cls in _exported(diffrax, diffrax.AbstractStepSizeController):
        required = [
            p.name for p in inspect.signature(cls).parameters.values() if p.default is p.empty
        ]
        values: dict[str, Callable[[], Any]] = {
            **{k: (lambda v=v: v) for k, v in _TOLERANCES.items()},
            "controller": lambda: diffrax.PIDController(**_TOLERANCES),
            "ts": lambda: [0.0, 0.0625, 0.125],
        }
        missing = [p for p in required if p not in values]
        if missing:
            found.append(SkippedCase(f"diffrax.{name}", _cannot_guess(missing)))
            continue
        found.append((name, cls(**{p: values[p]() for p in required})))
    return found


def _cannot_guess(missing: list[str]) -> str:
    return (
        f"needs {', '.join(missing)}, which the audit cannot guess; audit it with your "
        "own Case (module:attribute target)"
    )


def _runge_kutta(diffrax: Any) -> list[tuple[str, Any, Any] | SkippedCase]:
    found: list[tuple[str, Any, Any] | SkippedCase] = []
    for name, cls in _exported(diffrax, diffrax.AbstractRungeKutta):
        try:
            solver = _with_tolerances(cls())
        except Exception as error:
            found.append(SkippedCase(f"diffrax.{name}", f"cannot be built: {first_line(error)}"))
            continue
        terms = _terms(diffrax, solver)
        if terms is None:
            found.append(
                SkippedCase(
                    f"diffrax.{name}",
                    f"takes terms of the form {solver.term_structure}, which the audit does "
                    "not build; audit it with your own Case (module:attribute target)",
                )
            )
            continue
        found.append((name, solver, terms))
    return found


def diffrax_target() -> list[Item]:
    """The `diffrax` target: `solver.step` of every explicit and implicit
    Runge-Kutta solver Diffrax exports (state: `(y0, solver_state)`), and
    `adapt_step_size` of every step-size controller (state: `(t0, t1,
    controller_state)`), on `dy/dt = -y/2` with `y` of shape (3,), each with
    times in the column's dtype, in float32 and in float64."""
    import diffrax

    def solver_rows(name: str, solver: Any, terms: Any) -> list[Item]:
        return [_runs([_solver_case(diffrax, name, solver, terms, t)]) for t in TIME_DTYPES]

    def controller_rows(name: str, controller: Any) -> list[Item]:
        # A controller that fixes the steps itself takes no dt0.
        return [
            _runs(
                [_controller_case(diffrax, name, controller, t, fixed) for fixed in (False, True)]
            )
            for t in TIME_DTYPES
        ]

    return rows_of(_runge_kutta(diffrax), solver_rows) + rows_of(
        _controllers(diffrax), controller_rows
    )


def _runs(cases: Iterable[AuditSubject]) -> Item:
    """The first case whose step runs, at its time dtype; else a row saying it fails."""
    cases = list(cases)
    dtype = "float64" if cases[0].name.endswith("(t float64)") else "float32"
    subject = first_that_runs(cases, dtype)
    return (
        fails_on_problem(cases[0].name, subject) if isinstance(subject, BaseException) else subject
    )
