"""States that real libraries build: Equinox models, Flax NNX objects updated in place,
states spread over several arguments, and casts that must never change a value's meaning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, state_dtype_invariant

eqx = pytest.importorskip("equinox")
pytest_plugins = ["pytester"]


# --- Equinox models -------------------------------------------------------------------------


def _mlp(dtype=jnp.float32):
    mlp = eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0))
    return jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, mlp)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_an_equinox_model_is_a_state_under_filter_jit(dtype):
    @eqx.filter_jit
    @state_dtype_invariant
    def step(model, x):
        grads = eqx.filter_grad(lambda m: jnp.sum(m(x)))(model)
        return eqx.apply_updates(model, jax.tree.map(lambda g: -0.1 * g, grads))

    model = _mlp(dtype)
    new = step(model, jnp.ones(2, dtype))
    assert new.activation is model.activation  # a custom_jvp leaf: static, compared by equality
    assert jax.tree.leaves(eqx.filter(new, eqx.is_array))[0].dtype == dtype


def test_an_equinox_model_that_promotes_is_reported_and_cast():
    def step(model, lr):
        return jax.tree.map(lambda w: w - lr * w if eqx.is_array(w) else w, model)

    model = _mlp(jnp.bfloat16)
    with pytest.raises(
        StateDtypeError, match=r"model\.layers\[0\]\.weight: bfloat16\[8,2\] -> float32"
    ):
        eqx.filter_jit(state_dtype_invariant(step))(model, jnp.float32(0.1))
    new = eqx.filter_jit(state_dtype_invariant(step, mode="cast"))(model, jnp.float32(0.1))
    assert {x.dtype.name for x in jax.tree.leaves(eqx.filter(new, eqx.is_array))} == {"bfloat16"}


def test_a_changed_function_leaf_shows_the_old_and_the_new_value():
    @state_dtype_invariant(mode="cast")
    def swap_activation(model):
        return eqx.tree_at(lambda m: m.activation, model, jax.nn.gelu)

    with pytest.raises(StateDtypeError) as info:
        swap_activation(_mlp())
    (mismatch,) = info.value.mismatches
    assert (mismatch.path, mismatch.kind) == ("model.activation", "structure")
    assert (mismatch.expected, mismatch.got) == ("custom_jvp relu", "function gelu")


class Regularised(eqx.Module):
    weight: jax.Array
    penalty: str = eqx.field(static=True)


def test_a_changed_static_field_names_the_field_and_both_values():
    @state_dtype_invariant
    def step(state):
        return Regularised(state.weight, "l1")

    with pytest.raises(StateDtypeError) as info:
        step(Regularised(jnp.ones(2), "l2"))
    (mismatch,) = info.value.mismatches
    assert str(mismatch) == "state: Regularised(penalty='l2') -> Regularised(penalty='l1')"


# --- a state spread over several arguments --------------------------------------------------


def test_a_state_over_several_arguments_and_results():
    @state_dtype_invariant(state=("y", "state"), out=(0, 1))
    def step(fn, y, args, state):
        return y - 0.1 * args, {"count": state["count"] + 1.0}, None

    y, state = jnp.ones(2, jnp.float16), {"count": jnp.int32(0)}
    with pytest.raises(StateDtypeError) as info:
        step(None, y, jnp.ones(2), state)
    assert [(m.path, m.kind) for m in info.value.mismatches] == [
        ("y", "dtype"),
        ("state['count']", "dtype"),
        ("state['count']", "weak_type"),
    ]
    assert "its states 'y', 'state'" in str(info.value)


def test_several_states_misuse_is_reported_at_decoration():
    def step(a, b):
        return a, b

    with pytest.raises(ValueError, match=r"2 returned states .* out=\(0, 1\)"):
        state_dtype_invariant(step, state=("a", "b"))
    with pytest.raises(ValueError, match="names the parameter 'a' twice"):
        state_dtype_invariant(step, state=("a", 0), out=(0, 1))
    with pytest.raises(ValueError, match=r"every state .* is updated in place"):
        state_dtype_invariant(step, state=("a", "b"), inplace=True, out=0)
    with pytest.raises(ValueError, match="inplace='c' names 'c', which is not one of the states"):
        state_dtype_invariant(lambda a, b, c: a, state=("a", "b"), inplace="c", out=0)
    with pytest.raises(TypeError, match="inplace must be True, False"):
        state_dtype_invariant(step, inplace=1.5)


# --- casts that would change a value's meaning ----------------------------------------------


def test_cast_never_truncates_an_int_that_drifted_to_float():
    @state_dtype_invariant(mode="cast")
    def schedule(total):
        return total + 0.3  # an int32 total accumulating 0.3: a change of kind

    with pytest.raises(StateDtypeError, match=r"changed kind \(int32 -> float32\)"):
        schedule(jnp.int32(0))
    with pytest.raises(StateDtypeError, match="changed kind"):
        jax.jit(schedule)(jnp.int32(0))
    # Within a kind, cast still repairs.
    assert state_dtype_invariant(lambda s: s + 1, mode="cast")(jnp.int8(1)).dtype == jnp.int8


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_python_scalar_returned_as_an_array_is_cast_to_jits_weak_array(jit):
    def step(state):
        return {"b2": jnp.asarray(state["b2"], jnp.float32)}

    cast = state_dtype_invariant(step, mode="cast")
    new = (jax.jit(cast) if jit else cast)({"b2": 0.95})
    assert isinstance(new["b2"], jax.Array)
    assert new["b2"].dtype == jax.dtypes.canonicalize_dtype(float) and new["b2"].weak_type
    with pytest.raises(StateDtypeError, match=r"state\['b2'\]: weak float32\[\]"):
        (jax.jit if jit else lambda f: f)(state_dtype_invariant(step))({"b2": 0.95})


def test_a_static_python_scalar_traced_into_an_array_stays_structure_drift():
    # Equinox keeps a Python int static; the step returns a traced array for it.
    @eqx.filter_jit
    def run(state):
        return state_dtype_invariant(lambda s: {"n": s["n"] + jnp.int32(1)}, mode="cast")(state)

    with pytest.raises(StateDtypeError, match=r"\(Python int\) -> int32\[\]  \[structure\]"):
        run({"n": 0})


def test_optax_inject_hyperparams_with_a_python_scalar_keeps_working():
    optax = pytest.importorskip("optax")
    from jax_dtypeguard.optax import invariant

    tx = invariant(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    state.hyperparams["b2"] = 0.95  # as Optax documents it
    for step in (tx.update, jax.jit(tx.update)):
        _, new_state = step({"w": jnp.ones(3)}, state, params)
        assert new_state.hyperparams["b2"].weak_type


# --- tracebacks -----------------------------------------------------------------------------


def test_a_report_in_a_test_shows_the_report_not_the_library(pytester):
    pytester.makepyfile(
        """
        import jax.numpy as jnp
        from jax_dtypeguard import state_dtype_invariant

        def test_step():
            state_dtype_invariant(lambda s: s * jnp.float32(2))(jnp.ones(2, jnp.float16))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "changed the type of its state 's'" in text
    assert "def __call__" not in text and "_guard.py" not in text


def test_strict_hint_names_the_fix():
    with dg.strict(), pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda s: s * jnp.float32(2), mode="cast")(jnp.ones(2, jnp.float16))
    hint = str(info.value).splitlines()[-1]
    assert "strict mode is on" in hint and "astype(state.dtype)" in hint
    assert 'use mode="cast"' not in hint


def test_numpy_leaves_still_compare_as_arrays():
    verdict = state_dtype_invariant(lambda s: s)(np.ones(2, np.float32))
    assert verdict.dtype == np.float32
