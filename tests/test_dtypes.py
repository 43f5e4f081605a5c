"""Every dtype JAX has is a legal leaf: held, drift caught, castable ones cast."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dtypeguard import StateDtypeError, state_dtype_invariant
from jax_dtypeguard.testing import x64_for

NAMES = [
    "bool",
    "int4", "int8", "int16", "int32", "int64",
    "uint4", "uint8", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64",
    "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e4m3b11fnuz", "float8_e3m4", "float8_e4m3", "float8_e8m0fnu", "float4_e2m1fn",
]  # fmt: skip
DTYPES = [getattr(jnp, name) for name in NAMES if hasattr(jnp, name)]


def make(dtype):
    return jnp.zeros((2,), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
def test_each_dtype_holds_drifts_and_casts(dtype, x64):
    if not x64 and np.dtype(dtype).itemsize >= (16 if np.dtype(dtype).kind == "c" else 8):
        pytest.skip("64-bit dtypes need x64")
    with x64_for(np.dtype(dtype).name + ("+x64" if x64 else "")):  # x32: the suite's x64 off
        state = make(dtype)
        held = state_dtype_invariant(lambda s: s)
        assert held(state).dtype == state.dtype
        assert jax.jit(held)(state).dtype == state.dtype

        # Within a kind, cast mode repairs the drift; across kinds it never casts.
        within = _another_of_the_same_kind(state.dtype)
        across = jnp.float32 if not jnp.issubdtype(state.dtype, jnp.floating) else jnp.int32

        def change(s, to):
            return (s.real if jnp.iscomplexobj(s) and to != jnp.complex64 else s).astype(to)

        for other in (within, across):
            drift = state_dtype_invariant(functools.partial(change, to=other))
            with pytest.raises(StateDtypeError, match=rf"  s: {state.dtype}\[2\] -> "):
                jax.jit(drift)(state)
        if within is not None:
            cast = jax.jit(state_dtype_invariant(functools.partial(change, to=within), mode="cast"))
            assert cast(state).dtype == state.dtype
        cast_across = state_dtype_invariant(functools.partial(change, to=across), mode="cast")
        with pytest.raises(StateDtypeError, match=r"changed kind"):
            jax.jit(cast_across)(state)


def _another_of_the_same_kind(dtype):
    """A dtype of `dtype`'s kind (float, int, uint, complex) that x32 JAX keeps, or None."""
    for kind, candidates in (
        (jnp.bool_, ()),
        (jnp.complexfloating, (jnp.complex64,)),
        (jnp.floating, (jnp.float32, jnp.float16)),
        (jnp.unsignedinteger, (jnp.uint32, jnp.uint8)),
        (jnp.signedinteger, (jnp.int32, jnp.int8)),
    ):
        if jnp.issubdtype(dtype, kind):
            return next((c for c in candidates if jnp.dtype(c) != dtype), None)
    return None


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_typed_keys_hold_and_are_never_cast(impl):
    key = jax.random.key(0, impl=impl)
    split = state_dtype_invariant(lambda k: jax.random.split(k, 1)[0])
    assert jax.jit(split)(key).dtype == key.dtype
    with pytest.raises(StateDtypeError, match=r"keys: key<.*>\[\] -> uint32"):
        jax.jit(state_dtype_invariant(jax.random.key_data, mode="cast"))(key)


def test_float0_leaves_hold():
    zero = np.zeros((3,), jax.dtypes.float0)
    assert state_dtype_invariant(lambda s: s)(zero).dtype == jax.dtypes.float0


def test_grad_of_int_input_float0_in_state():
    def loss(w, n):
        return (w * n).sum()

    _, g_n = jax.grad(loss, argnums=(0, 1), allow_int=True)(jnp.ones(2), jnp.int32(3))
    guarded = state_dtype_invariant(lambda s: s)
    assert guarded(g_n).dtype == jax.dtypes.float0


@pytest.mark.parametrize("value", [True, 1, 1.0, 1j], ids=type)
def test_python_scalar_states(value, x64):
    assert state_dtype_invariant(lambda s: s)(value) == value
    assert jax.jit(state_dtype_invariant(lambda s: s))(value) == value
    if not isinstance(value, bool):
        assert jax.jit(state_dtype_invariant(lambda s: s * 1))(value) == value
