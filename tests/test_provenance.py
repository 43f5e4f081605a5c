"""Provenance: each dtype/weak_type mismatch says where the drift was introduced."""

import os
import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, StateDtypeWarning, state_dtype_invariant
from jax_dtypeguard._compat import source_frames
from jax_dtypeguard._errors import short_path
from jax_dtypeguard.testing import x64_for

# Check-mode behaviour: .ci/run runs this module again under --dtypeguard-strict.
pytestmark = pytest.mark.check_mode

HERE = short_path(__file__)
with open(__file__) as _source:
    _LINES = _source.read().splitlines()


def line_of(marker):
    """The line of this file that carries `# <marker>` (exactly one)."""
    found = [n for n, text in enumerate(_LINES, 1) if text.endswith(f"# {marker}")]
    assert len(found) == 1, marker
    return found[0]


def origins(fn, *args, **kwargs):
    with pytest.raises(StateDtypeError) as info:
        fn(*args, **kwargs)
    return info.value, [m.origin for m in info.value.mismatches]


# A float64 argument promoting a float16 state -------------------------------------------------


@state_dtype_invariant
def step_value(state, value):
    return state + value  # value promotes


@pytest.mark.parametrize("transform", ["eager", "jit", "vmap"])
def test_argument_promotes_state(transform):
    call = {
        "eager": step_value,
        "jit": jax.jit(step_value),
        "vmap": jax.vmap(step_value, in_axes=(0, None)),
    }[transform]
    state = jnp.ones((2, 3) if transform == "vmap" else 3, jnp.float16)
    with x64_for("float64"):
        error, (origin,) = origins(call, state, jnp.float64(2))
    assert origin == dg.Origin("add", HERE, line_of("value promotes"), "step_value", "value")
    expected = (
        f"  state: float16[3] -> float64[3]  "
        f"(first at add, {HERE}:{line_of('value promotes')} in step_value, from argument 'value')"
    )
    assert expected in str(error).splitlines()


@state_dtype_invariant
def step_astype(state):
    return state.astype(jnp.float32)  # line format


def test_message_line_without_argument():
    error, _ = origins(step_astype, jnp.ones(3, jnp.float16))
    line = f"{HERE}:{line_of('line format')}"
    expected = (
        f"  state: float16[3] -> float32[3]  (first at convert_element_type, {line} in step_astype)"
    )
    assert expected in str(error).splitlines()


@pytest.mark.dtypeguard_strict(False)  # about cast/warn mode, which strict mode turns to check
def test_warn_mode_reports_origin():
    @state_dtype_invariant(mode="warn")
    def step(state, grad):
        return state * grad  # warned

    with pytest.warns(StateDtypeWarning) as record:
        out = step(jnp.ones(3, jnp.bfloat16), jnp.ones(3, jnp.float32))
    assert out.dtype == jnp.float32
    (warning,) = record
    assert f"(first at mul, {HERE}:{line_of('warned')} in " in str(warning.message)
    assert "from argument 'grad')" in str(warning.message)


# A Python-float constant making a weak leaf strong -------------------------------------------


def test_constant_makes_weak_leaf_strong():
    @state_dtype_invariant
    def step(state):
        return {"scale": state["scale"] * jnp.float32(0.5)}  # strong constant

    state = {"scale": jnp.asarray(1.0)}
    assert state["scale"].weak_type
    error, (origin,) = origins(step, state)
    assert [m.kind for m in error.mismatches] == ["weak_type"]
    assert (origin.primitive, origin.file, origin.line) == ("mul", HERE, line_of("strong constant"))
    assert origin.argument is None


# An explicit astype --------------------------------------------------------------------------


class Moments(NamedTuple):
    mu: jax.Array
    nu: jax.Array


def test_explicit_astype_and_each_leaf_its_own_origin():
    @state_dtype_invariant
    def step(state, grad):
        mu = (state.mu * 0.9).astype(jnp.float32)  # explicit astype
        nu = state.nu + grad * grad  # grad squared
        return Moments(mu, nu)

    state = Moments(jnp.ones(3, jnp.float16), jnp.ones(3, jnp.float16))
    error, (mu, nu) = origins(step, state, jnp.ones(3, jnp.float32))
    assert [m.path for m in error.mismatches] == ["state.mu", "state.nu"]
    assert (mu.primitive, mu.line, mu.argument) == (
        "convert_element_type",
        line_of("explicit astype"),
        None,
    )
    assert (nu.primitive, nu.line, nu.argument) == ("add", line_of("grad squared"), "grad")


def test_select_n_merging_a_value():
    @state_dtype_invariant
    def step(state, fallback):
        return jnp.where(state > 0, state, fallback)  # where merges

    _, (origin,) = origins(step, jnp.ones(3, jnp.float16), jnp.zeros(3, jnp.float32))
    assert (origin.primitive, origin.line) == ("select_n", line_of("where merges"))
    assert origin.argument == "fallback"


# Nested jaxprs -------------------------------------------------------------------------------


def test_drift_inside_nested_cond_branch():
    @state_dtype_invariant
    def step(state, grad, flag):
        def inner(s):
            return jax.lax.cond(
                s.sum() > 0,
                lambda t: t + grad,
                lambda t: t * grad,  # inner false branch
                s,
            )

        return jax.lax.cond(flag, inner, inner, state)

    state = jnp.ones(3, jnp.bfloat16)
    _, (origin,) = origins(jax.jit(step), state, jnp.ones(3, jnp.float32), True)
    assert (origin.primitive, origin.file) == ("mul", HERE)
    assert origin.line == line_of("inner false branch")
    assert origin.argument == "grad"


def test_drift_inside_jitted_inner_function():
    @jax.jit
    def descend(s, g):
        return s - 0.1 * g  # inside jit

    @state_dtype_invariant
    def step(state, grad):
        return descend(state, grad)

    _, (origin,) = origins(step, jnp.ones(3, jnp.bfloat16), jnp.ones(3, jnp.float32))
    assert (origin.primitive, origin.line, origin.argument) == (
        "sub",
        line_of("inside jit"),
        "grad",
    )
    assert origin.function.endswith("descend")


def test_drift_inside_custom_jvp():
    @jax.custom_jvp
    def scaled(x):
        return x.astype(jnp.float32) * 2  # custom jvp body

    scaled.defjvp(lambda primals, tangents: (scaled(*primals), tangents[0]))

    @state_dtype_invariant
    def step(state):
        return scaled(state)

    _, (origin,) = origins(step, jnp.ones(3, jnp.float16))
    assert (origin.primitive, origin.line) == ("convert_element_type", line_of("custom jvp body"))


def test_weak_carry_made_strong_inside_loop_body():
    @state_dtype_invariant
    def step(state):
        return jax.lax.fori_loop(0, 3, lambda i, s: s + jnp.float32(1), state)  # loop body

    _, (origin,) = origins(step, jnp.asarray(0.0))
    assert (origin.primitive, origin.line) == ("add", line_of("loop body"))


def test_carry_that_came_in_drifted_points_before_the_loop():
    @state_dtype_invariant
    def step(state):
        start = state.astype(jnp.float32)  # before the loop
        return jax.lax.while_loop(lambda s: s.sum() < 10, lambda s: s * 2, start)

    _, (origin,) = origins(step, jnp.ones(3, jnp.float16))
    assert (origin.primitive, origin.line) == ("convert_element_type", line_of("before the loop"))


def test_dg_lax_cond_operands_under_jit():
    def branch(x, y):
        return x, y.astype(jnp.float32) * 3  # second operand

    @jax.jit
    def run(x, y):
        return dg.lax.cond(True, branch, branch, x, y, mode="check")

    error, (origin,) = origins(run, jnp.ones(2), jnp.ones(2, jnp.bfloat16))
    assert [m.path for m in error.mismatches] == ["operands[1]"]
    assert (origin.primitive, origin.line) == ("convert_element_type", line_of("second operand"))


def test_closure_over_an_outer_tracer():
    @jax.jit
    def run(state, lr):
        @state_dtype_invariant
        def step(s):
            return s - lr  # closed over

        return step(state)

    _, (origin,) = origins(run, jnp.ones(3, jnp.bfloat16), jnp.float32(0.1))
    assert (origin.primitive, origin.line) == ("sub", line_of("closed over"))


def test_eager_python_control_flow_on_an_array_argument():
    @state_dtype_invariant
    def step(state, value):
        if value.sum() > 0:  # concrete only when called eagerly
            return state + value  # eager branch
        return state

    _, (origin,) = origins(step, jnp.ones(3, jnp.float16), jnp.ones(3, jnp.float32))
    assert (origin.primitive, origin.line) == ("add", line_of("eager branch"))


# Real Optax drift ----------------------------------------------------------------------------


def test_optax_adam_mu_points_into_the_moment_update():
    optax = pytest.importorskip("optax")
    tx = optax.adam(1e-3)
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    update = state_dtype_invariant(tx.update, state="state", out=1)
    error, found = origins(update, {"w": jnp.ones(3, jnp.float32)}, tx.init(params), params)
    by_path = dict(zip([m.path for m in error.mismatches], found))
    mu = by_path["state[0].mu['w']"]
    assert mu.primitive == "add"
    assert mu.file.startswith("optax" + os.sep), mu
    assert "update_moment" in mu.function
    assert mu.argument == "updates['w']"
    lines = str(error).splitlines()
    assert any(
        re.fullmatch(
            r"  state\[0\]\.mu\['w'\]: bfloat16\[3\] -> float32\[3\]  \(first at add, "
            r'optax/\S+\.py:\d+ in \S*update_moment\S*, from argument "updates\[\'w\'\]"\)',
            line,
        )
        for line in lines
    ), lines


def test_optax_lbfgs_weak_flip_points_into_the_line_search_not_the_loss():
    # The input leaf never reaches the output: the line search writes a fresh strong value
    # into `info.decrease_error`. The loss (value_fn) shares the operations that made it.
    optax = pytest.importorskip("optax")
    tx = optax.lbfgs()
    params = jnp.zeros(3)

    def my_loss(p):
        return jnp.sum((p - 3.0) ** 2) + jnp.zeros(())  # the loss

    value, grad = jax.value_and_grad(my_loss)(params)
    update = state_dtype_invariant(tx.update, state="state", out=1)
    error, found = origins(
        update, grad, tx.init(params), params, value=value, grad=grad, value_fn=my_loss
    )
    by_path = dict(zip([m.path for m in error.mismatches], found))
    origin = by_path["state[2].info.decrease_error"]
    assert origin.file.startswith("optax" + os.sep), origin
    assert "linesearch" in origin.file, origin
    assert "decrease_error" in origin.function, origin
    assert origin.argument is None  # made of every argument: none is named
    assert all(o.line != line_of("the loss") for o in found if o is not None)


def test_a_replaced_leaf_names_the_argument_at_its_own_keypath():
    @state_dtype_invariant
    def step(state, grads):
        flat = jnp.concatenate([grads["b"], grads["w"].ravel()])  # shared by every leaf
        return {"b": flat[:3], "w": flat[3:].reshape(4, 3)}

    state = {"b": jnp.ones(3, jnp.bfloat16), "w": jnp.ones((4, 3), jnp.bfloat16)}
    grads = jax.tree.map(lambda x: x.astype(jnp.float32), state)
    error, found = origins(step, state, grads)
    assert [m.path for m in error.mismatches] == ["state['b']", "state['w']"]
    assert [o.argument for o in found] == ["grads['b']", "grads['w']"]


def test_optax_flatten_names_each_updates_own_leaf():
    optax = pytest.importorskip("optax")
    from jax_dtypeguard.optax import invariant

    params = {"b": jnp.ones(3, jnp.bfloat16), "w": jnp.ones((4, 3), jnp.bfloat16)}
    grads = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    tx = invariant(optax.flatten(optax.sgd(1.0)), updates="check")
    error, found = origins(tx.update, grads, tx.init(params), params)
    assert [(m.path, o.argument) for m, o in zip(error.mismatches, found)] == [
        ("updates['b']", "updates['b']"),
        ("updates['w']", "updates['w']"),
    ]


# Cost and robustness -------------------------------------------------------------------------


def test_happy_path_traces_once_and_report_path_twice():
    calls = []

    @state_dtype_invariant
    def step(state, value):
        calls.append(1)
        return state + value

    step(jnp.ones(3, jnp.float32), jnp.ones(3, jnp.float32))
    assert len(calls) == 1
    with pytest.raises(StateDtypeError):
        step(jnp.ones(3, jnp.float16), jnp.ones(3, jnp.float32))
    assert len(calls) == 3  # the call itself, then one trace for the origin


def test_explain_never_raises():
    calls = []

    @state_dtype_invariant
    def step(state):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("the second trace fails")
        return state.astype(jnp.float32)

    error, (origin,) = origins(step, jnp.ones(3, jnp.float16))
    assert origin is None
    assert "first at" not in str(error)


def test_no_origin_for_shape_or_structure():
    @state_dtype_invariant
    def step(state):
        return {"a": state["a"][:2].astype(jnp.float32), "b": None}

    error, found = origins(step, {"a": jnp.ones(3, jnp.float16), "b": jnp.ones(1)})
    kinds = {m.kind: o for m, o in zip(error.mismatches, found)}
    assert kinds["structure"] is None


@pytest.mark.dtypeguard_strict(False)  # about cast/warn mode, which strict mode turns to check
def test_reported_warnings_of_inner_guards_are_not_repeated():
    @state_dtype_invariant(mode="warn")
    def inner(s):
        return s * jnp.float32(2)

    @state_dtype_invariant
    def outer(state):
        return inner(state)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(StateDtypeError):
            outer(jnp.ones(3, jnp.float16))
    assert len([w for w in record if issubclass(w.category, StateDtypeWarning)]) == 1


# The private JAX API behind it ---------------------------------------------------------------


def test_compat_source_frames():
    jaxpr = jax.make_jaxpr(lambda x: x + 1)(1.0)  # recorded frame
    frames = source_frames(jaxpr.jaxpr.eqns[0].source_info)
    assert (os.path.abspath(__file__), line_of("recorded frame")) in [f[:2] for f in frames]
