"""How long a drift report's provenance takes on a large jaxpr.

`python benchmarks/provenance.py` prints a dict: the equation count, the time
to trace the step into a jaxpr, the time `explain` takes (tracing included)
and the time of the jaxpr walks alone.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from jax_dtypeguard import _provenance
from jax_dtypeguard._errors import Mismatch
from jax_dtypeguard._plan import StateParameter


def _step(state: Any, grad: Any, steps: int) -> Any:
    x = state["x"] + grad  # the drift: a float32 grad promotes the bfloat16 state
    for _ in range(steps):  # a long tail of float32 arithmetic after it
        x = jnp.sin(x) * 0.5
    return {"x": x, "y": state["y"] * 2}


def run(equations: int = 10_000, repeat: int = 3) -> dict[str, Any]:
    """Times `explain` on a step whose jaxpr has about `equations` equations."""
    steps = equations // 2
    state = {"x": jnp.ones(8, jnp.bfloat16), "y": jnp.ones(8, jnp.bfloat16)}
    grad = jnp.ones(8, jnp.float32)

    def step(state: Any, grad: Any) -> Any:
        return _step(state, grad, steps)

    parameter = StateParameter.of(step, None)
    mismatch = [Mismatch("state['x']", "dtype", "bfloat16[8]", "float32[8]")]
    start = time.perf_counter()
    jaxpr = jax.make_jaxpr(step)(state, grad)
    trace_s = time.perf_counter() - start
    explain_s, walk_s = [], []
    explained = None
    for _ in range(repeat):
        start = time.perf_counter()
        (explained,) = _provenance.explain(step, parameter, None, (state, grad), {}, mismatch)
        explain_s.append(time.perf_counter() - start)
        traced = _provenance._Traced.of(step, parameter, None, (state, grad), {})
        start = time.perf_counter()
        search = _provenance._OriginSearch(traced.jaxpr.jaxpr, traced.state_invars, 2.0)
        traced.origin(search, "['x']", "dtype")
        walk_s.append(time.perf_counter() - start)
    return {
        "equations": len(jaxpr.jaxpr.eqns),
        "trace_s": round(trace_s, 4),
        "explain_s": round(min(explain_s), 4),
        "walk_s": round(min(walk_s), 4),
        "origin": str(explained and explained.origin),
    }


if __name__ == "__main__":
    print(run())
