"""guard_loops and Equinox's internal while loop, which does not promote a weak carry.

`jax.lax.while_loop` promotes a weak initial carry (`jnp.array(jnp.inf)`) to
the dtype its body returns; every kind of `equinox.internal.while_loop`
rejects it instead. Check mode reports it as drift, cast mode promotes it as
JAX would. Then every Optimistix solver through its driver, in each dtype:
the hook raises no false alarm, names what the libraries reject, and repairs
what a cast repairs.
"""

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard.testing import x64_for

eqxi = pytest.importorskip("equinox.internal")
optx = pytest.importorskip("optimistix")
optax = pytest.importorskip("optax")

KINDS = ["lax", "checkpointed", "bounded"]
EQUINOX_REJECTS = "`body_fun` must have the same input and output structure"


pytestmark = pytest.mark.usefixtures("outside_loop_scopes")


# --- Equinox's loop on its own --------------------------------------------------------------


def keep_smallest(carry):
    x, best = carry
    return x * jnp.float16(0.5), jnp.minimum(best, x)  # weak float32 best -> float16


def smallest(kind):
    init = (jnp.float16(8), jnp.array(jnp.inf))  # jnp.array(jnp.inf) is weak float32
    return eqxi.while_loop(lambda c: c[0] > 1, keep_smallest, init, kind=kind, max_steps=8)


@pytest.mark.parametrize("kind", KINDS)
def test_a_weak_carry_made_float16_is_what_equinox_rejects(kind):
    with pytest.raises(ValueError, match=EQUINOX_REJECTS):
        smallest(kind)
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        smallest(kind)
    message = str(caught.value)
    assert message.startswith("keep_smallest (tests/test_equinox_loops.py:")
    assert "  carry[1]: weak float32[] -> float16[]  (first at " in message
    assert "In equinox.internal.while_loop, reached from tests/test_equinox_loops.py:" in message
    assert "Weak initial carry (carry[1]): jax.lax.while_loop would promote it" in message
    assert [(m.path, m.kind) for m in caught.value.mismatches] == [("carry[1]", "dtype")]


@pytest.mark.parametrize("kind", KINDS)
def test_cast_promotes_the_weak_carry_as_jax_lax_while_loop_does(kind):
    with dg.guard_loops(mode="cast"):
        x, best = smallest(kind)
    jax_x, jax_best = jax.lax.while_loop(
        lambda c: c[0] > 1, keep_smallest, (jnp.float16(8), jnp.array(jnp.inf))
    )
    assert jax_best.dtype == best.dtype == jnp.float16 and not best.weak_type
    assert (float(x), float(best)) == (float(jax_x), float(jax_best)) == (1.0, 2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_what_equinox_accepts_is_left_alone(kind):
    def strengthen(carry):  # weak float32 -> float32: the same dtype, which Equinox accepts
        x, total = carry
        return x - 1, total + jnp.float32(1)

    def run():
        init = (jnp.int32(3), jnp.array(0.0))
        return eqxi.while_loop(lambda c: c[0] > 0, strengthen, init, kind=kind, max_steps=4)

    plain = run()
    for mode in ("check", "cast"):
        with dg.guard_loops(mode=mode):
            guarded = run()
        assert jax.tree.map(lambda a: (a.dtype, a.weak_type), guarded) == jax.tree.map(
            lambda a: (a.dtype, a.weak_type), plain
        )
        assert float(guarded[1]) == float(plain[1]) == 3.0


def test_cast_still_casts_drift_that_no_promotion_explains():
    def widen(x):  # a strong float16 carry made float32: cast back, as for jax.lax
        return x * jnp.float32(2)

    for kind in KINDS:
        with dg.guard_loops(mode="cast"):
            out = eqxi.while_loop(lambda x: x < 10, widen, jnp.float16(1), kind=kind, max_steps=8)
        assert out.dtype == jnp.float16 and float(out) == 16.0


def test_the_jaxpr_is_unchanged_when_nothing_needs_promoting():
    def run(x):
        return eqxi.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] * 2), x, kind="lax")

    init = (0, jnp.float32(1))  # a weak Python int that stays a weak int
    outside = str(jax.make_jaxpr(run)(init))
    for mode in ("check", "cast"):
        with dg.guard_loops(mode=mode):
            assert str(jax.make_jaxpr(run)(init)) == outside


LATE_IMPORT = """
import sys
import jax.numpy as jnp
import jax_dtypeguard as dg

assert "equinox" not in sys.modules
with dg.guard_loops():
    import optimistix as optx  # Equinox is imported inside the scope

    solver = optx.BestSoFarMinimiser(optx.BFGS(rtol=1e-3, atol=1e-3))
    try:
        optx.minimise(lambda y, a: jnp.sum(y**2), solver, jnp.zeros(3, jnp.float16), max_steps=4)
    except dg.StateDtypeError as error:
        print(error.mismatches[0].path)
print(any(type(finder).__name__ == "_EquinoxImport" for finder in sys.meta_path))
"""


def test_equinox_imported_inside_the_scope_is_reached_from_its_first_loop():
    done = subprocess.run([sys.executable, "-c", LATE_IMPORT], capture_output=True, text=True)
    assert done.stdout.split() == ["carry[2].best_loss", "False"], done.stderr


# --- the solvers --------------------------------------------------------------------


def squares(y, args):
    return jnp.sum((y - 1.0) ** 2)


def best_so_far_bfgs():
    solver = optx.BestSoFarMinimiser(optx.BFGS(rtol=1e-3, atol=1e-3))
    return optx.minimise(squares, solver, jnp.zeros(3, jnp.float16), max_steps=20, throw=False)


def test_best_so_far_bfgs_in_float16_names_the_leaf_the_library_line_and_the_call():
    with pytest.raises(ValueError, match=EQUINOX_REJECTS):
        best_so_far_bfgs()
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        best_so_far_bfgs()
    message = str(caught.value)
    assert message.startswith("_iterate.<locals>.body_fun (optimistix/_iterate.py:")
    assert "  carry[2].best_loss: weak float32[] -> float16[]  (first at " in message
    assert "optimistix/_solver/best_so_far.py:" in message  # where it became float16
    assert "In equinox.internal.while_loop, reached from tests/test_equinox_loops.py:" in message
    assert "in best_so_far_bfgs." in message


def test_best_so_far_bfgs_in_float16_runs_in_float16_in_cast_mode():
    with dg.guard_loops(mode="cast"):
        solution = best_so_far_bfgs()
    assert solution.value.dtype == solution.state.best_loss.dtype == jnp.float16
    assert solution.result == optx.RESULTS.successful
    np.testing.assert_allclose(np.asarray(solution.value, np.float32), 1.0, atol=1e-2)


def nelder_mead():
    solver = optx.NelderMead(rtol=1e-3, atol=1e-3)
    y0 = jnp.asarray([0.5, 1.0, 1.5], jnp.float16)
    return optx.minimise(squares, solver, y0, max_steps=200, throw=False)


def test_nelder_mead_in_float16_is_reported_and_runs_in_float16_in_cast_mode():
    with pytest.raises(TypeError, match="cond branches must have equal output types"):
        nelder_mead()
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        nelder_mead()
    message = str(caught.value)
    assert "optimistix/_solver/nelder_mead.py:" in message.splitlines()[0]
    assert "In jax.lax.cond, reached from tests/test_equinox_loops.py:" in message
    with dg.guard_loops(mode="cast"):
        solution = nelder_mead()
    state = solution.state
    leaves = [state.best[0], state.worst[0], state.second_worst_val, solution.value]
    assert [leaf.dtype for leaf in leaves] == [jnp.float16] * 4
    np.testing.assert_allclose(np.asarray(solution.value, np.float32), 1.0, atol=0.05)


# --- every solver, through its driver, in every dtype -----------------------------------------


def _quadratic(y, args):
    return 0.5 * jnp.sum(jnp.square(y - 1.0)) + 0.1 * jnp.sum(y**4)


def _cubic(y, args):
    return y**3 + y - 1.0


def _residuals(y, args):
    return jnp.arange(1.0, 13.0, dtype=y.dtype).reshape(4, 3) / 10 @ y - jnp.ones(4, y.dtype)


def _contraction(y, args):
    return 0.5 * jnp.cos(y)


TOL = {"rtol": 1e-3, "atol": 1e-3}
BRACKET = {"lower": 0.0, "upper": 1.0}
MINIMISE, ROOT, LEAST, FIXED = (
    (optx.minimise, _quadratic),
    (optx.root_find, _cubic),
    (optx.least_squares, _residuals),
    (optx.fixed_point, _contraction),
)
SOLVERS = {
    "BFGS": (MINIMISE, optx.BFGS(**TOL)),
    "DFP": (MINIMISE, optx.DFP(**TOL)),
    "LBFGS": (MINIMISE, optx.LBFGS(**TOL)),
    "NonlinearCG": (MINIMISE, optx.NonlinearCG(**TOL)),
    "GradientDescent": (MINIMISE, optx.GradientDescent(learning_rate=0.1, **TOL)),
    "NelderMead": (MINIMISE, optx.NelderMead(**TOL)),
    "GoldenSearch": (MINIMISE, optx.GoldenSearch(**TOL)),
    "OptaxMinimiser(adam)": (MINIMISE, optx.OptaxMinimiser(optax.adam(1e-2), **TOL)),
    "BestSoFarMinimiser(BFGS)": (MINIMISE, optx.BestSoFarMinimiser(optx.BFGS(**TOL))),
    "Newton": (ROOT, optx.Newton(**TOL)),
    "Chord": (ROOT, optx.Chord(**TOL)),
    "Bisection": (ROOT, optx.Bisection(**TOL)),
    "BestSoFarRootFinder(Newton)": (ROOT, optx.BestSoFarRootFinder(optx.Newton(**TOL))),
    "GaussNewton": (LEAST, optx.GaussNewton(**TOL)),
    "LevenbergMarquardt": (LEAST, optx.LevenbergMarquardt(**TOL)),
    "IndirectLevenbergMarquardt": (LEAST, optx.IndirectLevenbergMarquardt(**TOL)),
    "Dogleg": (LEAST, optx.Dogleg(**TOL)),
    "BestSoFarLeastSquares(LM)": (
        LEAST,
        optx.BestSoFarLeastSquares(optx.LevenbergMarquardt(**TOL)),
    ),
    "FixedPointIteration": (FIXED, optx.FixedPointIteration(**TOL)),
    "BestSoFarFixedPoint(FPI)": (
        FIXED,
        optx.BestSoFarFixedPoint(optx.FixedPointIteration(**TOL)),
    ),
    # Drivers that take a solver of another kind.
    "least_squares(BFGS)": (LEAST, optx.BFGS(**TOL)),
    "root_find(LevenbergMarquardt)": (ROOT, optx.LevenbergMarquardt(**TOL)),
    "fixed_point(Newton)": (FIXED, optx.Newton(**TOL)),
}
SCALAR = {"GoldenSearch", "Bisection"}  # a scalar y in [0, 1]
CONFIGS = [("float16", False), ("bfloat16", False), ("float32", True), ("float64", True)]
CONFIG_IDS = ["float16", "bfloat16", "float32+x64", "float64"]
# float16 and float32+x64 fail where the others do; bfloat16 and float64 add the rest.
MATRIX = [
    pytest.param(
        *config, id=name, marks=[pytest.mark.slow] if name in ("bfloat16", "float64") else []
    )
    for config, name in zip(CONFIGS, CONFIG_IDS)
]
# What JAX or Equinox says when a loop or branch rejects a type (the hook's business).
LOOP_REJECTIONS = (
    EQUINOX_REJECTS,
    "carry input and carry output must have equal types",
    "cond branches must have equal output types",
    "branches must have equal output types",
)


def _solve(name, dtype, adjoint=None):
    (driver, fn), solver = SOLVERS[name]
    y0 = jnp.asarray(0.25 if name in SCALAR else [0.5, 1.0, 1.5], dtype)
    options = BRACKET if name in SCALAR else None
    extra = {} if adjoint is None else {"adjoint": adjoint}

    def run(y0):
        solution = driver(fn, solver, y0, options=options, max_steps=16, throw=False, **extra)
        return solution.value

    return lambda: jax.eval_shape(run, y0)


def _outcome(run):
    try:
        return run(), None
    except Exception as error:  # what the libraries or the guard raise is the outcome
        return None, error


def _is_loop_rejection(error):
    return not isinstance(error, dg.StateDtypeError) and any(
        text in str(error) for text in LOOP_REJECTIONS
    )


def _check_the_matrix_cell(name, dtype, adjoint=None):
    run = _solve(name, dtype, adjoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # optax's float16 scatter
        plain, plain_error = _outcome(run)
        with dg.guard_loops(mode="check"):
            checked, check_error = _outcome(run)
        with dg.guard_loops(mode="cast"):
            cast, cast_error = _outcome(run)
    if plain_error is None:  # the libraries accept it: no false alarm, the same result
        assert check_error is None and cast_error is None, check_error or cast_error
        assert checked == cast == plain
        return
    if _is_loop_rejection(plain_error):  # a loop or branch rejects it: named, then repaired
        assert isinstance(check_error, dg.StateDtypeError), check_error
        assert " reached from tests/test_equinox_loops.py:" in str(check_error)
        if cast_error is None:
            assert cast.dtype == jnp.dtype(dtype)
        else:  # what no loop guard reaches (a check of Lineax's outside any loop)
            assert not _is_loop_rejection(cast_error), cast_error
        return
    # Rejected outside any loop: the guard has nothing to say and changes nothing.
    assert type(check_error) is type(cast_error) is type(plain_error)
    assert str(check_error) == str(plain_error)


@pytest.mark.parametrize("dtype,x64", MATRIX)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_through_its_driver(name, dtype, x64):
    with x64_for("float32+x64" if x64 else "float32"):
        _check_the_matrix_cell(name, dtype)


CHECKPOINTED = ["BestSoFarMinimiser(BFGS)", "NelderMead", "FixedPointIteration", "Newton"]


@pytest.mark.parametrize("dtype,x64", CONFIGS[:1] + CONFIGS[2:3], ids=["float16", "float32+x64"])
@pytest.mark.parametrize("name", CHECKPOINTED)
def test_solvers_under_the_checkpointed_adjoint(name, dtype, x64):
    # RecursiveCheckpointAdjoint runs Optimistix's loop as kind="checkpointed".
    with x64_for("float32+x64" if x64 else "float32"):
        _check_the_matrix_cell(name, dtype, optx.RecursiveCheckpointAdjoint())


# --- the repaired solves, run -------------------------------------------------------------

# Repaired solves that XLA's CPU backend can run in float16 (Newton's and Dogleg's linear
# solves cannot: "Unsupported dtype float16").
REPAIRED = ["BestSoFarMinimiser(BFGS)", "FixedPointIteration", "BestSoFarFixedPoint(FPI)"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype,x64", CONFIGS[:3], ids=CONFIG_IDS[:3])
@pytest.mark.parametrize("name", REPAIRED)
def test_repaired_solves_run_in_their_dtype_and_agree_with_float64(name, dtype, x64):
    (driver, fn), solver = SOLVERS[name]
    y0 = [0.5, 1.0, 1.5]

    def solve(y0):
        return driver(fn, solver, y0, max_steps=256, throw=False).value

    with x64_for("float64"):
        reference = np.asarray(jax.jit(solve)(jnp.asarray(y0, jnp.float64)))
    with x64_for("float32+x64" if x64 else "float32"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with dg.guard_loops(mode="cast"):
            value = jax.jit(solve)(jnp.asarray(y0, dtype))
        assert value.dtype == jnp.dtype(dtype)
    tolerance = 1e-2 if dtype == "float32" else 0.1
    np.testing.assert_allclose(np.asarray(value, np.float64), reference, atol=tolerance)
