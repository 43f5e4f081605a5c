"""Small, from-scratch reproductions of the seed bugs (no Optax needed)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest
from conftest import compiles

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, state_dtype_invariant
from jax_dtypeguard._compat import get_aval
from jax_dtypeguard.testing import x64_for


class ZoomState(NamedTuple):
    """Like a zoom line search's state: params-typed fields and a value."""

    params: jax.Array
    stepsize: jax.Array
    value: jax.Array
    done: jax.Array


def zoom_step(state: ZoomState, value: jax.Array) -> ZoomState:
    stepsize = state.stepsize * 0.5
    return ZoomState(
        params=state.params - stepsize * value,  # float16 params pick up value's float64
        stepsize=stepsize,
        value=jnp.minimum(state.value, value),
        done=state.done | (value < 1.0),
    )


def f16_zoom_state():
    return ZoomState(jnp.ones(3, jnp.float16), jnp.float16(1), jnp.float16(3), jnp.bool_(False))


def test_float16_state_with_float64_value_is_caught_naming_every_leaf():
    with x64_for("float64"):
        guarded = state_dtype_invariant(zoom_step)
        with pytest.raises(StateDtypeError) as caught:
            jax.jit(guarded)(f16_zoom_state(), jnp.float64(2.0))
    assert [(m.path, m.kind) for m in caught.value.mismatches] == [
        ("state.params", "dtype"),
        ("state.value", "dtype"),
    ]
    message = str(caught.value)
    assert "state.params: float16[3] -> float64[3]" in message
    assert "state.value: float16[] -> float64[]" in message
    assert "zoom_step (tests/test_seed_repro.py:" in message


def test_unguarded_while_loop_fails_inside_jax_and_cast_makes_it_run():
    def loop(step):
        def body(carry):
            state, i = carry
            return step(state, jnp.float64(2.0) / (i + 1)), i + 1

        return jax.lax.while_loop(lambda c: c[1] < 5, body, (f16_zoom_state(), 0))

    with x64_for("float64"):
        with pytest.raises(TypeError, match="carry"):
            loop(zoom_step)
        state, steps = loop(state_dtype_invariant(zoom_step, mode="cast"))
        assert int(steps) == 5
        assert jax.tree.map(lambda x: x.dtype, state) == jax.tree.map(
            lambda x: x.dtype, f16_zoom_state()
        )


def test_guarded_while_loop_check_mode_names_the_step_not_jax():
    with x64_for("float64"), pytest.raises(StateDtypeError, match=r"zoom_step \("):
        jax.lax.while_loop(
            lambda s: ~s.done,
            lambda s: state_dtype_invariant(zoom_step)(s, jnp.float64(0.5)),
            f16_zoom_state(),
        )


class LinesearchInfo(NamedTuple):
    num_linesearch_steps: int | jax.Array | None
    value: jax.Array


def test_zero_in_init_none_after_update_is_a_structure_mismatch():
    @state_dtype_invariant
    def update(info: LinesearchInfo) -> LinesearchInfo:
        return LinesearchInfo(None, info.value)

    with pytest.raises(StateDtypeError) as caught:
        update(LinesearchInfo(0, jnp.float32(1)))
    (mismatch,) = caught.value.mismatches
    assert (mismatch.path, mismatch.kind) == ("info.num_linesearch_steps", "structure")
    assert "info.num_linesearch_steps: weak int32[] (Python int) -> None" in str(caught.value)

    with pytest.raises(StateDtypeError, match="num_linesearch_steps"):
        state_dtype_invariant(update.__wrapped__, mode="cast")(LinesearchInfo(0, jnp.float32(1)))


class Info(NamedTuple):
    num_steps: jax.Array
    error: jax.Array


def flip_weak(info: Info) -> Info:
    return Info(info.num_steps + jnp.int32(1), jnp.maximum(info.error, jnp.float32(0)))


def weak_info():
    return Info(jnp.asarray(0), jnp.asarray(0.0))  # both weakly typed, as a literal init gives


def test_weak_type_drift_makes_jit_compile_twice_and_cast_compiles_once():
    assert get_aval(weak_info().num_steps).weak_type
    plain = jax.jit(flip_weak)
    info = weak_info()
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(3):
            info = plain(info)
    assert compiles(report, plain) == 2

    with pytest.raises(StateDtypeError, match=r"info\.num_steps: weak int32\[\] -> int32\[\]"):
        jax.jit(state_dtype_invariant(flip_weak))(weak_info())

    cast = jax.jit(state_dtype_invariant(flip_weak, mode="cast"))
    info = weak_info()
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(3):
            info = cast(info)
    assert compiles(report, cast) == 1
    assert get_aval(info.num_steps).weak_type and get_aval(info.error).weak_type
    assert int(info.num_steps) == 3


@pytest.mark.parametrize(
    "transform",
    ["jit", "vmap", "grad", "jvp", "remat", "scan", "cond", "switch", "fori_loop"],
)
def test_drift_is_caught_under_each_transformation(transform, x64):
    guarded = state_dtype_invariant(lambda s: s * jnp.float32(2))
    cast = state_dtype_invariant(lambda s: s * jnp.float32(2), mode="cast")
    s = jnp.ones(2, jnp.float16)
    runs = {
        "jit": lambda g: jax.jit(g)(s),
        "vmap": lambda g: jax.vmap(g)(s),
        "grad": lambda g: jax.grad(lambda x: (g(x).astype(jnp.float32).sum(), g(x)), has_aux=True)(
            s
        )[1],
        "jvp": lambda g: jax.jvp(g, (s,), (s,))[0],
        "remat": lambda g: jax.checkpoint(g)(s),
        "scan": lambda g: jax.lax.scan(lambda c, _: (g(c), None), s, length=2)[0],
        "cond": lambda g: jax.lax.cond(True, g, lambda x: x, s),
        "switch": lambda g: jax.lax.switch(0, [g, lambda x: x], s),
        "fori_loop": lambda g: jax.lax.fori_loop(0, 2, lambda i, c: g(c), s),
    }
    with pytest.raises(StateDtypeError, match=r"s: float16\[(2)?\] -> float32"):
        runs[transform](guarded)
    out = runs[transform](cast)
    assert out.dtype == jnp.float16
    assert jnp.allclose(
        out.astype(jnp.float32), 2.0 ** (2 if transform in ("scan", "fori_loop") else 1)
    )
