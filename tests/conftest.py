import os

# Several simulated CPU devices, for sharding tests; read when JAX's backend starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, settings

from jax_dtypeguard import _config
from jax_dtypeguard.testing import x64_for

# One meaning per name across the suite (test modules import them: `from conftest import F16`).
# F16, BF16, F32, F64 are dtypes, never arrays; states built from them have names of their own.
F16, BF16, F32, F64 = jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64
VECTOR_F16 = jnp.ones(3, F16)  # a float16 vector state
SCALAR_F16 = F16(0)  # a float16 scalar carry
WEAK_F32 = jnp.asarray(1.0)  # a weak float32 scalar (x64 off)

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (default "ci"). Property tests scale
# their example counts from the profile's `max_examples` (see tests/test_properties.py).
# - "ci": few examples, the same ones on every run (derandomized: a failure reproduces on
#   any machine, with any xdist split), no deadline (a first call compiles, a shared CI
#   machine stalls), and no example database written into the checkout.
# - "explore": many random examples, remembered in the database; for hunting bugs locally:
#   HYPOTHESIS_PROFILE=explore pytest tests/test_properties.py
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def x64(request):
    """Runs the test with x64 off, then on."""
    with x64_for("float32+x64" if request.param else "float32"):
        assert jax.config.jax_enable_x64 is request.param, "run the suite with x64 off"
        yield request.param


@pytest.fixture
def outside_loop_scopes():
    """The test starts outside any guard_loops scope (even under --dtypeguard-loops)."""
    token = _config.loops_override.set(_config.LoopSettings("off", False))
    try:
        yield
    finally:
        _config.loops_override.reset(token)


def count_calls(monkeypatch, module, name):
    """Replaces `module.name` by a wrapper that records each call; returns the record."""
    calls = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def compiles(report, jitted):
    """How many times `jitted` compiled (was traced by jit) within `report`'s scope; not
    `_cache_size()`, which also counts C++ dispatch entries that did not trace."""
    return sum(f.compiles for f in report.functions if f.name == jitted.__qualname__)
