"""The seed cases, end to end with the real Optax and Optimistix."""

import jax
import jax.numpy as jnp
import pytest
from conftest import compiles

import jax_dtypeguard as dg
from jax_dtypeguard._compat import get_aval
from jax_dtypeguard.testing import x64_for

optax = pytest.importorskip("optax")

from jax_dtypeguard.optax import invariant  # noqa: E402


def types(tree):
    return jax.tree.map(get_aval, tree)


def drifting_paths(before, after):
    entries = jax.tree_util.tree_flatten_with_path(before)[0]
    return [
        "opt_state" + jax.tree_util.keystr(path)
        for (path, a), b in zip(entries, jax.tree.leaves(after))
        if get_aval(a) != get_aval(b)
    ]


# --- 1. L-BFGS, float16/bfloat16 params, float64 value, inside lax.while_loop ---------------

TARGET = jnp.array([1.0, -2.0, 0.5])


def float64_loss(params):
    return jnp.sum((params.astype(jnp.float64) - TARGET) ** 2)  # a float64 value


def lbfgs_in_while_loop(tx, dtype, steps=6):
    params = jnp.zeros(3, dtype)
    state = tx.init(params)

    def body(carry):
        i, params, state = carry
        value, grad = jax.value_and_grad(float64_loss)(params)
        updates, state = tx.update(
            grad, state, params, value=value, grad=grad, value_fn=float64_loss
        )
        return i + 1, optax.apply_updates(params, updates), state

    steps_run, params, final = jax.lax.while_loop(lambda c: c[0] < steps, body, (0, params, state))
    return state, int(steps_run), params, final


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_invariant_lbfgs_keeps_its_state_types_inside_while_loop(dtype):
    with x64_for("float64"):
        init, steps, params, final = lbfgs_in_while_loop(invariant(optax.lbfgs()), dtype)
        assert float64_loss(params) < 1e-2
    assert steps == 6
    assert params.dtype == dtype
    assert types(final) == types(init)
    assert final[0].diff_params_memory.dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_unwrapped_lbfgs_drifts_inside_while_loop(dtype):
    with x64_for("float64"):
        init, _, _, final = lbfgs_in_while_loop(optax.lbfgs(), dtype)
    drift = drifting_paths(init, final)
    if not drift:
        pytest.skip(f"optax {optax.__version__}'s L-BFGS keeps its state types")
    # Whatever the Optax release, what drifts inside while_loop is weak -> strong (the
    # only change JAX lets a carry make), and only in the line search's `info`.
    entries = jax.tree_util.tree_flatten_with_path(init)[0]
    for (path, before), after in zip(entries, jax.tree.leaves(final)):
        if "opt_state" + jax.tree_util.keystr(path) in drift:
            assert get_aval(before).weak_type and not get_aval(after).weak_type, path
            assert get_aval(before).dtype == get_aval(after).dtype, path
    assert all(".info." in path for path in drift), drift


def test_invariant_lbfgs_check_mode_names_the_drifting_paths():
    with x64_for("float64"):
        init, _, _, final = lbfgs_in_while_loop(optax.lbfgs(), jnp.float16)
        drift = drifting_paths(init, final)
        with pytest.raises(dg.StateDtypeError) as promoted:
            lbfgs_in_while_loop(invariant(optax.lbfgs(), mode="check"), jnp.float16)
        with pytest.raises(dg.StateDtypeError) as drifted:
            tx = invariant(optax.lbfgs(), mode="check", updates="cast")
            lbfgs_in_while_loop(tx, jnp.float16)
    # The line search first calls value_fn at params promoted by its float64 step size.
    assert [m.path for m in promoted.value.mismatches] == ["value_fn(params)"]
    assert "value_fn(params): float64[3] but params is float16[3]" in str(promoted.value)
    # With value_fn's params cast, the state drift: exactly the unwrapped optimizer's.
    assert drift
    assert [m.path for m in drifted.value.mismatches] == drift
    assert {m.kind for m in drifted.value.mismatches} == {"weak_type"}
    assert "changed the type of its state 'opt_state'" in str(drifted.value)


# --- 2. A jitted update compiles once ---------------------------------------------------------


def quadratic(params):
    return jnp.sum((params - 3.0) ** 2)


def jitted_updates(tx, count=4):
    params = jnp.zeros(3, jnp.float32)
    state = tx.init(params)
    update = jax.jit(tx.update, static_argnames="value_fn")
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(count):
            value, grad = jax.value_and_grad(quadratic)(params)
            updates, state = update(grad, state, params, value=value, grad=grad, value_fn=quadratic)
            params = optax.apply_updates(params, updates)
    return compiles(report, update), params


def test_jitted_invariant_lbfgs_update_compiles_once():
    count, params = jitted_updates(invariant(optax.lbfgs()))
    assert count == 1
    assert float(quadratic(params)) < 1e-6


def test_jitted_unwrapped_lbfgs_update_compiles_twice():
    count, _ = jitted_updates(optax.lbfgs())
    if count == 1:
        pytest.skip(f"optax {optax.__version__}'s L-BFGS compiles once")
    assert count == 2


# --- 3. Optimistix's OptaxMinimiser -------------------------------------------------------------


def quadratic_fn(y, args):
    return jnp.sum((y - jnp.array([2.0, -1.0])) ** 2)


def rosenbrock(y, args):
    return (1 - y[0]) ** 2 + 100 * (y[1] - y[0] ** 2) ** 2


def backtracking_sgd():
    return optax.chain(
        optax.sgd(1.0), optax.scale_by_backtracking_linesearch(max_backtracking_steps=20)
    )


def minimise(tx, fn, max_steps=10_000):
    optx = pytest.importorskip("optimistix")
    solver = optx.OptaxMinimiser(tx, rtol=1e-7, atol=1e-7)
    return optx.minimise(fn, solver, jnp.array([-1.0, 1.0]), max_steps=max_steps)


@pytest.mark.parametrize(
    ("fn", "minimum", "tolerance"),
    [(quadratic_fn, [2.0, -1.0], 1e-5), (rosenbrock, [1.0, 1.0], 1e-3)],
    ids=["quadratic", "rosenbrock"],
)
@pytest.mark.parametrize("make", [backtracking_sgd, optax.lbfgs], ids=["backtracking", "lbfgs"])
def test_optimistix_minimises_with_invariant_optimizers(make, fn, minimum, tolerance):
    solution = minimise(invariant(make()), fn)
    assert solution.value.dtype == jnp.float32
    assert jnp.allclose(solution.value, jnp.array(minimum), atol=tolerance)
    assert int(solution.stats["num_steps"]) < 10_000


def test_optimistix_runs_the_guard():
    # The first update sees init's weak `info` fields; strict mode makes the cast a failure.
    with dg.strict(), pytest.raises(dg.StateDtypeError, match=r"info\.decrease_error"):
        minimise(invariant(optax.lbfgs()), quadratic_fn)


def test_unwrapped_backtracking_under_optimistix():
    # Optax 0.2.8's `init` gives `num_linesearch_steps` as an array, so Optimistix's static
    # state check passes; older Optax (an int `0` in `init`) failed here.
    solution = minimise(backtracking_sgd(), quadratic_fn)
    assert jnp.allclose(solution.value, jnp.array([2.0, -1.0]), atol=1e-5)
