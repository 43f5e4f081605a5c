import os

# Several simulated CPU devices, for sharding tests; read when JAX's backend starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import pytest

from jax_dtypeguard._compat import enable_x64


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def x64(request):
    """Runs the test with x64 off, then on."""
    with enable_x64(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _fresh_jit_caches():
    yield
    jax.clear_caches()
