"""jax_dtypeguard.optax.invariant with the real Optax."""

import inspect
import subprocess
import sys
import warnings
from typing import NamedTuple

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


def make_params(dtype):
    return {"w": jnp.full((4, 3), 0.5, dtype), "b": jnp.full((3,), -0.25, dtype)}


def loss(params):
    return sum(jnp.sum(jnp.square(x) - 0.5 * x) for x in jax.tree.leaves(params))


def grads_of(params, dtype=None):
    grads = jax.grad(loss)(params)
    return grads if dtype is None else jax.tree.map(lambda g: g.astype(dtype), grads)


def test_the_package_imports_optax_only_in_its_optax_module():
    code = (
        "import sys, jax_dtypeguard, jax_dtypeguard.lax, jax_dtypeguard.testing\n"
        "assert 'optax' not in sys.modules, 'importing jax_dtypeguard imported optax'\n"
        "import jax_dtypeguard.optax\n"
        "assert 'optax' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- the kind of transformation ---------------------------------------------------------------


def test_extra_args_transformations_stay_extra_args():
    base = optax.adam(1e-2)
    tx = invariant(base)
    assert type(tx) is optax.GradientTransformationExtraArgs
    assert tx.init is base.init
    assert "extra_args" in inspect.signature(tx.update).parameters


def test_plain_transformations_stay_plain():
    tx = invariant(optax.scale(0.5))
    assert type(tx) is optax.GradientTransformation
    assert list(inspect.signature(tx.update).parameters) == ["updates", "state", "params"]
    params = jnp.ones(2, jnp.bfloat16)
    updates, state = tx.update(params, tx.init(params), params)
    assert updates.dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="value"):
        tx.update(params, state, params, value=1.0)


def test_multisteps_becomes_an_extra_args_transformation():
    tx = invariant(optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2))
    assert type(tx) is optax.GradientTransformationExtraArgs
    params = make_params(jnp.bfloat16)
    state = tx.init(params)
    for _ in range(3):
        _, new_state = tx.update(grads_of(params), state, params)
        assert types(new_state) == types(state)
        state = new_state


def test_update_reads_well_in_a_repr():
    assert "update=<function invariant(adam) at" in repr(invariant(optax.adam(1e-2)))
    tx = optax.lbfgs()
    assert invariant(tx).update.__qualname__ == "invariant(tx)"
    assert invariant(tx=tx).update.__qualname__ == "invariant(tx)"
    assert invariant(*[tx]).update.__qualname__ == "invariant(chain)"  # no name written


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (optax.adam, "Call it first: invariant(optax.adam(1e-3))"),
        ((lambda p: (), lambda u, s, p=None: (u, s)), "got tuple"),
        (None, "got NoneType None"),
        ("adam", "got str 'adam'"),
    ],
    ids=["factory", "tuple", "none", "string"],
)
def test_not_a_transformation(value, fragment):
    with pytest.raises(
        TypeError, match=r"invariant expects an optax\.GradientTransformation"
    ) as info:
        invariant(value)
    assert fragment in str(info.value)


def test_bad_modes():
    with pytest.raises(ValueError, match="mode must be one of 'check', 'cast', 'warn', 'off'"):
        invariant(optax.sgd(1e-2), mode="repair")
    with pytest.raises(ValueError, match="updates must be one of"):
        invariant(optax.sgd(1e-2), updates="fix")
    with pytest.raises(TypeError, match="updates must be one of"):
        invariant(optax.sgd(1e-2), updates=True)


# --- optimizer state ------------------------------------------------------------------------


def mixed_precision_step(tx, dtype=jnp.bfloat16):
    """One update with low-precision params and float32 grads: Adam's mu follows the grads."""
    params = make_params(dtype)
    state = tx.init(params)
    updates, new_state = tx.update(grads_of(params, jnp.float32), state, params)
    return params, state, updates, new_state


def test_unwrapped_adam_state_follows_float32_grads():
    _, state, _, new_state = mixed_precision_step(optax.adam(1e-2))
    assert state[0].mu["w"].dtype == jnp.bfloat16
    assert new_state[0].mu["w"].dtype == jnp.float32


def test_cast_mode_keeps_the_state_types():
    _, state, updates, new_state = mixed_precision_step(invariant(optax.adam(1e-2), updates="cast"))
    assert types(new_state) == types(state)
    assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}


def test_check_mode_names_the_optimizer_and_every_state_path():
    with pytest.raises(dg.StateDtypeError) as info:
        mixed_precision_step(invariant(optax.adam(1e-2), mode="check"))
    error = info.value
    assert error.function == "invariant(adam)"
    assert [m.path for m in error.mismatches] == [
        "opt_state[0].mu['b']",
        "opt_state[0].mu['w']",
    ]
    message = str(error)
    line = inspect.getsourcelines(test_check_mode_names_the_optimizer_and_every_state_path)[1]
    assert message.startswith(f"invariant(adam) (tests/test_optax.py:{line + 2}) changed the ")
    assert "changed the type of its state 'opt_state' (2 mismatches):" in message
    assert "  opt_state[0].mu['w']: bfloat16[4,3] -> float32[4,3]" in message


def test_warn_mode_warns_and_returns_the_drifted_state():
    with pytest.warns(dg.StateDtypeWarning, match=r"opt_state\[0\]\.mu\['w'\]"):
        _, _, _, new_state = mixed_precision_step(
            invariant(optax.adam(1e-2), mode="warn", updates="off")
        )
    assert new_state[0].mu["w"].dtype == jnp.float32


def test_off_mode_is_the_optimizer_itself():
    _, _, updates, new_state = mixed_precision_step(
        invariant(optax.adam(1e-2), mode="off", updates="off")
    )
    assert new_state[0].mu["w"].dtype == jnp.float32
    assert updates["w"].dtype == jnp.float32


def test_mode_none_follows_the_configuration():
    tx = invariant(optax.adam(1e-2), mode=None, updates=None)
    with dg.mode("check"), pytest.raises(dg.StateDtypeError, match="opt_state"):
        mixed_precision_step(tx)
    with dg.mode("cast"):
        _, state, updates, new_state = mixed_precision_step(tx)
    assert types(new_state) == types(state)
    assert updates["w"].dtype == jnp.bfloat16


class CountState(NamedTuple):
    count: jax.Array | None
    trace: jax.Array


def drifting_transformation(drift):
    """A real Optax transformation whose `update` changes its state's tree or shapes."""

    def init(params):
        return CountState(jnp.zeros([], jnp.int32), jnp.zeros_like(params))

    def update(updates, state, params=None):
        if drift == "structure":
            return updates, CountState(None, state.trace)
        return updates, CountState(state.count + 1, jnp.stack([state.trace, state.trace]))

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize("mode", ["cast", "check"])
def test_structure_drift_raises_even_in_cast_mode(mode):
    tx = invariant(optax.chain(optax.scale(0.5), drifting_transformation("structure")), mode=mode)
    params = jnp.ones(3)
    with pytest.raises(dg.StateDtypeError) as info:
        tx.update(params, tx.init(params), params)
    [mismatch] = info.value.mismatches
    assert (mismatch.path, mismatch.kind) == ("opt_state[1].count", "structure")
    assert mismatch.got == "None"
    assert info.value.function == "invariant(chain)"


def test_structure_drift_warns_in_warn_mode():
    tx = invariant(drifting_transformation("structure"), mode="warn")
    params = jnp.ones(3)
    with pytest.warns(dg.StateDtypeWarning, match=r"opt_state\.count: int32\[\] -> None"):
        tx.update(params, tx.init(params), params)


def test_shape_drift_raises_in_cast_mode():
    tx = invariant(drifting_transformation("shape"))
    params = jnp.ones(3, jnp.float16)
    with pytest.raises(dg.StateDtypeError) as info:
        jax.jit(tx.update)(params, tx.init(params), params)
    assert [(m.path, m.kind) for m in info.value.mismatches] == [("opt_state.trace", "shape")]
    assert "opt_state.trace: float16[3] -> float16[2,3]" in str(info.value)
    assert str(info.value).startswith("invariant(drifting_transformation) (tests/test_optax.py:")


class _FastState(NamedTuple):
    aggregate: dict
    is_reset: bool = True


def _fast_optimizer(reset_value=False):
    """Optax's own lookahead test optimizer: `update` returns `is_reset` as a Python value."""

    def init(params):
        return _FastState(jax.tree.map(jnp.zeros_like, params), True)

    def update(updates, state, params=None):
        aggregate = optax.apply_updates(state.aggregate, updates)
        return jax.tree.map(lambda u: -0.5 * u, updates), _FastState(aggregate, reset_value)

    return optax.GradientTransformation(init, update)


def _lookahead_run(mode, *, jit, reset_value=False, steps=3):
    tx = invariant(optax.lookahead(_fast_optimizer(reset_value), 3, 0.5), mode=mode)
    params = optax.LookaheadParams.init_synced({"x": jnp.float32(3), "y": jnp.float32(-3)})
    grads = {"x": jnp.float32(2), "y": jnp.float32(-2)}
    update = jax.jit(tx.update) if jit else tx.update
    state = jax.jit(tx.init)(params)  # `is_reset` is a bool[] array from here on
    for _ in range(steps):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("mode", ["check", "cast"])
def test_lookahead_python_bool_for_its_traced_bool_leaf_is_no_drift_under_jit(mode):
    # optax.lookahead's inner state returns `is_reset=False` for a traced bool[]: jit makes
    # it the same bool[] array. Optax's own lookahead tests run this way.
    params, state = _lookahead_run(mode, jit=True)
    plain = _lookahead_run("off", jit=True)
    assert state.fast_state.is_reset.dtype == jnp.bool_
    assert jax.tree.map(lambda a, b: bool(jnp.all(a == b)), (params, state), plain) == (
        jax.tree.map(lambda _: True, plain)
    )


@pytest.mark.parametrize("mode", ["check", "cast"])
def test_lookahead_python_scalar_of_another_type_under_jit_is_dtype_drift(mode):
    # A Python int where the state holds a bool[]: under jit an int32 array, a change of kind.
    with pytest.raises(dg.StateDtypeError) as info:
        _lookahead_run(mode, jit=True, reset_value=0, steps=1)
    kinds = [(m.path, m.kind) for m in info.value.mismatches]
    assert ("opt_state.fast_state.is_reset", "dtype") in kinds
    assert "opt_state.fast_state.is_reset: bool[] -> weak int32[] (Python int)" in str(info.value)


@pytest.mark.parametrize("mode", ["check", "cast"])
def test_lookahead_python_bool_for_a_concrete_array_eagerly_stays_structure(mode):
    with pytest.raises(dg.StateDtypeError) as info:
        _lookahead_run(mode, jit=False, steps=1)
    [mismatch] = info.value.mismatches
    assert (mismatch.path, mismatch.kind) == ("opt_state.fast_state.is_reset", "structure")
    assert (mismatch.expected, mismatch.got) == ("bool[]", "bool[] (Python bool)")


def test_a_python_float_for_a_traced_float16_leaf_is_cast_under_jit():
    def init(params):
        return {"scale": jnp.ones((), jnp.float16)}

    def update(updates, state, params=None):
        return updates, {"scale": 0.5}  # weak float32 under jit

    tx = optax.GradientTransformation(init, update)
    params = jnp.ones(3, jnp.float16)
    _, state = jax.jit(invariant(tx).update)(params, tx.init(params), params)
    assert get_aval(state["scale"]) == get_aval(jnp.float16(0.5)) and state["scale"] == 0.5
    with pytest.raises(dg.StateDtypeError, match=r"float16\[\] -> weak float32\[\] \(Python"):
        jax.jit(invariant(tx, mode="check").update)(params, tx.init(params), params)


def test_exceptions_from_the_optimizer_pass_through():
    with pytest.raises(TypeError, match="value"):  # Polyak SGD needs `value`
        tx = invariant(optax.polyak_sgd())
        params = jnp.ones(2)
        tx.update(params, tx.init(params), params)


# --- updates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_defaults_cast_state_and_updates_under_float32_grads(dtype):
    # Mixed precision with every default: the first thing a user tries.
    params = make_params(dtype)
    tx = invariant(optax.adamw(1e-3))
    state = tx.init(params)
    updates, new_state = tx.update(grads_of(params, jnp.float32), state, params)
    assert types(new_state) == types(state)
    assert types(updates) == types(params)
    new_params = optax.apply_updates(params, updates)
    assert types(new_params) == types(params)
    assert bool(jnp.all(new_params["w"] < params["w"]))  # a step was taken


def test_updates_follow_mode_unless_given():
    with pytest.raises(dg.StateDtypeError, match="opt_state"):
        mixed_precision_step(invariant(optax.adamw(1e-3), mode="check"))
    with pytest.raises(dg.StateDtypeError, match=r"updates\['w'\]"):
        mixed_precision_step(invariant(optax.adamw(1e-3), mode="check", updates="check"))
    _, _, updates, _ = mixed_precision_step(invariant(optax.sgd(1e-3), mode="off"))
    assert updates["w"].dtype == jnp.float32
    _, _, updates, _ = mixed_precision_step(
        invariant(optax.sgd(1e-3), mode="check", updates="cast")
    )
    assert updates["w"].dtype == jnp.bfloat16


def test_updates_report_compares_with_the_params_and_names_the_fix():
    with pytest.raises(dg.StateDtypeError) as info:
        mixed_precision_step(invariant(optax.adamw(1e-3), updates="check"))
    error = info.value
    assert error.function == "invariant(adamw)"
    assert [(m.path, m.expected, m.got) for m in error.mismatches] == [
        ("updates['b']", "bfloat16[3]", "float32[3]"),
        ("updates['w']", "bfloat16[4,3]", "float32[4,3]"),
    ]
    lines = str(error).splitlines()
    assert lines[0].startswith("invariant(adamw) (tests/test_optax.py:")
    assert lines[0].endswith(
        ") returned updates whose types differ from the params' (2 mismatches):"
    )
    assert lines[2].startswith(
        "  updates['w']: float32[4,3] but params['w'] is bfloat16[4,3]  (first at "
    )
    assert "changed the type of its state" not in str(error)
    assert lines[-1].startswith('Hint: pass updates="cast" to invariant to cast')
    assert 'mode="cast"' not in str(error)  # cast is already in force for the state


def test_updates_hint_names_mode_when_updates_follow_it():
    with pytest.raises(dg.StateDtypeError) as info:
        mixed_precision_step(invariant(optax.sgd(1e-2), mode="check"))
    assert 'Hint: pass mode="cast" to invariant, which updates follows,' in str(info.value)


def test_updates_are_not_checked_without_params():
    tx = invariant(optax.sgd(1e-2))
    params = make_params(jnp.bfloat16)
    updates, _ = tx.update(grads_of(params, jnp.float32), tx.init(params))
    assert updates["w"].dtype == jnp.float32


@pytest.mark.parametrize(("updates", "dtype"), [("cast", jnp.float16), ("off", jnp.float32)])
def test_updates_modes(updates, dtype):
    tx = invariant(optax.sgd(1e-2), updates=updates)
    _, _, new_updates, _ = mixed_precision_step(tx, jnp.float16)
    assert {u.dtype for u in jax.tree.leaves(new_updates)} == {jnp.dtype(dtype)}


def test_updates_warn():
    with pytest.warns(
        dg.StateDtypeWarning, match=r"updates\['w'\]: float32\[4,3\] but params\['w'\] is float16"
    ) as warned:
        mixed_precision_step(invariant(optax.sgd(1e-2), updates="warn"), jnp.float16)
    assert {w.filename for w in warned} == {__file__}, "warnings point at the user's call"


def test_updates_ignore_weak_type_outside_strict_mode():
    tx = invariant(optax.sgd(1e-2))
    params = jnp.asarray(1.0)  # weak float32; its update is a strong float32
    updates, _ = tx.update(jnp.float32(1), tx.init(params), params)
    assert not get_aval(updates).weak_type
    with (
        dg.strict(),
        pytest.raises(dg.StateDtypeError, match=r"updates: float32\[\] but params is weak"),
    ):
        tx.update(jnp.float32(1), tx.init(params), params)


def test_updates_of_another_kind_or_shape_are_never_cast():
    def to_float(updates, state, params=None):
        return jax.tree.map(lambda u: u.astype(jnp.float32) / 2, updates), state

    tx = invariant(optax.GradientTransformation(lambda p: optax.EmptyState(), to_float))
    params = jnp.arange(3, dtype=jnp.int32)
    with pytest.raises(dg.StateDtypeError) as info:
        tx.update(params, tx.init(params), params)
    assert [(m.path, m.kind) for m in info.value.mismatches] == [("updates", "dtype")]
    assert "Hint: casting cannot fix these" in str(info.value)


@pytest.mark.parametrize("mode", ["cast", "check"])
def test_updates_where_no_array_param_or_update_is_not_drift(mode):
    # Python-scalar params (`apply_updates` handles them), `None` updates
    # (`add_decayed_weights` supports them) and optax.masked's MaskedNode leaves.
    tx = invariant(optax.scale(0.5), mode=mode)
    scalar = {"w": jnp.ones(2, jnp.float32), "s": 1.0}
    updates, _ = tx.update(
        {"w": jnp.ones(2, jnp.float32), "s": jnp.float32(2)}, tx.init(scalar), scalar
    )
    assert updates["s"].dtype == jnp.float32

    tx = invariant(optax.add_decayed_weights(0.1), mode=mode)
    params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    updates, _ = tx.update({"w": None, "b": jnp.ones(3, jnp.bfloat16)}, tx.init(params), params)
    assert updates["w"] is None

    mask = {"w": True, "b": False}
    tx = optax.masked(invariant(optax.adam(1e-2), mode=mode), mask)
    params = make_params(jnp.bfloat16)
    updates, _ = tx.update(grads_of(params), tx.init(params), params)
    assert updates["w"].dtype == jnp.bfloat16


def test_updates_cast_skips_the_leaves_left_out():
    tx = invariant(optax.add_decayed_weights(0.1))
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    grads = {"a": None, "b": jnp.ones(3, jnp.float32)}  # None sorts before the drifting leaf
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["a"] is None and updates["b"].dtype == jnp.bfloat16


# --- strict mode ------------------------------------------------------------------------------


def lbfgs_update(tx):
    params = jnp.ones(3)
    value, grad = jax.value_and_grad(lambda p: jnp.sum(p**2))(params)
    return tx.update(grad, tx.init(params), params, value=value, grad=grad, value_fn=jnp.sum)


def test_strict_mode_reaches_the_optimizer_state_guard():
    tx = invariant(optax.lbfgs())
    lbfgs_update(tx)  # cast mode repairs the weak `info` fields
    with dg.strict(), pytest.raises(dg.StateDtypeError) as info:
        lbfgs_update(tx)
    assert {m.kind for m in info.value.mismatches} == {"weak_type"}


def test_strict_mode_reaches_the_updates_guard():
    tx = invariant(optax.sgd(1e-2), updates="cast")
    mixed_precision_step(tx)
    with dg.strict(), pytest.raises(dg.StateDtypeError, match=r"updates\['w'\]"):
        mixed_precision_step(tx)


def test_strict_mode_leaves_off_off():
    tx = invariant(optax.lbfgs(), mode="off")
    with dg.strict():
        lbfgs_update(tx)


# --- Optax's combinators, wrappers and line searches ------------------------------------------


def backtracking():
    return optax.chain(optax.sgd(1.0), optax.scale_by_backtracking_linesearch(15))


COMBINATIONS = {
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
    "inject_hyperparams": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    "multi_steps": lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    "masked": lambda: optax.masked(optax.adam(1e-2), {"b": False, "w": True}),
    "multi_transform": lambda: optax.multi_transform(
        {"a": optax.adam(1e-2), "s": optax.sgd(1e-2)}, {"b": "s", "w": "a"}
    ),
    "contrib.prodigy": lambda: optax.contrib.prodigy(),
    "contrib.schedule_free_adamw": lambda: optax.contrib.schedule_free_adamw(1e-2),
    "contrib.mechanize": lambda: optax.contrib.mechanize(optax.adam(1e-2)),
    "backtracking_linesearch": backtracking,
    "zoom_linesearch": lambda: optax.chain(optax.sgd(1.0), optax.scale_by_zoom_linesearch(10)),
    "lbfgs": optax.lbfgs,
}


def jitted_run(tx, params, grads_dtype=None, steps=3):
    """`steps` jitted updates, passing `value`, `grad`, `value_fn` to those that take them."""
    extra = isinstance(tx, optax.GradientTransformationExtraArgs)

    def step(params, state):
        value, grad = jax.value_and_grad(loss)(params)
        if grads_dtype is not None:
            grad = jax.tree.map(lambda g: g.astype(grads_dtype), grad)
        kwargs = {"value": value, "grad": grad, "value_fn": loss} if extra else {}
        updates, state = tx.update(grad, state, params, **kwargs)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step)
    state = tx.init(params)
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(steps):
            params, new_state = jitted(params, state)
            assert types(new_state) == types(state)
            state = new_state
    return compiles(report, jitted), params


@pytest.mark.parametrize("name", COMBINATIONS)
def test_combinations_keep_state_types_and_compile_once(name):
    tx = invariant(COMBINATIONS[name]())
    compiles, params = jitted_run(tx, make_params(jnp.bfloat16))
    assert compiles == 1
    assert types(params) == types(make_params(jnp.bfloat16))


def scheduled_sgd():
    return optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(0.1, 0.01, 10))


def test_a_float32_schedule_promotes_the_updates():
    with pytest.raises(dg.StateDtypeError) as info:
        jitted_run(invariant(scheduled_sgd(), updates="check"), make_params(jnp.bfloat16))
    assert [(m.path, m.got) for m in info.value.mismatches] == [
        ("updates['b']", "float32[3]"),
        ("updates['w']", "float32[4,3]"),
    ]
    assert info.value.function == "invariant(scheduled_sgd)"
    compiles, params = jitted_run(invariant(scheduled_sgd()), make_params(jnp.bfloat16))
    assert compiles == 1
    assert types(params) == types(make_params(jnp.bfloat16))


def test_line_search_extra_args_reach_the_line_search():
    tx = invariant(backtracking())
    params = jnp.array([3.0, -1.0])
    value_fn = lambda p: jnp.sum(p**2)  # noqa: E731
    state = tx.init(params)
    values = []
    for _ in range(3):
        value, grad = jax.value_and_grad(value_fn)(params)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
        params = optax.apply_updates(params, updates)
        values.append(float(value))
        assert int(state[1].info.num_linesearch_steps) >= 1  # sgd(1.0) overshoots: it backtracked
    assert values[0] > values[1] > values[2] > float(value_fn(params))


def optimistix_quadratic(y, args):
    return jnp.sum((y.astype(jnp.float32) - jnp.array([2.0, -1.0])) ** 2)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
def test_lbfgs_under_optimistix_in_low_precision(dtype):
    # Optax's zoom line search calls value_fn at params + stepsize * updates, promoted to
    # float32; Optimistix rejects a call with other argument types than y0's.
    optx = pytest.importorskip("optimistix")
    y0 = jnp.array([-1.0, 1.0], dtype)
    solver = optx.OptaxMinimiser(invariant(optax.lbfgs()), rtol=1e-3, atol=1e-3)
    solution = optx.minimise(optimistix_quadratic, solver, y0, max_steps=100)
    assert solution.value.dtype == dtype
    assert jnp.allclose(solution.value.astype(jnp.float32), jnp.array([2.0, -1.0]), atol=2e-2)
    assert int(solution.stats["num_steps"]) < 100


def test_lbfgs_under_optimistix_check_mode_reports_the_promoted_params():
    optx = pytest.importorskip("optimistix")
    solver = optx.OptaxMinimiser(invariant(optax.lbfgs(), mode="check"), rtol=1e-3, atol=1e-3)
    with pytest.raises(dg.StateDtypeError) as info:
        optx.minimise(optimistix_quadratic, solver, jnp.array([-1.0, 1.0], jnp.bfloat16))
    message = str(info.value)
    assert message.startswith("invariant(lbfgs) (tests/test_optax.py:")
    assert "called value_fn with params of other types than update's params (1 mismatch)" in message
    assert "  value_fn(params): float32[2] but params is bfloat16[2]" in message
    assert [(m.path, m.kind) for m in info.value.mismatches] == [("value_fn(params)", "dtype")]


@pytest.mark.parametrize("mode", ["cast", "check"])
def test_value_fn_sees_params_in_their_dtypes(mode, x64):
    calls = []

    def value_fn(params):
        calls.append(params.dtype)
        return jnp.sum(params.astype(jnp.float32) ** 2)

    tx = invariant(optax.lbfgs(), mode=mode)
    params = jnp.ones(3, jnp.bfloat16)
    value, grad = jax.value_and_grad(value_fn)(params)
    calls.clear()
    try:
        tx.update(grad, tx.init(params), params, value=value, grad=grad, value_fn=value_fn)
    except dg.StateDtypeError as error:
        assert mode == "check"
        promoted = "float64" if x64 else "float32"  # the line search's step size
        assert f"value_fn(params): {promoted}[3] but params is bfloat16[3]" in str(error)
        assert str(error).endswith("or make value_fn accept params of any float dtype.")
    else:
        assert mode == "cast"
        assert set(calls) == {jnp.dtype(jnp.bfloat16)}


def test_works_with_an_eqx_filter_jit():
    eqx = pytest.importorskip("equinox")
    tx = invariant(optax.adam(1e-2))
    params = make_params(jnp.float16)

    @eqx.filter_jit
    def step(params, state):
        updates, state = tx.update(grads_of(params), state, params)
        return eqx.apply_updates(params, updates), state

    new_params, _ = step(params, tx.init(params))
    assert types(new_params) == types(params)


# --- the sweep: every optimizer Optax exports -------------------------------------------------

# Constructor arguments for those that need more than a learning rate.
SPECIAL_ARGUMENTS = {
    "noisy_sgd": lambda f: f(1e-2, key=0),
    "contrib.mechanize": lambda f: f(optax.adam(1e-2)),
    "contrib.schedule_free": lambda f: f(optax.sgd(1e-2), 1e-2),
    "contrib.sam": lambda f: f(optax.sgd(1e-2), optax.sgd(1e-2)),
    "contrib.split_real_and_imaginary": lambda f: f(optax.adam(1e-2)),
}
# Not optimizers of the params alone: per-example gradients, Hessian estimators, eval helpers.
NOT_SWEPT = {
    "contrib.differentially_private_aggregate",
    "contrib.dpsgd",
    "contrib.hutchinson_estimator_diag_hessian",
    "contrib.normalize",
    "contrib.schedule_free_eval_params",
}
# The extra arguments an optimizer's update needs.
EXTRA_ARGUMENTS = {
    "lbfgs": ("value", "grad", "value_fn"),
    "polyak_sgd": ("value",),
    "contrib.momo": ("value",),
    "contrib.momo_adam": ("value",),
    "contrib.reduce_on_plateau": ("value",),
    "contrib.sophia": ("obj_fn",),
}
QUICK = {"adam", "sgd", "lbfgs"}


def optax_optimizers():
    """Every optimizer function in Optax's aliases and in `optax.contrib`, by name."""
    from jax_dtypeguard._audit._optax import optimizers

    return {name: fn for name, fn in optimizers(optax).items() if name not in NOT_SWEPT}


def build(name):
    fn = optax_optimizers()[name]
    if name in SPECIAL_ARGUMENTS:
        return SPECIAL_ARGUMENTS[name](fn)
    parameter = inspect.signature(fn).parameters.get("learning_rate")
    if parameter is not None and parameter.default is inspect.Parameter.empty:
        return fn(learning_rate=1e-2)
    return fn()


def sweep_run(name, dtype, grads_dtype=None, wrap=True, steps=3):
    """(compiles, initial state, final state) of `steps` jitted updates of optimizer `name`."""
    tx = build(name)
    if wrap:
        tx = invariant(tx, updates="cast")
    wanted = EXTRA_ARGUMENTS.get(name, ())

    def step(params, state):
        value, grad = jax.value_and_grad(loss)(params)
        if grads_dtype is not None:
            grad = jax.tree.map(lambda g: g.astype(grads_dtype), grad)
        extra = {"value": value, "grad": grad, "value_fn": loss, "obj_fn": loss}
        updates, state = tx.update(grad, state, params, **{k: extra[k] for k in wanted})
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step)
    params = make_params(dtype)
    init = state = tx.init(params)
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(steps):
            params, state = jitted(params, state)
    return compiles(report, jitted), init, state


def sweep_params(names):
    return [pytest.param(name, marks=() if name in QUICK else pytest.mark.slow) for name in names]


def test_the_sweep_covers_optax():
    names = set(optax_optimizers())
    assert {"adam", "adamw", "sgd", "lion", "lbfgs", "adafactor", "lamb", "rmsprop"} <= names
    assert {"novograd", "contrib.prodigy", "contrib.muon"} <= names
    assert len(names) >= 40


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", sweep_params(optax_optimizers()))
def test_every_optimizer_keeps_its_state_types_and_compiles_once(name, dtype):
    with x64_for(dtype), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        compiles, init, final = sweep_run(name, jnp.dtype(dtype))
    assert types(final) == types(init)
    assert compiles == 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sweep_params(optax_optimizers()))
def test_every_optimizer_keeps_low_precision_state_under_float32_grads(name, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Optax's L-BFGS writes the float32 grads into float16 memory; JAX warns it will
        # reject that scatter. Like a TypeError from Optax's own code, it is no drift to guard.
        warnings.filterwarnings("error", "scatter inputs have incompatible types", FutureWarning)
        try:
            sweep_run(name, jnp.dtype(dtype), jnp.float32, wrap=False, steps=1)
        except (TypeError, FutureWarning) as error:  # Optax's own code rejects mixed dtypes
            pytest.skip(f"optax {optax.__version__}: {str(error).splitlines()[0]}")
        compiles, init, final = sweep_run(name, jnp.dtype(dtype), jnp.float32)
    assert types(final) == types(init)
    assert compiles == 1


def test_dg_optax_is_reached_from_the_package_without_its_own_import():
    import jax_dtypeguard.optax as module

    assert dg.optax is module
    assert "optax" not in dg.__all__  # a star import needs no Optax
