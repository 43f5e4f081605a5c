"""state_dtype_invariant: arguments, modes, misuse, caching, stacking."""

import functools
import inspect
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_calls

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, StateDtypeWarning, _comparisons, state_dtype_invariant


class State(NamedTuple):
    w: jax.Array
    count: jax.Array


def promote(state, value):
    return State(state.w * value, state.count + 1)


def f16_state():
    return State(jnp.ones(3, jnp.float16), jnp.int32(0))


# --- forms of use -----------------------------------------------------------


def test_bare_parametrised_and_direct_forms_all_guard():
    bare = state_dtype_invariant(promote)
    parametrised = state_dtype_invariant(mode="check")(promote)
    direct = state_dtype_invariant(promote, mode="check")
    for guarded in (bare, parametrised, direct):
        with pytest.raises(StateDtypeError):
            guarded(f16_state(), jnp.float32(2))
        assert guarded(f16_state(), jnp.float16(2)).w.dtype == jnp.float16


def test_wraps_keeps_name_doc_wrapped_and_signature():
    def step(state, lr=0.1):
        """Docs."""
        return state

    guarded = state_dtype_invariant(step)
    assert guarded.__name__ == "step"
    assert guarded.__doc__ == "Docs."
    assert guarded.__wrapped__ is step
    assert inspect.signature(guarded) == inspect.signature(step)


def test_state_by_name_position_and_keyword_at_call_time():
    @state_dtype_invariant(state="opt_state", out=1)
    def update(updates, opt_state, params=None):
        return updates, State(opt_state.w * updates, opt_state.count)

    g = jnp.ones(3, jnp.float32)
    for call in (
        lambda: update(g, f16_state()),
        lambda: update(g, opt_state=f16_state()),
        lambda: update(updates=g, opt_state=f16_state(), params=None),
    ):
        with pytest.raises(StateDtypeError, match=r"opt_state\.w: float16\[3\] -> float32\[3\]"):
            call()

    by_position = state_dtype_invariant(update.__wrapped__, state=1, out=1)
    with pytest.raises(StateDtypeError, match=r"opt_state\.w"):
        by_position(g, f16_state())


def test_out_index_selects_the_state_and_negative_indices_work():
    @state_dtype_invariant(out=-1, mode="cast")
    def step(state):
        return "aux", state * 2.0

    aux, new = step(jnp.ones(2, jnp.float16))
    assert aux == "aux" and new.dtype == jnp.float16


def test_cast_keeps_the_returned_container_type():
    class Out(NamedTuple):
        loss: jax.Array
        state: jax.Array

    @state_dtype_invariant(out=1, mode="cast")
    def as_namedtuple(state):
        return Out(jnp.float32(0), state * jnp.float32(2))

    @state_dtype_invariant(out=0, mode="cast")
    def as_list(state):
        return [state * jnp.float32(2), 1]

    out = as_namedtuple(jnp.ones(2, jnp.float16))
    assert type(out) is Out and out.state.dtype == jnp.float16
    out = as_list(jnp.ones(2, jnp.float16))
    assert type(out) is list and out[0].dtype == jnp.float16


def test_methods_skip_self():
    class Optimizer:
        def __init__(self, lr):
            self.lr = lr

        @state_dtype_invariant
        def step(self, state):
            return state * self.lr

        @state_dtype_invariant(state="state")
        def named(self, grads, state):
            return state * grads

    opt = Optimizer(jnp.float32(0.5))
    with pytest.raises(StateDtypeError, match=r"Optimizer\.step"):
        opt.step(jnp.ones(2, jnp.float16))
    with pytest.raises(StateDtypeError, match=r"state: float16\[2\] -> float32\[2\]"):
        opt.named(jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float16))
    assert opt.step(jnp.ones(2)).dtype == jnp.float32


def test_default_state_value_is_used_when_not_passed():
    @state_dtype_invariant(state="carry")
    def step(x, carry=0.0):
        return carry + x

    assert step(1.0) == 1.0
    with pytest.raises(
        StateDtypeError, match=r"carry: weak float32\[\] \(Python float\) -> float32\[\]"
    ):
        step(jnp.float32(1))


def test_user_exceptions_pass_through_unchanged():
    class Boom(Exception):
        pass

    error = Boom("inner")

    @state_dtype_invariant
    def step(state):
        raise error

    with pytest.raises(Boom) as caught:
        step(jnp.ones(2))
    assert caught.value is error


def test_missing_state_argument_lets_python_raise_its_own_error():
    @state_dtype_invariant
    def step(state):
        return state

    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        step()


# --- modes --------------------------------------------------------------------


def test_check_raises_cast_casts_warn_warns_off_returns_untouched():
    state = jnp.ones(2, jnp.float16)

    def step(s):
        return s * jnp.float32(2)

    with pytest.raises(StateDtypeError):
        state_dtype_invariant(step, mode="check")(state)
    assert state_dtype_invariant(step, mode="cast")(state).dtype == jnp.float16
    with pytest.warns(StateDtypeWarning, match=r"s: float16\[2\] -> float32\[2\]"):
        out = state_dtype_invariant(step, mode="warn")(state)
    assert out.dtype == jnp.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert state_dtype_invariant(step, mode="off")(state).dtype == jnp.float32


def test_default_mode_comes_from_config_at_call_time():
    guarded = state_dtype_invariant(lambda s: s * jnp.float32(2))
    with dg.mode("cast"):
        assert guarded(jnp.ones(2, jnp.float16)).dtype == jnp.float16
    with dg.mode("off"):
        assert guarded(jnp.ones(2, jnp.float16)).dtype == jnp.float32
    with pytest.raises(StateDtypeError):
        guarded(jnp.ones(2, jnp.float16))


def test_a_warning_points_at_the_guarded_call():
    guarded = state_dtype_invariant(lambda s: s * jnp.float32(2), mode="warn")
    with pytest.warns(StateDtypeWarning) as record:
        guarded(jnp.ones(2, jnp.float16))
    line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_strict_turns_cast_warn_and_weak_type_false_into_check_but_off_stays_off():
    def step(s):
        return s * jnp.float32(2)

    state = jnp.ones(2, jnp.float16)
    with dg.strict():
        for mode in ("cast", "warn", None):
            with pytest.raises(StateDtypeError):
                state_dtype_invariant(step, mode=mode)(state)
        weak = jax.eval_shape(lambda: jnp.asarray(1.0))
        with pytest.raises(StateDtypeError, match=r"s: weak float32\[\] -> float32\[\]"):
            jax.eval_shape(
                state_dtype_invariant(lambda s: s * jnp.float32(1), weak_type=False), weak
            )
        assert state_dtype_invariant(step, mode="off")(state).dtype == jnp.float32


def test_weak_type_false_ignores_weak_only_drift_but_not_dtype():
    weak = 1.0

    @jax.jit
    @state_dtype_invariant(weak_type=False)
    def step(s):
        return s * jnp.float32(2)

    step(weak)
    with pytest.raises(StateDtypeError, match="weak float16"):
        jax.eval_shape(
            state_dtype_invariant(lambda s: s * jnp.float32(1), weak_type=False),
            jax.ShapeDtypeStruct((), jnp.float16, weak_type=True),
        )


def test_cast_restores_weak_type_too():
    @jax.jit
    @state_dtype_invariant(mode="cast")
    def step(s):
        return s + jnp.float32(1)

    out = step(jnp.asarray(1.0))
    assert jax.eval_shape(lambda: jnp.asarray(1.0)).weak_type
    assert dg._compat.get_aval(out).weak_type


def test_cast_mode_raises_for_what_no_cast_can_fix_and_lists_only_that():
    @state_dtype_invariant(mode="cast")
    def step(s):
        return {"w": s["w"] * jnp.float32(2), "n": jnp.ones(3)}

    with pytest.raises(StateDtypeError) as caught:
        step({"w": jnp.ones(2, jnp.float16), "n": jnp.ones(2)})
    assert [(m.path, m.kind) for m in caught.value.mismatches] == [("s['n']", "shape")]
    assert "casting cannot fix these" in str(caught.value)


def test_cast_never_converts_keys_or_float0():
    key = jax.random.key(0)

    @state_dtype_invariant(mode="cast")
    def unwrap(k):
        return jax.random.key_data(k)

    with pytest.raises(StateDtypeError, match="key<fry>"):
        unwrap(key)

    zero = np.zeros((2,), jax.dtypes.float0)
    with pytest.raises(StateDtypeError, match="float0"):
        state_dtype_invariant(lambda s: jnp.zeros(2), mode="cast")(zero)


# --- misuse --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"state": "nope"},
            ValueError,
            r"state='nope' names no parameter of .*step \(its parameters: state, lr\)",
        ),
        ({"state": 5}, ValueError, r"state=5: .*step has no parameter 5"),
        ({"state": 1.5}, TypeError, "state must be a parameter's name"),
        ({"out": "0"}, TypeError, "out must be None"),
        ({"out": True}, TypeError, "out must be None"),
        ({"mode": "strict"}, ValueError, "mode must be one of 'check', 'cast', 'warn', 'off'"),
        ({"mode": 1}, TypeError, "mode must be one of"),
        ({"weak_type": "yes"}, TypeError, "weak_type must be True or False"),
        ({"annotations": None}, TypeError, "annotations must be True or False"),
    ],
)
def test_misuse_fails_at_decoration_time(kwargs, error, match):
    def step(state, lr):
        return state

    with pytest.raises(error, match=match):
        state_dtype_invariant(step, **kwargs)


def test_non_callable_and_positional_mode():
    with pytest.raises(TypeError, match="expects a function; got int 3"):
        state_dtype_invariant(3)
    with pytest.raises(TypeError, match="expects a function; got str 'cast'"):
        state_dtype_invariant("cast")


def test_variadic_state_and_no_parameters():
    with pytest.raises(TypeError, match="variadic"):
        state_dtype_invariant(lambda *states: states)
    with pytest.raises(ValueError, match="has no parameter to take the state"):
        state_dtype_invariant(lambda: 0)


def test_out_misuse_fails_at_first_call():
    with pytest.raises(TypeError, match=r"returned an array, but out=1 expects a tuple or list"):
        state_dtype_invariant(lambda s: s, out=1)(jnp.ones(2))
    with pytest.raises(ValueError, match=r"out=3 is past the 2 values"):
        state_dtype_invariant(lambda s: (s, s), out=3)(jnp.ones(2))


def test_non_array_state_leaves_are_static():
    @state_dtype_invariant
    def step(state):
        return {**state, "w": state["w"] * 2}

    state = {"name": "adam", "w": jnp.ones(2)}
    assert step(state)["name"] == "adam"


def test_state_keyword_accepted_through_var_keyword():
    @state_dtype_invariant(state="opt_state")
    def update(**kwargs):
        return kwargs["opt_state"] * jnp.float32(2)

    with pytest.raises(StateDtypeError, match="opt_state: float16"):
        update(opt_state=jnp.ones(2, jnp.float16))


# --- zero cost, caching ---------------------------------------------------------


def test_check_mode_jaxpr_is_identical_to_the_undecorated_function():
    def step(state, g):
        return State(state.w - 0.1 * g, state.count + 1)

    args = (f16_state(), jnp.ones(3, jnp.float16))
    plain = str(jax.make_jaxpr(step)(*args))
    assert str(jax.make_jaxpr(state_dtype_invariant(step))(*args)) == plain
    assert str(jax.make_jaxpr(state_dtype_invariant(step, mode="cast"))(*args)) == plain


def test_cast_adds_exactly_one_conversion_per_drifting_leaf():
    def step(s):
        return {"a": s["a"] * jnp.float32(2), "b": s["b"] * jnp.float32(2), "c": s["c"] + 1}

    state = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.bfloat16), "c": jnp.ones(2)}

    def converts(fn):
        return sum(
            e.primitive.name == "convert_element_type" for e in jax.make_jaxpr(fn)(state).jaxpr.eqns
        )

    assert converts(state_dtype_invariant(step, mode="cast")) == converts(step) + 2


def test_eager_verdicts_are_cached_per_signature(monkeypatch):
    calls = count_calls(monkeypatch, _comparisons, "compare_states")
    guarded = state_dtype_invariant(lambda s: s * jnp.float32(2), mode="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            guarded(jnp.ones(2, jnp.float16))
        assert len(calls) == 1
        guarded(jnp.ones(3, jnp.float16))
        assert len(calls) == 2


def test_happy_path_runs_no_full_comparison(monkeypatch):
    monkeypatch.setattr(_comparisons, "compare_states", lambda *a, **k: pytest.fail("compared"))
    state_dtype_invariant(lambda s: s + 1)(jnp.ones(2))


_X = jnp.ones(2)


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"a": _X}, {"a": (_X, _X)}, "s['a']: float32[2] -> tuple of 2"),
        ({"a": _X}, {"a": None}, "s['a']: float32[2] -> None"),
        ((_X,), [_X], "s: tuple of 1 -> list of 1"),
        (jax.tree_util.Partial(jnp.sin, _X), jax.tree_util.Partial(jnp.cos, _X), "Partial"),
        ({"a": _X}, {"a": _X, "b": _X}, "s"),
    ],
    ids=["leaf to tuple", "leaf to None", "tuple to list", "node data", "new key"],
)
def test_the_fast_path_reports_every_structure_change(before, after, expected):
    with pytest.raises(StateDtypeError, match="structure") as caught:
        state_dtype_invariant(lambda s: after)(before)
    assert expected in str(caught.value)


# --- stacking --------------------------------------------------------------------


def test_stacks_with_jit_inside_and_outside_and_filter_jit():
    def step(s):
        return s * jnp.float32(2)

    state = jnp.ones(2, jnp.float16)
    with pytest.raises(StateDtypeError):
        jax.jit(state_dtype_invariant(step))(state)
    with pytest.raises(StateDtypeError):
        state_dtype_invariant(jax.jit(step))(state)
    eqx = pytest.importorskip("equinox")
    with pytest.raises(StateDtypeError):
        eqx.filter_jit(state_dtype_invariant(step))(state)
    assert eqx.filter_jit(state_dtype_invariant(step, mode="cast"))(state).dtype == jnp.float16


def test_jitted_function_named_in_errors():
    @jax.jit
    def inner(s):
        return s * jnp.float32(2)

    with pytest.raises(StateDtypeError, match=r"inner \(.*test_decorator\.py:\d+\)"):
        state_dtype_invariant(inner)(jnp.ones(2, jnp.float16))


def test_partial_functions():
    def step(state, scale):
        return state * scale

    guarded = state_dtype_invariant(functools.partial(step, scale=jnp.float32(2)))
    with pytest.raises(StateDtypeError, match=r"step \("):
        guarded(jnp.ones(2, jnp.float16))


def test_eager_warn_loops_explain_each_signature_once(monkeypatch):
    from jax_dtypeguard import _provenance

    calls = count_calls(monkeypatch, _provenance, "explain")
    guarded = state_dtype_invariant(lambda s, v: s * v, mode="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            guarded(jnp.ones(2, jnp.float16), jnp.float32(2))
        assert len(calls) == 1
        guarded(jnp.ones(2, jnp.float16), jnp.ones(2, jnp.float32))
        assert len(calls) == 2
