"""The transformation matrix: the guard under every JAX transformation.

Each transformation gets a step that keeps its state (passes, result
unchanged), one that drifts (check mode raises naming the leaf, cast mode
returns the input's dtypes), with x64 off and on where dtypes matter.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import F16, F32, compiles

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, state_dtype_invariant


def make_state():
    return {"n": jnp.int32(0), "w": jnp.ones(3, F16)}


def drifting(state, x):
    """Promotes `w` to float32 (x is float32)."""
    return {"n": state["n"] + 1, "w": state["w"] * x}


def keeping(state, x):
    return {"n": state["n"] + 1, "w": state["w"] * x.astype(state["w"].dtype)}


X = jnp.full(3, 2.0, F32)


def paths(error: StateDtypeError) -> list[tuple[str, str]]:
    return [(m.path, m.kind) for m in error.mismatches]


def assert_kept(state):
    assert state["w"].dtype == F16 and state["n"].dtype == jnp.int32
    assert not state["w"].aval.weak_type


def primitives(jaxpr) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] += 1
    return counts


# --- jit and the jaxpr contract ------------------------------------------------------


def test_jit(x64):
    assert_kept(jax.jit(state_dtype_invariant(keeping))(make_state(), X))
    with pytest.raises(StateDtypeError) as info:
        jax.jit(state_dtype_invariant(drifting))(make_state(), X)
    assert paths(info.value) == [("state['w']", "dtype")]
    result = jax.jit(state_dtype_invariant(drifting, mode="cast"))(make_state(), X)
    assert_kept(result)
    np.testing.assert_array_equal(result["w"], np.full(3, 2.0, np.float16))


def test_check_mode_jaxpr_is_identical_to_undecorated(x64):
    for step in (keeping,):
        plain = jax.make_jaxpr(step)(make_state(), X)
        guarded = jax.make_jaxpr(state_dtype_invariant(step))(make_state(), X)
        assert str(guarded) == str(plain)
        cast = jax.make_jaxpr(state_dtype_invariant(step, mode="cast"))(make_state(), X)
        assert str(cast) == str(plain)


def test_cast_adds_exactly_one_conversion_per_drifting_leaf(x64):
    def two_drift(state, x):
        return {"a": state["a"] * x, "b": state["b"] + x[:2], "c": state["c"] + 1}

    state = {"a": jnp.ones(3, F16), "b": jnp.ones(2, jnp.bfloat16), "c": jnp.zeros((), jnp.int8)}
    plain = jax.make_jaxpr(two_drift)(state, X).jaxpr
    cast = jax.make_jaxpr(state_dtype_invariant(two_drift, mode="cast"))(state, X).jaxpr
    added = primitives(cast) - primitives(plain)
    assert added == collections.Counter({"convert_element_type": 2})
    assert not primitives(plain) - primitives(cast)
    result = state_dtype_invariant(two_drift, mode="cast")(state, X)
    assert [leaf.dtype for leaf in jax.tree_util.tree_leaves(result)] == [
        F16,
        jnp.bfloat16,
        jnp.int8,
    ]


def test_cast_restores_a_weak_type_with_one_conversion():
    def strengthen(state):
        return state + jnp.ones((), F32)  # weak float32 -> strong float32

    state = jnp.asarray(1.0)  # weak
    assert state.aval.weak_type
    cast = state_dtype_invariant(strengthen, mode="cast")
    plain = jax.make_jaxpr(strengthen)(state).jaxpr
    guarded = jax.make_jaxpr(cast)(state).jaxpr
    assert primitives(guarded) - primitives(plain) == collections.Counter(
        {"convert_element_type": 1}
    )
    assert jax.jit(cast)(state).aval.weak_type


# --- vmap ----------------------------------------------------------------------------


@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0)], ids=str)
def test_vmap(in_axes):
    batch = 4
    state = make_state()
    batched_state = jax.tree_util.tree_map(lambda a: jnp.stack([a] * batch), state)
    batched_x = jnp.stack([X] * batch)
    args = (batched_state if in_axes[0] == 0 else state, batched_x if in_axes[1] == 0 else X)
    kept = jax.vmap(state_dtype_invariant(keeping), in_axes=in_axes)(*args)
    assert_kept(kept)
    assert kept["w"].shape == (batch, 3)
    with pytest.raises(StateDtypeError) as info:
        jax.vmap(state_dtype_invariant(drifting), in_axes=in_axes)(*args)
    assert paths(info.value) == [("state['w']", "dtype")]
    cast = jax.vmap(state_dtype_invariant(drifting, mode="cast"), in_axes=in_axes)(*args)
    assert_kept(cast)
    assert cast["w"].shape == (batch, 3)


# --- autodiff ------------------------------------------------------------------------


def _w_step(mode):
    @state_dtype_invariant(mode=mode)
    def step(w, x):
        return w * x

    return step


def test_grad(x64):
    w = jnp.ones(3, F16)
    loss = lambda step: lambda w: step(w, X).astype(F32).sum()  # noqa: E731
    grad = jax.grad(loss(_w_step("cast")))(w)
    assert grad.dtype == F16
    np.testing.assert_array_equal(grad, np.full(3, 2.0, np.float16))
    with pytest.raises(StateDtypeError):
        jax.grad(loss(_w_step("check")))(w)
    grad_keep = jax.grad(lambda w: state_dtype_invariant(keeping)({"n": 0, "w": w}, X)["w"].sum())
    assert grad_keep(jnp.ones(3, F32)).dtype == F32


def test_jvp_and_vjp():
    w = jnp.ones(3, F16)
    step = _w_step("cast")
    primal, tangent = jax.jvp(lambda w: step(w, X), (w,), (jnp.ones(3, F16),))
    assert primal.dtype == F16 and tangent.dtype == F16
    out, pullback = jax.vjp(lambda w: step(w, X), w)
    assert out.dtype == F16
    (cotangent,) = pullback(jnp.ones(3, F16))
    assert cotangent.dtype == F16
    with pytest.raises(StateDtypeError):
        jax.jvp(lambda w: _w_step("check")(w, X), (w,), (jnp.ones(3, F16),))
    with pytest.raises(StateDtypeError):
        jax.vjp(lambda w: _w_step("check")(w, X), w)


def test_remat():
    state = make_state()
    assert_kept(jax.checkpoint(state_dtype_invariant(keeping))(state, X))
    assert_kept(jax.jit(jax.checkpoint(state_dtype_invariant(drifting, mode="cast")))(state, X))
    with pytest.raises(StateDtypeError):
        jax.checkpoint(state_dtype_invariant(drifting))(state, X)
    grad = jax.grad(lambda w: jax.checkpoint(_w_step("cast"))(w, X).astype(F32).sum())
    assert grad(jnp.ones(3, F16)).dtype == F16


# --- loops and branches ------------------------------------------------------------


def test_scan(x64):
    xs = jnp.stack([X] * 5)

    def body(state, x):
        new = drifting(state, x)
        return new, new["w"].sum()

    with pytest.raises(StateDtypeError) as info:
        jax.lax.scan(state_dtype_invariant(body, out=0), make_state(), xs)
    assert paths(info.value) == [("state['w']", "dtype")]
    final, ys = jax.lax.scan(state_dtype_invariant(body, out=0, mode="cast"), make_state(), xs)
    assert_kept(final)
    assert int(final["n"]) == 5 and ys.dtype == F32
    final, _ = dg.lax.scan(body, make_state(), xs)
    assert_kept(final)


def test_while_loop(x64):
    cond = lambda s: s["n"] < 3  # noqa: E731
    with pytest.raises(StateDtypeError) as info:
        jax.lax.while_loop(cond, state_dtype_invariant(lambda s: drifting(s, X)), make_state())
    assert "s['w']: float16[3] -> float32[3]" in str(info.value)
    body = state_dtype_invariant(lambda s: drifting(s, X), mode="cast")
    final = jax.lax.while_loop(cond, body, make_state())
    assert_kept(final)
    np.testing.assert_array_equal(final["w"], np.full(3, 8.0, np.float16))
    assert_kept(dg.lax.while_loop(cond, lambda s: drifting(s, X), make_state()))


def test_fori_loop(x64):
    def body(i, state):
        return drifting(state, X)

    with pytest.raises(StateDtypeError):
        jax.lax.fori_loop(0, 3, state_dtype_invariant(body, state=1), make_state())
    final = jax.lax.fori_loop(0, 3, state_dtype_invariant(body, state=1, mode="cast"), make_state())
    assert_kept(final)
    assert int(final["n"]) == 3
    assert_kept(dg.lax.fori_loop(0, 3, body, make_state()))


def test_cond_and_switch(x64):
    drift = state_dtype_invariant(lambda s: drifting(s, X))
    keep = state_dtype_invariant(lambda s: keeping(s, X))
    with pytest.raises(StateDtypeError):
        jax.lax.cond(True, keep, drift, make_state())
    with pytest.raises(StateDtypeError):
        jax.lax.switch(1, [keep, drift, keep], make_state())
    cast = state_dtype_invariant(lambda s: drifting(s, X), mode="cast")
    assert_kept(jax.lax.cond(False, keep, cast, make_state()))
    assert_kept(jax.lax.switch(2, [keep, keep, cast], make_state()))
    assert_kept(dg.lax.cond(True, lambda s: drifting(s, X), lambda s: s, make_state()))
    assert_kept(dg.lax.switch(0, [lambda s: drifting(s, X), lambda s: s], make_state()))


# --- shard_map -------------------------------------------------------------------------


def _shard_map():
    if hasattr(jax, "shard_map"):
        return jax.shard_map
    from jax.experimental.shard_map import shard_map

    return shard_map


def test_shard_map():
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS)")
    mesh = jax.sharding.Mesh(np.array(devices[:8]), ("i",))
    spec = jax.sharding.PartitionSpec("i")
    shard_map = _shard_map()
    state = jnp.ones(16, F16)
    x = jnp.full(16, 2.0, F32)

    def run(mode):
        step = _w_step(mode)
        mapped = shard_map(step, mesh=mesh, in_specs=(spec, spec), out_specs=spec)
        return jax.jit(mapped)(state, x)

    result = run("cast")
    assert result.dtype == F16 and result.shape == (16,)
    np.testing.assert_array_equal(result, np.full(16, 2.0, np.float16))
    with pytest.raises(StateDtypeError):
        run("check")


# --- custom derivatives as steps -------------------------------------------------------


def test_custom_jvp_step():
    @jax.custom_jvp
    def step(w, x):
        return w * x

    @step.defjvp
    def _(primals, tangents):
        (w, x), (dw, dx) = primals, tangents
        return step(w, x), dw * x + w * dx

    guarded = state_dtype_invariant(step, mode="cast")
    assert guarded(jnp.ones(3, F16), X).dtype == F16
    assert jax.jit(guarded)(jnp.ones(3, F16), X).dtype == F16
    grad = jax.grad(lambda w: guarded(w, X).astype(F32).sum())(jnp.ones(3, F16))
    assert grad.dtype == F16
    with pytest.raises(StateDtypeError):
        state_dtype_invariant(step)(jnp.ones(3, F16), X)
    # And the other way round: a guarded function given a custom rule.
    wrapped = jax.custom_jvp(_w_step("cast"))
    wrapped.defjvp(lambda p, t: (wrapped(*p), t[0]))
    assert jax.jvp(lambda w: wrapped(w, X), (jnp.ones(3, F16),), (jnp.ones(3, F16),))[0].dtype == (
        F16
    )


def test_custom_vjp_step():
    @jax.custom_vjp
    def step(w, x):
        return w * x

    def bwd(res, g):
        w, x = res
        return (g * x).astype(w.dtype), (g * w).astype(x.dtype)

    step.defvjp(lambda w, x: (step(w, x), (w, x)), bwd)
    guarded = state_dtype_invariant(step, mode="cast")
    assert jax.jit(guarded)(jnp.ones(3, F16), X).dtype == F16
    grad = jax.grad(lambda w: guarded(w, X).astype(F32).sum())(jnp.ones(3, F16))
    assert grad.dtype == F16
    with pytest.raises(StateDtypeError):
        jax.jit(state_dtype_invariant(step))(jnp.ones(3, F16), X)


# --- nesting, methods, donation ------------------------------------------------------


def test_nested_decorated_functions():
    inner_calls = []

    @state_dtype_invariant
    def inner(state, x):
        inner_calls.append(1)
        return drifting(state, x)

    @state_dtype_invariant(mode="cast")
    def outer_cast(state, x):
        return state_dtype_invariant(drifting, mode="cast")(state, x)

    @state_dtype_invariant
    def outer(state, x):
        return inner(state, x)

    with pytest.raises(StateDtypeError) as info:
        jax.jit(outer)(make_state(), X)
    assert info.value.function.endswith("inner")
    assert_kept(jax.jit(outer_cast)(make_state(), X))
    # An inner cast hides the drift from an outer check: both pass.
    assert_kept(jax.jit(state_dtype_invariant(outer_cast))(make_state(), X))
    # The outer guard sees what the inner one let through.
    off_inside = state_dtype_invariant(state_dtype_invariant(drifting, mode="off"))
    with pytest.raises(StateDtypeError) as info:
        jax.jit(off_inside)(make_state(), X)
    assert paths(info.value) == [("state['w']", "dtype")]


def test_methods_on_equinox_modules():
    eqx = pytest.importorskip("equinox")

    class Model(eqx.Module):
        scale: jax.Array

        @state_dtype_invariant(mode="cast")
        def step(self, state, x):
            return {"n": state["n"] + 1, "w": state["w"] * self.scale * x}

        @state_dtype_invariant
        def strict_step(self, state, x):
            return {"n": state["n"] + 1, "w": state["w"] * self.scale * x}

    model = Model(jnp.float32(2.0))
    assert_kept(model.step(make_state(), X))
    assert_kept(eqx.filter_jit(model.step)(make_state(), X))
    assert_kept(eqx.filter_jit(Model.step)(model, make_state(), X))
    with pytest.raises(StateDtypeError) as info:
        eqx.filter_jit(model.strict_step)(make_state(), X)
    assert "Model.strict_step" in str(info.value)
    assert paths(info.value) == [("state['w']", "dtype")]


def test_donated_arguments():
    step = jax.jit(state_dtype_invariant(drifting, mode="cast"), donate_argnums=0)
    state = make_state()
    for _ in range(3):
        state = step(state, X)
    assert_kept(state)
    assert int(state["n"]) == 3
    kept = jax.jit(state_dtype_invariant(keeping), donate_argnums=(0,))
    state = kept(make_state(), X)
    assert_kept(state)
    with pytest.raises(StateDtypeError):
        jax.jit(state_dtype_invariant(drifting), donate_argnums=0)(make_state(), X)


def test_jit_compiles_once_with_cast():
    """Cast mode makes a drifting step compile once over a loop of calls."""
    step = jax.jit(state_dtype_invariant(drifting, mode="cast"))
    plain = jax.jit(drifting)
    with dg.explain_recompiles(quiet=True) as report:
        state = make_state()
        for _ in range(4):
            state = step(state, X)
    assert compiles(report, step) == 1
    with dg.explain_recompiles(quiet=True) as report:
        state = make_state()
        for _ in range(4):
            state = plain(state, X)
    assert compiles(report, plain) == 2  # the control: without the guard it compiles again


@pytest.mark.parametrize("transform", ["jit", "vmap", "grad", "checkpoint"])
def test_strict_mode_reaches_every_transform(transform):
    step = state_dtype_invariant(_raw, mode="cast")
    w = jnp.ones(3, F16)
    wrapped = {
        "jit": jax.jit(step),
        "vmap": jax.vmap(step, in_axes=(0, None)),
        "grad": jax.grad(lambda w, x: step(w, x).astype(F32).sum()),
        "checkpoint": jax.checkpoint(step),
    }[transform]
    arg = jnp.stack([w, w]) if transform == "vmap" else w
    wrapped(arg, X)  # cast mode: fine
    with dg.strict(), pytest.raises(StateDtypeError):
        jax.clear_caches()
        wrapped(arg, X)


def _raw(w, x):
    return w * x
