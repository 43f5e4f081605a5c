"""Fails loudly if JAX moves a private API that jax_dtypeguard relies on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dtypeguard import _compat


def test_private_weak_cast_is_where_we_expect_it():
    from jax._src.lax import lax as lax_internal

    assert callable(lax_internal._convert_element_type), "JAX moved _convert_element_type"


@pytest.mark.parametrize("weak_type", [True, False])
def test_convert_element_type_sets_dtype_and_weak_type(weak_type):
    def cast(x):
        return _compat.convert_element_type(x, np.dtype("float16"), weak_type)

    out = jax.eval_shape(cast, jnp.ones(3, jnp.float32))
    assert out.dtype == jnp.float16
    assert out.weak_type is weak_type
    jaxpr = jax.make_jaxpr(cast)(jnp.ones(3, jnp.float32))
    assert [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns] == ["convert_element_type"]


def test_convert_element_type_restores_weak_type_of_same_dtype():
    out = jax.eval_shape(lambda x: _compat.convert_element_type(x, x.dtype, True), jnp.ones(2))
    assert out.weak_type


def test_get_aval_types_python_scalars_as_weak():
    assert _compat.get_aval(1.0).weak_type
    assert not _compat.get_aval(np.float32(1.0)).weak_type


def test_enable_x64_restores_the_callers_setting():
    before = _compat.x64_enabled()
    with _compat.enable_x64(not before):
        assert _compat.x64_enabled() is (not before)
        with _compat.enable_x64(before):
            assert _compat.x64_enabled() is before
        assert _compat.x64_enabled() is (not before)
    assert _compat.x64_enabled() is before


def test_explicit_sharding_is_none_without_explicit_axes():
    assert _compat.explicit_sharding(_compat.get_aval(jnp.ones((2, 2)))) is None


def test_jit_cache_size_counts_compilations():
    f = jax.jit(lambda x: x + 1)
    f(jnp.ones(2))
    f(jnp.ones(2))
    assert _compat.jit_cache_size(f) == 1
    f(jnp.ones(3))
    assert _compat.jit_cache_size(f) == 2
