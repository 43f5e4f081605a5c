"""Trace-time cost of `guard_loops` on real solvers, when nothing drifts.

`python benchmarks/loops.py` prints a dict: for an Optimistix BFGS minimise and
a Diffrax Tsit5 solve, the median seconds to trace each into a jaxpr outside
and inside `guard_loops` (check and cast mode), measured side by side in one
run, and the ratios inside / outside (target: at most 1.10).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from timing import interleaved, paired_ratio

import jax_dtypeguard as dg


def _bfgs(y0: Any) -> Any:
    import optimistix as optx

    def fn(y: Any, args: Any) -> Any:
        return jnp.sum((y - 1.0) ** 2 * jnp.arange(1, y.shape[0] + 1, dtype=y.dtype))

    return optx.minimise(fn, optx.BFGS(rtol=1e-4, atol=1e-4), y0, max_steps=64, throw=False).value


def _tsit5(y0: Any) -> Any:
    import diffrax

    term = diffrax.ODETerm(lambda t, y, args: -y * t)
    controller = diffrax.PIDController(rtol=1e-3, atol=1e-4)
    solution = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), 0.0, 1.0, 0.1, y0, stepsize_controller=controller
    )
    return solution.ys


def _trace(solve: Any, y0: Any, scope: Any = None) -> Any:
    jax.clear_caches()  # every sample traces from scratch
    if scope is None:
        return jax.make_jaxpr(solve)(y0)
    with scope:
        return jax.make_jaxpr(solve)(y0)


def run(repeats: int = 7) -> dict[str, Any]:
    """Median trace seconds and ratios inside / outside the scope, per solver."""
    y0 = jnp.zeros(8, jnp.float32)
    results: dict[str, Any] = {}
    for name, solve in (("optimistix BFGS", _bfgs), ("diffrax Tsit5", _tsit5)):
        outside = str(_trace(solve, y0))
        assert str(_trace(solve, y0, dg.guard_loops())) == outside  # identical jaxpr
        samples = interleaved(
            {
                "outside": functools.partial(_trace, solve, y0),
                "check": lambda solve=solve: _trace(solve, y0, dg.guard_loops()),
                "cast": lambda solve=solve: _trace(solve, y0, dg.guard_loops(mode="cast")),
            },
            repeats,
        )
        results[name] = {
            "outside_s": round(sorted(samples["outside"])[repeats // 2], 3),
            "check_ratio": round(paired_ratio(samples, "check", "outside"), 3),
            "cast_ratio": round(paired_ratio(samples, "cast", "outside"), 3),
        }
    return results


if __name__ == "__main__":
    print(run())
