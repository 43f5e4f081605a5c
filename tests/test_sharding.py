"""Many devices: under explicit mesh axes a leaf's sharding is part of its type.

tests/conftest.py gives JAX 8 simulated CPU devices. A step that reshards a
state leaf drifts (kind "sharding"); one that keeps the sharding passes;
cast mode does not reshard: it raises, pointing to `jax.sharding.reshard`.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, state_dtype_invariant

AxisType = getattr(jax.sharding, "AxisType", None)
pytestmark = pytest.mark.skipif(
    AxisType is None or not hasattr(AxisType, "Explicit") or not hasattr(jax.sharding, "reshard"),
    reason="this JAX has no explicit sharding (jax.sharding.AxisType.Explicit)",
)
P = jax.sharding.PartitionSpec


def test_eight_simulated_devices():
    assert len(jax.devices()) == 8


def _use(mesh):
    if hasattr(jax, "set_mesh"):
        return jax.set_mesh(mesh)
    return jax.sharding.use_mesh(mesh)


@pytest.fixture
def mesh():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    mesh = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Explicit,) * 2)
    with _use(mesh):
        yield mesh


def make_state():
    return {
        "w": jax.device_put(jnp.ones((8, 4), jnp.float16), P("x", "y")),
        "b": jax.device_put(jnp.zeros((8,), jnp.float32), P("x")),
        "step": jax.device_put(jnp.zeros((), jnp.int32), P()),
    }


def keeps(state):
    return {"w": state["w"] * 2, "b": state["b"] + 1, "step": state["step"] + 1}


def reshards(state):
    return {
        "w": jax.sharding.reshard(state["w"] * 2, P("x", None)),
        "b": state["b"] + 1,
        "step": state["step"] + 1,
    }


JIT = [False, True]


@pytest.mark.parametrize("jit", JIT, ids=["eager", "jit"])
def test_keeping_the_sharding_passes(mesh, jit):
    for mode in ("check", "cast"):
        guarded = state_dtype_invariant(keeps, mode=mode)
        result = (jax.jit(guarded) if jit else guarded)(make_state())
        assert jax.typeof(result["w"]).sharding.spec == P("x", "y")
        np.testing.assert_array_equal(result["w"], np.full((8, 4), 2, np.float16))


@pytest.mark.parametrize("jit", JIT, ids=["eager", "jit"])
def test_a_resharded_leaf_is_sharding_drift(mesh, jit):
    guarded = state_dtype_invariant(reshards)
    with pytest.raises(StateDtypeError) as info:
        (jax.jit(guarded) if jit else guarded)(make_state())
    (mismatch,) = info.value.mismatches
    assert (mismatch.path, mismatch.kind) == ("state['w']", "sharding")
    assert mismatch.expected == "float16[8,4] sharded P('x', 'y')"
    assert mismatch.got == "float16[8,4] sharded P('x', None)"
    text = str(info.value)
    assert (
        "state['w']: float16[8,4] sharded P('x', 'y') -> float16[8,4] sharded P('x', None)" in text
    )
    assert "[sharding]" in text
    assert "jax.sharding.reshard" in text


@pytest.mark.parametrize("jit", JIT, ids=["eager", "jit"])
def test_cast_mode_does_not_reshard(mesh, jit):
    guarded = state_dtype_invariant(reshards, mode="cast")
    with pytest.raises(StateDtypeError) as info:
        (jax.jit(guarded) if jit else guarded)(make_state())
    assert [(m.path, m.kind) for m in info.value.mismatches] == [("state['w']", "sharding")]
    assert "casting cannot fix these: reshard the leaf back with `jax.sharding.reshard`" in str(
        info.value
    )


def test_cast_mode_fixes_dtype_drift_and_keeps_the_sharding(mesh):
    def promotes(state):
        return {**state, "w": state["w"] * jnp.float32(3)}

    result = jax.jit(state_dtype_invariant(promotes, mode="cast"))(make_state())
    assert result["w"].dtype == jnp.float16
    assert jax.typeof(result["w"]).sharding.spec == P("x", "y")
    np.testing.assert_array_equal(result["w"], np.full((8, 4), 3, np.float16))


def test_dtype_and_sharding_drift_on_one_leaf(mesh):
    def both(state):
        return {**state, "b": jax.sharding.reshard(state["b"] * jnp.float16(2), P())}

    state = make_state()
    state["b"] = jax.device_put(jnp.zeros((8,), jnp.bfloat16), P("x"))
    for mode in ("check", "cast"):
        with pytest.raises(StateDtypeError) as info:
            jax.jit(state_dtype_invariant(both, mode=mode))(state)
        kinds = [(m.path, m.kind) for m in info.value.mismatches]
        assert sorted(kinds) == [("state['b']", "dtype"), ("state['b']", "sharding")]


def test_a_fresh_replicated_leaf_is_drift(mesh):
    def fresh(state):
        return {**state, "w": jnp.zeros((8, 4), jnp.float16)}

    with pytest.raises(StateDtypeError) as info:
        jax.jit(state_dtype_invariant(fresh))(make_state())
    assert info.value.mismatches[0].got == "float16[8,4] sharded P(None, None)"


def test_resharding_inside_a_loop_names_the_body(mesh):
    def body(state):
        return reshards(state)

    with pytest.raises(StateDtypeError) as info:
        dg.lax.while_loop(lambda s: s["step"] < 2, body, make_state())
    assert info.value.function.endswith("body")
    assert [m.kind for m in info.value.mismatches] == ["sharding"]
    final = dg.lax.while_loop(lambda s: s["step"] < 2, keeps, make_state())
    assert jax.typeof(final["w"]).sharding.spec == P("x", "y")


def test_strict_mode_reports_sharding_too(mesh):
    guarded = state_dtype_invariant(reshards, mode="cast")
    with dg.strict(), pytest.raises(StateDtypeError) as info:
        jax.jit(guarded)(make_state())
    assert [m.kind for m in info.value.mismatches] == ["sharding"]


def test_auto_axes_make_sharding_no_part_of_the_type():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, P("x", None))
    replicated = jax.sharding.NamedSharding(mesh, P())
    state = jax.device_put(jnp.ones((8, 4)), sharding)

    def step(state):
        return jax.lax.with_sharding_constraint(state * 2, replicated)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_use(mesh))
        result = jax.jit(state_dtype_invariant(step))(state)
    assert result.sharding.is_equivalent_to(replicated, 2)
