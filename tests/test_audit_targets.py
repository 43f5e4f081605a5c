"""The built-in audit targets against the real libraries: Optimistix, Diffrax, optax.contrib.

Each target is discovered from the installed library; solvers that are stable in a
configuration must say ok (no false alarms), and each drift names its leaf and origin.
"""

import inspect

import pytest

from jax_dtypeguard import _audit
from jax_dtypeguard.testing import AuditSubject, SkippedCase

COLUMNS = ("float16", "bfloat16", "float32", "float32+x64", "float64")


def rows(items):
    return {item.name: item for item in items}


def run(item, column):
    return _audit.run_case(item, column)


# --- Optimistix ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def optimistix():
    optx = pytest.importorskip("optimistix")
    pytest.importorskip("optax")
    from jax_dtypeguard._audit._optimistix import optimistix_target

    return optx, rows(optimistix_target())


def test_every_optimistix_solver_is_a_row(optimistix):
    optx, items = optimistix
    kinds = (
        optx.AbstractMinimiser,
        optx.AbstractRootFinder,
        optx.AbstractLeastSquaresSolver,
        optx.AbstractFixedPointSolver,
    )
    exported = {
        name
        for name in dir(optx)
        if inspect.isclass(getattr(optx, name))
        and issubclass(getattr(optx, name), kinds)
        and not name.startswith("Abstract")
    }
    assert len(exported) >= 20
    assert {name.split(".")[1].split("(")[0] for name in items} == exported
    for name in (
        "optimistix.BestSoFarMinimiser(BFGS)",
        "optimistix.BestSoFarRootFinder(Newton)",
        "optimistix.OptaxMinimiser(adam)",
        "optimistix.OptaxMinimiser(lbfgs)",
    ):
        assert isinstance(items[name], AuditSubject), name
    assert [i.name for i in items.values() if isinstance(i, SkippedCase)] == []


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize(
    "name",
    [
        "optimistix.BFGS",
        "optimistix.Newton",
        "optimistix.GaussNewton",
        "optimistix.Bisection",
        "optimistix.GoldenSearch",
        "optimistix.OptaxMinimiser(adam)",
    ],
)
def test_stable_optimistix_solvers_say_ok(optimistix, name, column):
    result = run(optimistix[1][name], column)
    assert (result.status, result.mismatches) == ("ok", []), (name, column)


def test_lbfgs_history_length_stays_static_and_float32_holds(optimistix):
    # L-BFGS's Python-int history_length is static under Equinox's partition: no drift.
    assert run(optimistix[1]["optimistix.LBFGS"], "float32").status == "ok"


@pytest.mark.slow
def test_lbfgs_float16_drifts_inside_its_own_scan(optimistix):
    result = run(optimistix[1]["optimistix.LBFGS"], "float16")
    assert result.status == "drift"
    (mismatch,) = result.mismatches
    assert (mismatch.kind, mismatch.expected, mismatch.got) == ("dtype", "float16[3]", "float32[3]")
    assert mismatch.origin.primitive == "scan"
    assert mismatch.origin.file.startswith("optimistix/_solver/")
    assert "JAX rejected the scan carry" in result.reason


def test_best_so_far_builds_its_loss_weak_in_init(optimistix):
    result = run(optimistix[1]["optimistix.BestSoFarMinimiser(BFGS)"], "float32")
    assert result.status == "drift"
    (mismatch,) = result.mismatches
    assert (mismatch.path, mismatch.kind) == ("state.best_loss", "weak_type")
    assert str(mismatch.origin).startswith("built as a constant by init (optimistix/")
    float16 = run(optimistix[1]["optimistix.BestSoFarMinimiser(BFGS)"], "float16")
    assert ("state.best_loss", "dtype", "weak float32[]", "float16[]") in {
        (m.path, m.kind, m.expected, m.got) for m in float16.mismatches
    }


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("optimistix.BestSoFarMinimiser(BFGS)", "float16"),
        ("optimistix.FixedPointIteration", "float32"),
        ("optimistix.OptaxMinimiser(lbfgs)", "bfloat16"),
    ],
)
def test_cast_repairs_optimistix_steps_split_as_equinox_splits_them(optimistix, name, column):
    result = _audit.run_case(optimistix[1][name], column, cast=True)
    assert result.status == "drift" and result.mismatches
    assert result.cast_left == [], result.reason
    assert "cast mode repairs every drift" in result.reason


def test_cast_says_it_cannot_reach_drift_inside_a_librarys_own_loop(optimistix):
    result = _audit.run_case(optimistix[1]["optimistix.LBFGS"], "float16", cast=True)
    assert result.status == "drift" and "JAX rejected the scan carry" in result.reason
    assert result.cast_left is None
    assert "cast mode not tried: the drift is inside the library's own loop" in result.reason


def test_optimistix_paths_start_with_each_parameters_name(optimistix):
    result = run(optimistix[1]["optimistix.FixedPointIteration"], "float16")
    assert result.status == "drift"
    assert {m.path.split(".")[0] for m in result.mismatches} == {"state"}
    assert all(m.origin is not None for m in result.mismatches)


# --- Diffrax ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffrax():
    dfx = pytest.importorskip("diffrax")
    from jax_dtypeguard._audit._diffrax import diffrax_target

    return dfx, rows(diffrax_target())


def test_every_runge_kutta_solver_and_controller_is_three_rows(diffrax):
    dfx, items = diffrax
    solvers = {
        name
        for name in dir(dfx)
        if inspect.isclass(getattr(dfx, name))
        and not name.startswith("Abstract")
        and (
            issubclass(getattr(dfx, name), dfx.AbstractRungeKutta)
            or issubclass(getattr(dfx, name), dfx.AbstractStepSizeController)
        )
    }
    assert {"Tsit5", "Dopri5", "Kvaerno5", "KenCarp4", "PIDController"} <= solvers
    for name in solvers:
        for suffix in ("", " (t float32)", " (t float64)"):
            assert isinstance(items[f"diffrax.{name}{suffix}"], AuditSubject), name + suffix


@pytest.mark.parametrize("column", COLUMNS)
@pytest.mark.parametrize(
    "name", ["diffrax.Tsit5", "diffrax.Kvaerno5", "diffrax.KenCarp4", "diffrax.PIDController"]
)
def test_diffrax_with_times_in_ys_dtype_says_ok(diffrax, name, column):
    result = run(diffrax[1][name], column)
    assert (result.status, result.mismatches) == ("ok", []), (name, column)


def test_pid_controller_holds_with_float32_times(diffrax):
    for column in COLUMNS:
        assert run(diffrax[1]["diffrax.PIDController (t float32)"], column).status == "ok"


def test_float32_times_promote_a_float16_runge_kutta_stage(diffrax):
    result = run(diffrax[1]["diffrax.Tsit5 (t float32)"], "float16")
    assert result.status == "drift"
    (mismatch,) = result.mismatches
    assert (mismatch.path, mismatch.expected, mismatch.got) == ("buffer", "float16", "float32")
    assert mismatch.origin.file == "diffrax/_solver/runge_kutta.py"
    assert any("scatter inputs have incompatible types" in w for w in result.warnings)


def test_float64_times_need_x64(diffrax):
    item = diffrax[1]["diffrax.Tsit5 (t float64)"]
    result = run(item, "float32")
    assert result.status == "skipped"
    assert result.reason.startswith("float64 times need x64 on")
    assert run(item, "float64").status == "ok"
    assert run(item, "float32+x64").status == "drift"


def test_implicit_solver_drift_names_the_closure_argument(diffrax):
    result = run(diffrax[1]["diffrax.Kvaerno5 (t float32)"], "bfloat16")
    assert result.status == "drift"
    (mismatch,) = result.mismatches
    assert (mismatch.expected, mismatch.got) == ("bf16[3]", "f32[3]")
    assert mismatch.origin.file == "diffrax/_solver/runge_kutta.py"


# --- optax.contrib ------------------------------------------------------------------


@pytest.fixture(scope="module")
def contrib():
    pytest.importorskip("optax")
    from jax_dtypeguard._audit._optax import contrib_target

    return rows(contrib_target())


def test_contrib_rows(contrib):
    assert {"contrib.prodigy", "contrib.muon", "contrib.sophia"} <= set(contrib)
    assert isinstance(contrib["contrib.sophia"], AuditSubject)  # gets obj_fn
    for item in contrib.values():
        if isinstance(item, SkippedCase):
            assert "your own Case" in item.reason


@pytest.mark.parametrize("column", COLUMNS)
def test_stable_contrib_optimizers_say_ok(contrib, column):
    for name in ("contrib.prodigy", "contrib.adopt", "contrib.schedule_free_adamw"):
        result = run(contrib[name], column)
        assert (result.status, result.mismatches) == ("ok", []), (name, column)


def test_jit_runs_optimistix_steps_as_filter_jit_would(optimistix):
    # Static halves (Python ints, jaxprs of linear operators) stay out of the jitted output.
    for name in ("optimistix.LBFGS", "optimistix.GaussNewton"):
        result = _audit.run_case(optimistix[1][name], "float32", jit=True)
        assert (result.status, result.compiles) == ("ok", 1), (name, result.reason)
    lbfgs = _audit.run_case(optimistix[1]["optimistix.OptaxMinimiser(lbfgs)"], "float32", jit=True)
    assert (lbfgs.status, lbfgs.compiles) == ("drift", 2)  # the weak info fields, once strong
