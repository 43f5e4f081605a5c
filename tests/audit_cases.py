"""Cases for the `jax-dtypeguard audit` tests: one that holds, one that drifts."""

import jax.numpy as jnp
import numpy as np

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


def _truncating(state):
    # Asks for float64 values: with x64 off JAX warns and truncates them to float32.
    return state * jnp.asarray(1.0, jnp.float64).astype(state.dtype)


truncating = [Case("truncating", _truncating, _ones)]


def _loop(state):
    # A loop of the "library" whose body promotes the carry: JAX rejects it.
    import jax

    return jax.lax.fori_loop(0, 2, lambda i, c: c + jnp.ones(3, jnp.float32), state)


in_loop = [Case("loop", _loop, _ones)]


def _numpy_and_bool(state):
    values, flag = state
    return values * 0.5, jnp.logical_not(flag)


# A NumPy leaf and a Python bool in the initial state: jit compiles once all the same.
mixed_leaves = [
    Case("mixed", _numpy_and_bool, lambda dtype: (np.ones(3, jnp.dtype(dtype)), True)),
]


def _fails_when_run(state):
    import jax

    def boom(x):
        raise RuntimeError("only at run time")

    jax.debug.callback(boom, state)
    return state


runtime_failure = [Case("runtime", _fails_when_run, _ones)]
