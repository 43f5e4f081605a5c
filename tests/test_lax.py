"""jax_dtypeguard.lax: loops and branches whose bodies keep the carry's types."""

import gc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_dtypeguard as dg
from jax_dtypeguard import lax as dl
from jax_dtypeguard._compat import get_aval


def aval(x):
    return get_aval(x)


def weak_float():
    """The type JAX gives a Python float: weak float32, or weak float64 under x64."""
    return aval(jnp.asarray(1.0))


# --- each form, as (raw jax.lax form, dg form), driving a body `step(x) -> x` ------------


def run_while(lax, step, init, **kw):
    return lax.while_loop(lambda state: jnp.all(jax.tree.leaves(state)[0] < 3), step, init, **kw)


def run_fori(lax, step, init, **kw):
    return lax.fori_loop(0, 3, lambda i, state: step(state), init, **kw)


def run_scan(lax, step, init, **kw):
    return lax.scan(lambda state, _: (step(state), None), init, length=3, **kw)[0]


def run_cond(lax, step, init, **kw):
    return lax.cond(True, step, step, init, **kw)


def run_switch(lax, step, init, **kw):
    return lax.switch(1, [step, step, step], init, **kw)


# The function a report names: the step itself, or the adapter that calls it.
ADAPTERS = {"fori_loop": "run_fori.<locals>.<lambda>", "scan": "run_scan.<locals>.<lambda>"}


def named(form, step):
    return ADAPTERS.get(form, step.__name__)


FORMS = {
    "while_loop": run_while,
    "fori_loop": run_fori,
    "scan": run_scan,
    "cond": run_cond,
    "switch": run_switch,
}


def to_float16(state):
    return state * jnp.float16(2)


def to_float32(state):
    return (state + 1).astype(jnp.float32)


@pytest.mark.parametrize("form", FORMS)
def test_weak_initial_carry_is_silently_promoted_by_jax(form, x64):
    # The problem: JAX runs the whole loop (or branch) in float16.
    result = FORMS[form](jax.lax, to_float16, 1.0)
    assert result.dtype == jnp.float16


@pytest.mark.parametrize("form", FORMS)
def test_weak_initial_carry_check_mode_reports(form, x64):
    with pytest.raises(dg.StateDtypeError) as info:
        FORMS[form](dl, to_float16, 1.0, mode="check")
    error = info.value
    assert error.function == named(form, to_float16)
    assert {m.kind for m in error.mismatches} == {"dtype", "weak_type"}
    assert all(m.path == "state" for m in error.mismatches)
    assert all(m.got == "float16[]" for m in error.mismatches)
    assert f"state: weak {weak_float().dtype}[] -> float16[]" in str(error)
    assert f"{named(form, to_float16)} (tests/test_lax.py:" in str(error)


@pytest.mark.parametrize("form", FORMS)
def test_weak_initial_carry_cast_mode_keeps_the_carry_type(form, x64):
    result = FORMS[form](dl, to_float16, 1.0)
    assert aval(result) == weak_float()
    assert float(result) == {"cond": 2.0, "switch": 2.0, "while_loop": 4.0}.get(form, 8.0)


@pytest.mark.parametrize("form", ["while_loop", "fori_loop", "scan"])
def test_jax_rejects_a_drifting_carry_with_its_own_error(form, x64):
    with pytest.raises(TypeError, match="carry") as info:
        FORMS[form](jax.lax, to_float32, jnp.float16(1))
    assert not isinstance(info.value, dg.StateDtypeError)


@pytest.mark.parametrize("form", ["cond", "switch"])
def test_jax_rejects_branches_that_disagree(form, x64):
    branches = [to_float32, lambda x: x]
    with pytest.raises(TypeError, match=r"branch|true_fun"):
        if form == "cond":
            jax.lax.cond(True, *branches, jnp.float16(1))
        else:
            jax.lax.switch(0, branches, jnp.float16(1))


@pytest.mark.parametrize("form", FORMS)
def test_a_drifting_carry_check_mode_names_the_function_and_path(form, x64):
    with pytest.raises(dg.StateDtypeError) as info:
        FORMS[form](dl, to_float32, jnp.float16(1), mode="check")
    error = info.value
    assert error.function == named(form, to_float32)
    assert [(m.path, m.kind, m.expected, m.got) for m in error.mismatches] == [
        ("state", "dtype", "float16[]", "float32[]")
    ]
    assert str(error).startswith(f"{named(form, to_float32)} (tests/test_lax.py:")
    assert (
        "changed the type of its state 'state' (1 mismatch):\n  state: float16[] -> float32[]"
        in str(error)
    )


@pytest.mark.parametrize("form", FORMS)
def test_a_drifting_carry_cast_mode_keeps_the_carry_type(form, x64):
    result = FORMS[form](dl, to_float32, jnp.float16(1))
    assert aval(result) == aval(jnp.float16(1))


@pytest.mark.parametrize("form", FORMS)
def test_shape_drift_raises_even_in_cast_mode(form, x64):
    def grow(state):
        return jnp.stack([state, state])

    with pytest.raises(dg.StateDtypeError) as info:
        FORMS[form](dl, grow, jnp.float16(1))
    assert [(m.path, m.kind) for m in info.value.mismatches] == [("state", "shape")]
    assert "Hint: casting cannot fix these: keep each leaf's shape." in str(info.value)


@pytest.mark.parametrize("form", FORMS)
def test_pytree_carry_paths_and_every_mismatch(form, x64):
    def step(state):
        return {"w": state["w"] * jnp.float32(2), "n": state["n"] + 1, "m": state["m"] * 1.5}

    init = {"w": jnp.ones(3, jnp.bfloat16), "n": jnp.int32(0), "m": jnp.ones(2, jnp.float16)}
    with pytest.raises(dg.StateDtypeError) as info:
        FORMS[form](dl, step, init, mode="check")
    assert [(m.path, m.expected, m.got) for m in info.value.mismatches] == [
        ("state['w']", "bfloat16[3]", "float32[3]")
    ]
    result = FORMS[form](dl, step, init)
    assert jax.tree.map(aval, result) == jax.tree.map(aval, init)


@pytest.mark.parametrize("form", FORMS)
def test_structure_drift_raises_in_cast_mode(form):
    def step(state):
        return {"w": state["w"], "extra": state["w"]}

    with pytest.raises(dg.StateDtypeError) as info:
        FORMS[form](dl, step, {"w": jnp.ones(2)})
    assert info.value.mismatches[0].kind == "structure"
    assert info.value.mismatches[0].path == "state"


@pytest.mark.parametrize("form", FORMS)
def test_warn_mode_warns_and_leaves_the_result_to_jax(form):
    with pytest.warns(dg.StateDtypeWarning, match="weak_type"):
        result = FORMS[form](dl, to_float16, 1.0, mode="warn")
    assert result.dtype == jnp.float16


@pytest.mark.parametrize("form", FORMS)
def test_off_mode_is_plain_jax(form):
    assert FORMS[form](dl, to_float16, 1.0, mode="off").dtype == jnp.float16
    if form in ("cond", "switch"):
        return
    with pytest.raises(TypeError, match="carry") as info:
        FORMS[form](dl, to_float32, jnp.float16(1), mode="off")
    assert not isinstance(info.value, dg.StateDtypeError)


@pytest.mark.parametrize("form", FORMS)
def test_strict_mode_reaches_the_loop_forms(form):
    with dg.strict(), pytest.raises(dg.StateDtypeError):
        FORMS[form](dl, to_float16, 1.0, mode="cast")
    with dg.strict():  # declared off stays off
        assert FORMS[form](dl, to_float16, 1.0, mode="off").dtype == jnp.float16


@pytest.mark.parametrize("form", FORMS)
def test_configured_scopes_do_not_change_the_declared_default(form):
    with dg.mode("check"):  # the loop forms default to "cast", whatever the config says
        assert aval(FORMS[form](dl, to_float16, 1.0)) == weak_float()


# --- signatures ------------------------------------------------------------------------------


def test_scan_takes_xs_length_reverse_unroll_and_extra_keywords():
    def step(total, x):
        return total + x, total

    xs = jnp.arange(4.0)
    for kwargs in ({}, {"reverse": True}, {"unroll": 2}, {"_split_transpose": False}):
        want = jax.lax.scan(step, jnp.float32(0), xs, **kwargs)
        got = dl.scan(step, jnp.float32(0), xs, **kwargs)
        np.testing.assert_array_equal(got[1], want[1])
    total, ys = dl.scan(lambda c, _: (c * 2.0, c), jnp.bfloat16(1), None, 3)
    assert total.dtype == jnp.bfloat16 and float(total) == 8.0
    assert ys.dtype == jnp.bfloat16 and ys.shape == (3,)


def test_scan_guards_only_the_carry():
    total, ys = dl.scan(
        lambda c, x: (c + x, (c + x).astype(jnp.float32)), jnp.float16(0), jnp.ones(2)
    )
    assert total.dtype == jnp.float16
    assert ys.dtype == jnp.float32


def test_scan_body_not_returning_a_pair():
    with pytest.raises(TypeError, match="expects a tuple or list holding the new state"):
        dl.scan(lambda c, x: c, jnp.float16(0), jnp.ones(2))


def test_fori_loop_takes_unroll_and_traced_bounds():
    body = lambda i, x: x + i * 0.5  # noqa: E731
    assert dl.fori_loop(0, 4, body, jnp.bfloat16(0), unroll=2).dtype == jnp.bfloat16
    jitted = jax.jit(lambda n: dl.fori_loop(0, n, body, jnp.bfloat16(0)))
    assert float(jitted(4)) == 3.0 and jitted(4).dtype == jnp.bfloat16


def test_fori_loop_state_is_the_second_parameter():
    def body(i, acc):
        return acc.astype(jnp.float32)

    with pytest.raises(dg.StateDtypeError, match="its state 'acc'") as info:
        dl.fori_loop(0, 2, body, jnp.float16(0), mode="check")
    assert info.value.mismatches[0].path == "acc"


def test_cond_several_operands_are_the_state_tuple():
    def double(a, b):
        return a, b * jnp.float32(2)

    a, b = jnp.ones(2, jnp.bfloat16), jnp.float16(1)
    with pytest.raises(dg.StateDtypeError, match="its state 'operands'") as info:
        dl.cond(False, lambda a, b: (a, b), double, a, b, mode="check")
    assert [m.path for m in info.value.mismatches] == ["operands[1]"]
    out = dl.cond(False, lambda a, b: (a, b), double, a, b)
    assert isinstance(out, tuple) and [x.dtype for x in out] == [jnp.bfloat16, jnp.float16]
    assert float(out[1]) == 2.0


def test_switch_several_operands_and_traced_index():
    branches = [lambda a, b: (a + b, b), lambda a, b: (a * jnp.float32(3), b)]
    a, b = jnp.ones(2, jnp.float16), jnp.float16(2)
    out = jax.jit(lambda i: dl.switch(i, branches, a, b))(1)
    assert [x.dtype for x in out] == [jnp.float16, jnp.float16]
    np.testing.assert_array_equal(out[0], [3.0, 3.0])


def test_cond_operand_keyword():
    out = dl.cond(True, to_float32, lambda x: x, operand=jnp.float16(1))
    assert out.dtype == jnp.float16
    with pytest.raises(TypeError, match="no positional operands"):
        dl.cond(True, to_float32, lambda x: x, jnp.float16(1), operand=jnp.float16(1))
    assert dl.switch(0, [to_float32], operand=jnp.float16(1)).dtype == jnp.float16


def test_branches_without_operands_go_to_jax_as_they_are():
    assert dl.cond(True, lambda: jnp.float16(1), lambda: jnp.float16(2)).dtype == jnp.float16
    assert float(dl.switch(1, [lambda: 1.0, lambda: 2.0])) == 2.0


def test_branch_errors_name_the_branch_that_drifted():
    def keep(x):
        return x

    def widen(x):
        return x.astype(jnp.float32)

    with pytest.raises(dg.StateDtypeError) as info:
        dl.cond(True, keep, widen, jnp.float16(1), mode="check")
    assert info.value.function.endswith(".widen")
    with pytest.raises(dg.StateDtypeError) as info:
        dl.switch(0, [keep, keep, widen], jnp.float16(1), mode="check")
    assert info.value.function.endswith(".widen")


def test_misuse():
    with pytest.raises(ValueError, match="mode must be one of"):
        dl.while_loop(lambda x: False, lambda x: x, 1.0, mode="repair")
    with pytest.raises(TypeError, match="body_fun must be a function"):
        dl.while_loop(lambda x: False, 3, 1.0)
    with pytest.raises(TypeError, match="false_fun must be a function"):
        dl.cond(True, lambda x: x, None, 1.0)
    with pytest.raises(TypeError, match=r"branches\[1\] must be a function"):
        dl.switch(0, [lambda x: x, "no"], 1.0)


def test_exceptions_from_the_body_pass_through():
    def body(x):
        raise ZeroDivisionError("from the body")

    with pytest.raises(ZeroDivisionError, match="from the body"):
        dl.while_loop(lambda x: x < 1, body, 0.0)


# --- costs and composition -------------------------------------------------------------------


def test_check_mode_adds_nothing_to_the_jaxpr_and_cast_one_conversion():
    def body(x):
        return x * 2

    def run(form, **kw):
        return jax.make_jaxpr(lambda x: form(lambda c: c < 10, body, x, **kw))(jnp.float16(1))

    assert str(run(dl.while_loop, mode="check")) == str(run(jax.lax.while_loop))

    def widen(x):
        return x * jnp.float32(2)

    plain = jax.make_jaxpr(lambda x: jax.lax.while_loop(lambda c: c < 10, widen, x))(1.0)
    cast = jax.make_jaxpr(lambda x: dl.while_loop(lambda c: c < 10, widen, x))(jnp.float16(1))
    assert str(cast).count("convert_element_type") == str(plain).count("convert_element_type") + 1


def test_eager_loops_reuse_one_traced_body():
    traces = []

    def body(x):
        traces.append(1)
        return x + jnp.float32(1)

    for _ in range(4):
        assert dl.while_loop(lambda x: x < 3, body, jnp.float16(0)).dtype == jnp.float16
    assert len(traces) == 1


def test_cached_guards_do_not_keep_functions_alive():
    def make_body():
        return lambda x: x * 2

    body = make_body()
    dl.while_loop(lambda x: x < 3, body, jnp.float16(1))
    assert any(entry[0]() is body for entry in dl._CACHE.values())
    key = id(body)
    del body
    jax.clear_caches()
    gc.collect()
    assert key not in dl._CACHE
    assert all(entry[0]() is not None for entry in dl._CACHE.values())


def test_methods_and_partials_as_bodies():
    import functools

    class Model:
        scale = jnp.float32(2)

        def step(self, state):
            return state * self.scale

    assert dl.fori_loop(0, 2, lambda i, s: Model().step(s), jnp.float16(1)).dtype == jnp.float16
    with pytest.raises(dg.StateDtypeError, match=r"Model\.step") as info:
        dl.while_loop(lambda s: s < 4, Model().step, jnp.float16(1), mode="check")
    assert info.value.mismatches[0].path == "state"

    def scaled(factor, x):
        return x * factor

    body = functools.partial(scaled, jnp.float32(3))
    assert dl.while_loop(lambda s: s < 4, body, jnp.bfloat16(1)).dtype == jnp.bfloat16


def test_inside_jit_vmap_and_grad():
    def run(x):
        return dl.fori_loop(0, 3, lambda i, c: c * jnp.float32(1.5), x)

    xs = jnp.ones((4, 2), jnp.bfloat16)
    assert jax.jit(jax.vmap(run))(xs).dtype == jnp.bfloat16
    grad = jax.grad(lambda x: dl.scan(lambda c, _: (c * 1.5, None), x, length=2)[0])(1.0)
    assert float(grad) == pytest.approx(2.25)


def test_no_drift_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dl.while_loop(lambda x: x < 5, lambda x: x + 1, jnp.int32(0), mode="warn")
    assert int(out) == 5


FLOATS = ["float16", "bfloat16", "float32"]


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(FLOATS), st.sampled_from(FLOATS), st.sampled_from(list(FORMS)))
def test_cast_mode_keeps_any_carry_dtype(init_dtype, body_dtype, form):
    def step(x):
        return (x + 1).astype(body_dtype)

    init = jnp.ones(2, init_dtype)
    assert aval(FORMS[form](dl, step, init)) == aval(init)
