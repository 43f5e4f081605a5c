"""What `dg.explain_recompiles` costs: a cache hit, a trace, and building the report.

    python benchmarks/recompiles.py            # prints a dict
    python benchmarks/run.py --only recompiles

- cache hit: 1,000 calls of a small jitted step that hits jit's cache, inside
  the scope over outside it (the median of round-by-round ratios; the rounds
  interleaved), and, as a control, the outside loop over itself (the noise).
  Target: 1.0 (jit's C++ fast path is untouched).
- trace: `jax.jit(update).trace(...)` of an `optax.adam` update of 1,000
  params (a new function each time, so it traces), inside over outside.
  Target: at most 1.05.
- report: `str(report)` and `report.to_json()` after three jitted L-BFGS steps
  (two compiles).
- memory: 60 functions made anew, each closing over a 1 MB array and compiled
  once, outside the scope and then inside it: the resident memory each adds,
  and how many of their arrays outlive them. Target: what outside costs (JAX
  frees a dead function's jaxpr, lowering and executable; the scope must not
  keep them).

"Outside" is measured after the first scope has installed the trace observer
(process-wide, for good): that is what a program pays between scopes.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from timing import interleaved, paired_ratio, summary

import jax_dtypeguard as dg


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object each time, so no JAX trace cache can answer."""

    def call(*args: Any) -> Any:
        return fn(*args)

    return call


def cache_hit(calls: int = 1000, rounds: int = 15) -> dict[str, Any]:
    """`calls` calls of a jitted step that hits jit's cache, inside vs outside the scope."""

    @jax.jit
    def step(x: jax.Array) -> jax.Array:
        return x * 2.0 + 1.0

    x = jnp.ones(8)
    with dg.explain_recompiles(quiet=True):  # installs the observer; compiles the step
        step(x).block_until_ready()

    def outside() -> None:
        for _ in range(calls):
            y = step(x)
        y.block_until_ready()

    def inside() -> None:
        with dg.explain_recompiles(quiet=True):
            for _ in range(calls):
                y = step(x)
            y.block_until_ready()

    outside(), inside()  # warm up
    # "again" is "outside" once more: its ratio to "outside" is the machine's noise.
    samples = interleaved({"outside": outside, "inside": inside, "again": outside}, rounds)
    return {
        "calls": calls,
        "rounds": rounds,
        "outside_per_call_us": statistics.median(samples["outside"]) / calls * 1e6,
        "inside_per_call_us": statistics.median(samples["inside"]) / calls * 1e6,
        "ratio": paired_ratio(samples, "inside", "outside"),
        "noise_ratio": paired_ratio(samples, "again", "outside"),
    }


def trace(params: int = 1000, rounds: int = 9) -> dict[str, Any]:
    """A trace by jit of an `optax.adam` update of `params` params, inside vs outside."""
    import optax

    tx = optax.adam(1e-3)

    def update(grads: Any, state: Any, params: Any) -> Any:
        return tx.update(grads, state, params)

    tree = jax.eval_shape(lambda: {f"p{i:05d}": jnp.full((4,), 0.5) for i in range(params)})
    state = jax.eval_shape(tx.init, tree)
    args = (tree, state, tree)

    def outside() -> None:
        jax.jit(_fresh(update)).trace(*args)

    def inside() -> None:
        with dg.explain_recompiles(quiet=True):
            jax.jit(_fresh(update)).trace(*args)

    with dg.explain_recompiles(quiet=True) as report:  # installs the observer; warm up
        jax.jit(_fresh(update)).trace(*args)
    seen = sum(f.compiles for f in report.functions)
    outside()
    samples = interleaved({"outside": outside, "inside": inside}, rounds)
    return {
        "params": params,
        "state_leaves": len(jax.tree.leaves(state)),
        "rounds": rounds,
        "observed": seen >= 1,  # the scope did see the trace (else the ratio means nothing)
        "outside": summary(samples["outside"]),
        "inside": summary(samples["inside"]),
        "ratio": paired_ratio(samples, "inside", "outside"),
    }


def report(repeats: int = 21) -> dict[str, Any]:
    """Building the report of three jitted L-BFGS steps (two compiles): text and JSON."""
    import optax

    def loss(params: jax.Array) -> jax.Array:
        return jnp.sum((params - 3.0) ** 2)

    solver = optax.lbfgs()

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        value, grad = optax.value_and_grad_from_state(loss)(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params = jnp.zeros(3)
    state = solver.init(params)
    with dg.explain_recompiles(quiet=True) as found:
        for _ in range(3):
            params, state = step(params, state)
    compiles = sum(f.compiles for f in found.functions if f.name == step.__qualname__)
    text_s, json_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        str(found)
        text_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        found.to_json()
        json_s.append(time.perf_counter() - start)
    return {
        "step_compiles": compiles,
        "text_ms": statistics.median(text_s) * 1e3,
        "json_ms": statistics.median(json_s) * 1e3,
    }


def _resident_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # not Linux
        pass
    return None


def memory(compiles: int = 60) -> dict[str, Any]:
    """Memory that `compiles` functions made anew and compiled once leave behind."""

    def compile_new(k: int) -> weakref.ref[jax.Array]:
        constant = jnp.arange(250_000, dtype=jnp.float32) + k  # 1 MB, in the jaxpr's consts

        @jax.jit
        def step(x: jax.Array) -> jax.Array:
            for i in range(50):
                x = jnp.sin(x) + constant[:8] * i
            return x

        step(jnp.ones(8)).block_until_ready()
        return weakref.ref(constant)

    def left_behind(first: int) -> tuple[float | None, int]:
        gc.collect()
        before = _resident_mb()
        constants = [compile_new(first + k) for k in range(compiles)]
        gc.collect()
        after = _resident_mb()
        added = None if before is None or after is None else (after - before) / compiles
        return added, sum(c() is not None for c in constants)

    with dg.explain_recompiles(quiet=True):  # installs the observer
        compile_new(-1)
    outside_mb, outside_alive = left_behind(0)
    with dg.explain_recompiles(quiet=True) as found:
        inside_mb, inside_alive = left_behind(compiles)
    seen = sum(f.compiles for f in found.functions)
    return {
        "compiles": compiles,
        "observed": seen == compiles,
        "outside_mb_per_compile": outside_mb,
        "inside_mb_per_compile": inside_mb,
        "outside_alive": outside_alive,
        "inside_alive": inside_alive,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The three measurements, with the issue's targets."""
    hit = cache_hit(rounds=5 if quick else 15)
    traced = trace(rounds=3 if quick else 9)
    built = report(repeats=5 if quick else 21)
    kept = memory(compiles=20 if quick else 60)
    met = (
        hit["ratio"] <= 1.05
        and traced["ratio"] <= 1.05
        and traced["observed"]
        and kept["observed"]
        and kept["inside_alive"] <= kept["outside_alive"]
    )
    inside_mb, outside_mb = kept["inside_mb_per_compile"], kept["outside_mb_per_compile"]
    per_compile = (
        "n/a"
        if inside_mb is None or outside_mb is None
        else f"{inside_mb:.2f} MB (outside: {outside_mb:.2f} MB)"
    )
    return {
        "title": "explain_recompiles: cache hit, trace, report, memory",
        "target": (
            "cache hit ratio ~1.0 (<= 1.05 measured); trace ratio <= 1.05; no compiled "
            "program kept alive"
        ),
        "met": met,
        "summary": (
            f"cache hit {hit['ratio']:.3f}x ({hit['outside_per_call_us']:.2f} -> "
            f"{hit['inside_per_call_us']:.2f} us/call; the same loop twice: "
            f"{hit['noise_ratio']:.3f}x); trace of a {traced['params']}-param "
            f"adam update {traced['ratio']:.3f}x; L-BFGS report {built['text_ms']:.2f} ms "
            f"(text), {built['json_ms']:.2f} ms (JSON); {kept['compiles']} functions made "
            f"anew: {kept['inside_alive']} kept alive in the scope, {per_compile} each"
        ),
        "cache_hit": hit,
        "trace": traced,
        "report": built,
        "memory": kept,
    }


QUICK: dict[str, dict[str, Any]] = {"recompiles": {"quick": True}}


if __name__ == "__main__":
    import pprint

    pprint.pprint(run(quick="--quick" in sys.argv), sort_dicts=False)
