"""Cases for the `jax-dtypeguard audit` tests: one that holds, one that drifts."""

import jax.numpy as jnp

from jax_dtypeguard.testing import Case


def _decay(state, rate):
    return state * rate  # `rate` keeps the state's dtype: holds


def _promote(state, grad):
    return state + grad.astype(jnp.float32)  # float32 grads: a float16 state drifts


def _ones(dtype):
    return jnp.ones(3, dtype)


STABLE = Case("decay", _decay, _ones, lambda dtype: (jnp.asarray(0.5, dtype),))
DRIFTING = Case("promote", _promote, _ones, lambda dtype: (jnp.ones(3, dtype),))

cases = [STABLE, DRIFTING]
stable = [STABLE]


def make_cases():
    return [STABLE, DRIFTING]


def _count(state):
    return state + jnp.ones((), state.dtype)  # a weak count becomes strong


WEAK = Case("count", _count, lambda dtype: jnp.asarray(0))
weak = [WEAK]


def _raises(state):
    raise RuntimeError("boom")


broken = [Case("boom", _raises, _ones)]
not_cases = [1, 2]
