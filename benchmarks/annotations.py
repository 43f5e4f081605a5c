"""Deep annotation check of a 500-field NamedTuple state vs `jaxtyped(typechecker=beartype)`.

The budget (issue 3): a full deep check must cost less than twice the trace of
a trivial update over the same state. `jaxtyped(typechecker=beartype)` on the
same function is measured alongside, with the number of array leaves each one
actually checks (counted by wrapping jaxtyping's array `isinstance`).

Run: `python benchmarks/annotations.py` (prints one JSON object).
"""

# jaxtyping dimension strings are not forward references:
# ruff: noqa: F821

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from beartype import beartype
from jaxtyping import Array, Float32, jaxtyped

from jax_dtypeguard import state_dtype_invariant

FIELDS = 500
SIZE = 8
REPEATS = 7


def _timed(
    fn: Callable[[], Any], repeats: int = REPEATS, fresh: bool = False
) -> tuple[float, float]:
    """(best, median) seconds of `repeats` runs, after one warm-up run.

    `fresh`: clear JAX's caches before each run (untimed), so a trace is a trace.
    """
    fn()
    times = []
    for _ in range(repeats):
        if fresh:
            jax.clear_caches()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


@contextlib.contextmanager
def _count_array_checks() -> Iterator[list[int]]:
    """Counts jaxtyping array-annotation `isinstance` calls inside the block."""
    meta = type(Float32[Array, "n"])
    original = meta.__instancecheck__
    count = [0]

    def counting(cls: Any, obj: Any) -> bool:
        count[0] += 1
        return original(cls, obj)

    meta.__instancecheck__ = counting  # type: ignore[method-assign]
    try:
        yield count
    finally:
        meta.__instancecheck__ = original  # type: ignore[method-assign]


def _state_class() -> type:
    fields = [(f"f{i}", Float32[Array, "n"]) for i in range(FIELDS)]
    return NamedTuple("BigState", fields)  # type: ignore[misc]


def run() -> dict[str, Any]:
    """Measures the deep check and `jaxtyped(typechecker=beartype)` in this process."""
    big = _state_class()
    state = big(*[jnp.zeros(SIZE, jnp.float32) for _ in range(FIELDS)])
    x = jnp.ones(SIZE, jnp.float32)

    def update(state: big, x: Float32[Array, "n"]) -> big:  # type: ignore[valid-type]
        return jax.tree_util.tree_map(lambda leaf: leaf + x, state)

    def identity(state: big, x: Float32[Array, "n"]) -> big:  # type: ignore[valid-type]
        return state

    unchecked = state_dtype_invariant(update, annotations=False)
    deep = state_dtype_invariant(update)
    bear = jaxtyped(update, typechecker=beartype)
    bear_identity = jaxtyped(identity, typechecker=beartype)
    checker = deep.__dtypeguard__.annotations  # type: ignore[attr-defined]
    result = update(state, x)

    trace, trace_median = _timed(lambda: jax.make_jaxpr(update)(state, x), fresh=True)
    trace_guarded, _ = _timed(lambda: jax.make_jaxpr(unchecked)(state, x), fresh=True)
    trace_deep, _ = _timed(lambda: jax.make_jaxpr(deep)(state, x), fresh=True)
    trace_bear, _ = _timed(lambda: jax.make_jaxpr(bear)(state, x), fresh=True)
    check, check_median = _timed(lambda: checker.check((state, x), {}, result))
    bear_call, _ = _timed(lambda: bear_identity(state, x))

    traced_checks: list[float] = []

    def probe(state: Any, x: Any) -> Any:  # the deep check on tracers, timed alone
        result = update(state, x)
        start = time.perf_counter()
        checker.check((state, x), {}, result)
        traced_checks.append(time.perf_counter() - start)
        return result

    _timed(lambda: jax.make_jaxpr(probe)(state, x), fresh=True)

    with _count_array_checks() as deep_count:
        checker.check((state, x), {}, result)
    with _count_array_checks() as bear_count:
        bear_identity(state, x)

    # Eager calls: the second and later calls with one signature are a lookup.
    guarded_identity = state_dtype_invariant(identity)
    plain_identity = state_dtype_invariant(identity, annotations=False)
    eager_checked, _ = _timed(lambda: guarded_identity(state, x), repeats=20)
    eager_plain, _ = _timed(lambda: plain_identity(state, x), repeats=20)

    return {
        "benchmark": "annotations",
        "device": jax.devices()[0].platform,
        "jax": jax.__version__,
        "state_fields": FIELDS,
        "trace_trivial_update_s": trace,
        "trace_trivial_update_median_s": trace_median,
        "deep_check_s": check,
        "deep_check_median_s": check_median,
        "deep_check_traced_s": min(traced_checks),
        "deep_check_over_trace": max(check, min(traced_checks)) / trace,
        "within_budget": max(check, min(traced_checks)) < 2 * trace,
        "trace_guarded_no_annotations_s": trace_guarded,
        "trace_guarded_deep_check_s": trace_deep,
        "trace_jaxtyped_beartype_s": trace_bear,
        "jaxtyped_beartype_call_s": bear_call,
        "leaves_checked_deep": deep_count[0],
        "leaves_checked_jaxtyped_beartype": bear_count[0],
        "eager_call_cached_check_s": eager_checked,
        "eager_call_no_annotations_s": eager_plain,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
