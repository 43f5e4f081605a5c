"""guard_loops: the loops and branches of code you did not write, guarded in a scope."""

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SCALAR_F16
from jax.lax import fori_loop as bound_before_the_scope

import jax_dtypeguard as dg
from jax_dtypeguard.testing import x64_for

pytestmark = pytest.mark.usefixtures("outside_loop_scopes")


def widen(i, x):
    return x + jnp.float32(1)  # float16 + float32 -> float32


# --- what is reported, and where ----------------------------------------------------------


def test_check_names_the_body_the_leaf_the_origin_and_the_call_site():
    with pytest.raises(TypeError):
        jax.lax.fori_loop(0, 3, widen, SCALAR_F16)  # JAX's own error, outside the scope
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
    message = str(caught.value)
    assert message.startswith("widen (tests/test_guard_loops.py:")
    assert "  x: float16[] -> float32[]  (first at " in message
    assert f"test_guard_loops.py:{widen.__code__.co_firstlineno + 1} in widen" in message
    assert "In jax.lax.fori_loop, reached from tests/test_guard_loops.py:" in message
    assert "in test_check_names_the_body_the_leaf_the_origin_and_the_call_site." in message
    assert caught.value.function == "widen"
    assert [m.kind for m in caught.value.mismatches] == ["dtype"]


def test_cast_repairs_and_warn_warns_then_leaves_it_to_jax():
    with dg.guard_loops(mode="cast"):
        x = jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
    assert x.dtype == jnp.float16 and float(x) == 3.0
    warned = pytest.warns(dg.StateDtypeWarning, match="widen")
    with dg.guard_loops(mode="warn"), warned as record, pytest.raises(TypeError, match="carry"):
        jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
    assert record[0].filename == __file__, "the warning points at the user's code"


@pytest.mark.parametrize(
    "run",
    [
        lambda: jax.lax.while_loop(lambda x: x < 3, lambda x: widen(0, x), SCALAR_F16),
        lambda: jax.lax.scan(lambda x, _: (widen(0, x), None), SCALAR_F16, length=3)[0],
    ],
    ids=["while_loop", "scan"],
)
def test_every_loop_form_is_reached(run):
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError, match="float16"):
        run()
    with dg.guard_loops(mode="cast"):
        assert run().dtype == jnp.float16


def halve(x):
    return x * jnp.float32(0.5)


def keep(x):
    return x


def test_branches_are_compared_with_each_other():
    x = jnp.ones(2, jnp.bfloat16)
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        jax.lax.cond(True, halve, keep, x)
    assert "true_fun halve (tests/test_guard_loops.py:" in str(caught.value)
    assert "returns other types than false_fun keep" in str(caught.value)
    assert "x: bfloat16[2] -> float32[2]" in str(caught.value)
    with dg.guard_loops(mode="cast"):
        assert jax.lax.cond(True, halve, keep, x).dtype == jnp.bfloat16
        assert jax.lax.switch(0, [halve, keep, halve], x).dtype == jnp.bfloat16


def test_branches_returning_other_types_than_their_operands_are_fine_when_they_agree():
    x = jnp.ones(2, jnp.float16)
    with dg.guard_loops():
        y = jax.lax.cond(True, lambda x: x.sum(dtype=jnp.float32), lambda x: jnp.float32(0), x)
    assert y.dtype == jnp.float32


def test_branches_that_keep_no_operand_type_are_cast_to_the_narrowest():
    x = jnp.ones(2, jnp.float16)

    def bf16(x):
        return x.sum().astype(jnp.bfloat16)

    def f32(x):
        return x.sum().astype(jnp.float32)

    with dg.guard_loops(), pytest.raises(dg.StateDtypeError, match="narrowest"):
        jax.lax.cond(True, bf16, f32, x)
    with dg.guard_loops(mode="cast"):
        assert jax.lax.cond(False, bf16, f32, x).dtype == jnp.bfloat16


# --- what is not drift by default ---------------------------------------------------------


def test_what_jax_accepts_is_not_drift_by_default():
    def flag_body(carry):
        i, _ = carry
        return i + 1, False  # a Python bool for a bool[] carry, as Diffrax's step returns

    with dg.guard_loops(mode="check"):
        _, flag = jax.lax.while_loop(lambda c: c[0] < 3, flag_body, (0, jnp.array(True)))
        assert flag.dtype == jnp.bool_
        # A weak initial carry that the body makes float16: JAX promotes the loop.
        assert jax.lax.while_loop(lambda x: x < 3, lambda x: x * jnp.float16(2), 1.0).dtype == (
            jnp.float16
        )


def test_weak_type_true_reports_weak_to_strong_and_python_scalars():
    with dg.guard_loops(weak_type=True), pytest.raises(dg.StateDtypeError) as caught:
        jax.lax.while_loop(lambda x: x < 3, lambda x: x * jnp.float32(2), 1.0)
    assert "x: weak float32[] -> float32[]" in str(caught.value)

    def halve(x):
        return 0.5  # a Python float: a weak float32 where the carry is a strong one

    with dg.guard_loops(weak_type=True), pytest.raises(dg.StateDtypeError) as caught:
        jax.lax.while_loop(lambda x: x > 1, halve, jnp.float32(2))
    assert "x: float32[] -> weak float32[] (Python float)" in str(caught.value)
    assert "return arrays of the carry's types" in str(caught.value)
    with dg.guard_loops(mode="cast", weak_type=True):
        out = jax.lax.while_loop(lambda x: x > 1, halve, jnp.float32(2))
        assert out.dtype == jnp.float32 and not out.weak_type

    def flag_body(flag):
        return False  # the bool[] the loop makes of it: the carry's own type

    with dg.guard_loops(weak_type=True):
        assert jax.lax.while_loop(lambda f: f, flag_body, jnp.array(True)).dtype == jnp.bool_


# --- scope and safety ---------------------------------------------------------------------


def test_scope_restores_jax_lax_on_exit_and_on_exceptions():
    originals = {n: getattr(jax.lax, n) for n in ("while_loop", "fori_loop", "scan", "cond")}
    with pytest.raises(dg.StateDtypeError), dg.guard_loops():
        assert jax.lax.while_loop is not originals["while_loop"]
        jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
    assert {n: getattr(jax.lax, n) for n in originals} == originals


def test_scopes_nest_and_off_turns_them_off():
    with dg.guard_loops(mode="cast"):
        with dg.guard_loops(mode="check"), pytest.raises(dg.StateDtypeError):
            jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
        with dg.guard_loops(mode="off"), pytest.raises(TypeError) as caught:
            jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
        assert not isinstance(caught.value, dg.StateDtypeError)
        assert jax.lax.fori_loop(0, 3, widen, SCALAR_F16).dtype == jnp.float16


def test_other_threads_and_tasks_are_unaffected():
    seen = []

    def outside():
        try:
            jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
        except Exception as error:
            seen.append(type(error).__name__)

    async def task():
        outside()

    with dg.guard_loops(mode="cast"):
        thread = threading.Thread(target=outside)
        thread.start()
        thread.join()
    with dg.guard_loops(mode="cast"):
        assert jax.lax.fori_loop(0, 3, widen, SCALAR_F16).dtype == jnp.float16
        # A task started in a fresh context sees no scope.
        import contextvars

        contextvars.Context().run(asyncio.run, task())
    assert seen == ["TypeError", "TypeError"]


def test_decorator_form():
    @dg.guard_loops(mode="cast")
    def run():
        return jax.lax.fori_loop(0, 3, widen, SCALAR_F16)

    assert run().dtype == jnp.float16
    assert repr(dg.guard_loops()) == "guard_loops(mode='check', weak_type=False)"
    with pytest.raises(ValueError, match="mode must be one of"):
        dg.guard_loops(mode="loud")


def test_each_loop_is_guarded_once():
    # A dg.lax form keeps its own guard: its check, not the scope's cast.
    with dg.guard_loops(mode="cast"), pytest.raises(dg.StateDtypeError) as caught:
        dg.lax.fori_loop(0, 3, widen, SCALAR_F16, mode="check")
    assert "In jax.lax" not in str(caught.value)
    guarded = dg.state_dtype_invariant(widen, state=1, mode="check")
    with dg.guard_loops(mode="cast"), pytest.raises(dg.StateDtypeError) as caught:
        jax.lax.fori_loop(0, 3, guarded, SCALAR_F16)
    assert "In jax.lax" not in str(caught.value)


def test_a_function_bound_before_the_scope_is_not_reached():
    with dg.guard_loops(), pytest.raises(TypeError) as caught:
        bound_before_the_scope(0, 3, widen, SCALAR_F16)
    assert not isinstance(caught.value, dg.StateDtypeError)


def test_strict_mode_turns_cast_into_check():
    with dg.strict(), dg.guard_loops(mode="cast"), pytest.raises(dg.StateDtypeError) as caught:
        jax.lax.fori_loop(0, 3, widen, SCALAR_F16)
    assert "strict mode is on" in str(caught.value)


# --- cost: nothing drifting, nothing changes ----------------------------------------------


def program(x):
    def body(carry):
        i, y = carry
        y = jax.lax.cond(i % 2 == 0, lambda y: y * 2, lambda y: y + 1, y)
        y = jax.lax.switch(i % 3, [lambda y: y, jnp.sin, jnp.cos], y)
        return i + 1, y

    _, y = jax.lax.while_loop(lambda c: c[0] < 5, body, (0, x))
    y = jax.lax.fori_loop(0, 3, lambda i, y: y * i, y)
    total, ys = jax.lax.scan(lambda c, v: (c + v, c), jnp.zeros((), x.dtype), y)
    return total, ys


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("mode", ["check", "cast"])
def test_the_jaxpr_is_identical_inside_and_outside_the_scope(dtype, mode, x64):
    x = jnp.ones(3, dtype)
    outside = str(jax.make_jaxpr(program)(x))
    with dg.guard_loops(mode=mode):
        inside = str(jax.make_jaxpr(program)(x))
    assert inside == outside


# --- Equinox's internal while loop --------------------------------------------------------


def test_equinox_internal_while_loop_is_reached():
    eqxi = pytest.importorskip("equinox.internal")

    def body(x):
        return x * jnp.float32(2)

    run = lambda: eqxi.while_loop(lambda x: x < 10, body, jnp.float16(1), kind="lax")  # noqa: E731
    with pytest.raises(ValueError, match="same input and output structure"):
        run()
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        run()
    assert "body (tests/test_guard_loops.py:" in str(caught.value)
    assert "In equinox.internal.while_loop, reached from" in str(caught.value)
    for kind in ("lax", "checkpointed", "bounded"):
        with dg.guard_loops(mode="cast"):
            out = eqxi.while_loop(lambda x: x < 10, body, jnp.float16(1), kind=kind, max_steps=8)
        assert out.dtype == jnp.float16 and float(out) == 16.0


# --- real libraries -----------------------------------------------------------------------

CONFIGS = [("float16", False), ("bfloat16", False), ("float32", False), ("float32", True)]
CONFIGS += [("float64", True)]


def _lbfgs_loop(loss, params, steps):
    """`optax.lbfgs` with `value_and_grad_from_state`, `steps` updates in a `jax.lax.while_loop`."""
    optax = pytest.importorskip("optax")
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def body(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def cond(carry):
        return optax.tree_utils.tree_get(carry[1], "count") < steps

    return jax.lax.while_loop(cond, body, (params, opt.init(params)))


def _lbfgs(dtype):
    def loss(p):
        return jnp.sum((p - 1.0) ** 2 * jnp.arange(1, 4, dtype=p.dtype))

    return _lbfgs_loop(loss, jnp.zeros(3, dtype), 8)


def _bfgs(dtype):
    optx = pytest.importorskip("optimistix")
    solver = optx.BFGS(rtol=1e-4, atol=1e-4)
    fn = lambda y, args: jnp.sum((y - 1.0) ** 2 * jnp.arange(1, 4, dtype=y.dtype))  # noqa: E731
    return optx.minimise(fn, solver, jnp.zeros(3, dtype), max_steps=64, throw=False)


def _tsit5(dtype):
    diffrax = pytest.importorskip("diffrax")
    term = diffrax.ODETerm(lambda t, y, args: -y * t)
    return diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        0.0,
        1.0,
        0.1,
        jnp.ones(3, dtype),
        stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-4),
    )


def _bits(tree):
    return [np.asarray(leaf).tobytes() for leaf in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype,x64", CONFIGS, ids=[f"{d}-x64{x}" for d, x in CONFIGS])
@pytest.mark.parametrize("solve", [_lbfgs, _bfgs, _tsit5], ids=["lbfgs", "bfgs", "tsit5"])
def test_stable_programs_give_the_same_bits_with_and_without_the_hook(solve, dtype, x64):
    with x64_for(dtype + ("+x64" if x64 else "")), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # optax's float16 scatter (issue 17.4)
        plain = _bits(jax.jit(solve, static_argnums=0)(dtype))
        for mode in ("check", "cast"):
            jax.clear_caches()
            with dg.guard_loops(mode=mode):
                guarded = _bits(jax.jit(solve, static_argnums=0)(dtype))
            assert guarded == plain, mode


def test_optax_value_and_grad_from_state_under_x64_names_optax_and_cast_runs():
    pytest.importorskip("optax")

    def loss(p):  # a float64 loss of bfloat16 params, under x64
        return jnp.sum((p.astype(jnp.float64) - 1.0) ** 2)

    def run():
        return _lbfgs_loop(loss, jnp.zeros(3, jnp.bfloat16), 10)[0]

    with x64_for("float64"):
        with pytest.raises(TypeError, match="branches must have equal output types"):
            run()
        with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
            run()
        assert "optax/_src/linesearch.py:" in str(caught.value)
        assert "output[0]: bfloat16[] -> float64[]" in str(caught.value)
        with dg.guard_loops(mode="cast"):
            params = run()
    assert params.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(params, np.float32), 1.0, atol=1e-2)


def test_optimistix_lbfgs_float16_names_its_own_scan_body_and_the_lineax_line():
    optx = pytest.importorskip("optimistix")

    def run():
        solver = optx.LBFGS(rtol=1e-3, atol=1e-3)
        return optx.minimise(
            lambda y, _: jnp.sum((y - 1.0) ** 2), solver, jnp.zeros(3, jnp.float16)
        )

    with pytest.raises(TypeError, match="descent_direction has type float16"):
        run()  # JAX's own error: the scan inside Optimistix, not where the float32 began
    with dg.guard_loops(), pytest.raises(dg.StateDtypeError) as caught:
        run()
    message = str(caught.value)
    assert "backward_iter (optimistix/_solver/limited_memory_bfgs.py:" in message
    assert "descent_direction: float16[3] -> float32[3]" in message
    assert "(first at dot_general, lineax/_norm.py:" in message
    assert "In jax.lax.scan, reached from " in message and "test_guard_loops.py:" in message


# --- the environment variable, for a whole program ----------------------------------------

PROGRAM = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    import jax_dtypeguard as dg

    x = jax.lax.fori_loop(0, 3, lambda i, x: x + jnp.float32(1), jnp.float16(0))
    print("dtype", x.dtype)
    """
)


def _run(source, **env):
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, env=environment
    )


def test_environment_variable_guards_a_program():
    assert "dtype float16" in _run(PROGRAM, JAX_DTYPEGUARD_LOOPS="cast").stdout
    checked = _run(PROGRAM, JAX_DTYPEGUARD_LOOPS="check")
    assert checked.returncode == 1 and "StateDtypeError" in checked.stderr
    assert "In jax.lax.fori_loop, reached from <string>:5 in <module>" in checked.stderr
    bad = _run(PROGRAM, JAX_DTYPEGUARD_LOOPS="loud")
    assert bad.returncode == 1
    assert "JAX_DTYPEGUARD_LOOPS='loud' is not a guard_loops mode" in bad.stderr
