"""Benchmarks of the decorator itself: run-time, trace-time and eager cost, memory.

Each public function returns a dict with `title`, `target`, `met` (bool, or
None when there is nothing to judge), `summary` (one line for the table) and
its measurements. Times are compared as ratios or differences of
interleaved samples, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import collections
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from timing import interleaved, linear_fit, paired_difference, paired_ratio, summary

import jax_dtypeguard as dg
from jax_dtypeguard import state_dtype_invariant
from jax_dtypeguard._compat import enable_x64

# --- 1. run-time cost under jit: the jaxprs ------------------------------------


class _Particle(NamedTuple):
    position: jax.Array
    velocity: jax.Array
    count: jax.Array


def _particle(dtype: Any) -> _Particle:
    return _Particle(jnp.ones(3, dtype), jnp.zeros(3, dtype), jnp.array(0, jnp.int32))


def _particle_step(state: _Particle, force: jax.Array) -> _Particle:
    velocity = 0.9 * state.velocity + force
    return _Particle(state.position + velocity, velocity, state.count + 1)


def _params(n: int, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    return {f"p{i:05d}": jnp.full((4,), 0.5, dtype) for i in range(n)}


def _optax_case(name: str, dtype: Any, grads_dtype: Any, steady: bool) -> tuple[Callable, tuple]:
    """An optax update `(grads, state, params[, value]) -> (updates, state)` and its args."""
    import optax

    params = _params(3, dtype)
    grads = _params(3, grads_dtype)
    if name == "lbfgs":
        tx = optax.lbfgs()

        def value_fn(p: Any) -> jax.Array:
            return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(p))

        def update(g: Any, state: Any, p: Any, value: Any) -> Any:
            return tx.update(g, state, p, value=value, grad=g, value_fn=value_fn)

        state = tx.init(params)
        value = value_fn(params)
        if steady:  # after one update, the weak fields of `init` have turned strong
            state = update(grads, state, params, value)[1]
        return update, (grads, state, params, value)
    tx = {"adam": optax.adam(1e-3), "sgd": optax.sgd(1e-2, momentum=0.9)}[name]

    def update(g: Any, state: Any, p: Any) -> Any:  # type: ignore[misc]
        return tx.update(g, state, p)

    return update, (grads, tx.init(params), params)


def _while_loop_case() -> tuple[Callable, tuple, Callable]:
    def body(carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        i, x = carry
        return i + 1, jnp.sin(x) * 0.5 + x

    def run(body_fn: Callable) -> Callable:
        def loop(x: jax.Array) -> Any:
            return jax.lax.while_loop(lambda c: c[0] < 10, body_fn, (jnp.array(0), x))

        return loop

    return body, (jnp.ones(3),), run


def _drifting_leaves(fn: Callable, args: tuple, state_arg: int, out: int | None) -> int:
    """Leaves whose dtype or weak_type the undecorated step changes."""
    result = jax.eval_shape(fn, *args)
    state_out = result if out is None else result[out]
    state_in = jax.eval_shape(lambda s: s, args[state_arg])
    pairs = zip(jax.tree.leaves(state_in), jax.tree.leaves(state_out))
    return sum(
        a.dtype != b.dtype or getattr(a, "weak_type", False) != getattr(b, "weak_type", False)
        for a, b in pairs
    )


def _eqn_count(jaxpr: Any) -> int:
    """Equations of a jaxpr, counting those of the jaxprs nested in their parameters
    (a loop's body and condition, a branch, a jitted call) too."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(inner, "eqns"):
                    total += _eqn_count(inner)
    return total


def _primitives(jaxpr: Any) -> collections.Counter[str]:
    return collections.Counter(str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns)


def jaxpr_identity() -> dict[str, Any]:
    """Check mode leaves the jaxpr untouched; cast mode adds one conversion per drifting leaf."""
    rows: dict[str, Any] = {}
    checks: list[tuple[str, Callable, tuple, int, int | None]] = [
        ("namedtuple step", _particle_step, (_particle(jnp.float32), jnp.ones(3)), 0, None),
    ]
    try:
        import optax  # noqa: F401
    except ImportError:
        rows["optax"] = "skipped: optax is not installed"
    else:
        for name, steady in (("adam", False), ("sgd", False), ("lbfgs", True)):
            fn, args = _optax_case(name, jnp.float32, jnp.float32, steady)
            checks.append((f"optax.{name} update", fn, args, 1, 1))
    for name, fn, args, state, out in checks:
        plain = jax.make_jaxpr(fn)(*args)
        guarded = jax.make_jaxpr(state_dtype_invariant(fn, state=state, out=out))(*args)
        rows[name] = {"check_identical": str(plain) == str(guarded), "eqns": _eqn_count(plain)}
    body, args, run = _while_loop_case()
    plain = jax.make_jaxpr(run(body))(*args)
    guarded = jax.make_jaxpr(run(state_dtype_invariant(body)))(*args)
    rows["while_loop body"] = {
        "check_identical": str(plain) == str(guarded),
        "eqns": _eqn_count(plain),
    }

    casts: list[tuple[str, Callable, tuple, int, int | None]] = [
        (
            "namedtuple step, float16 state, float32 force",
            _particle_step,
            (_particle(jnp.float16), jnp.ones(3, jnp.float32)),
            0,
            None,
        ),
    ]
    if "optax" not in rows:
        fn, args = _optax_case("adam", jnp.bfloat16, jnp.float32, False)
        casts.append(("optax.adam, bfloat16 params, float32 grads", fn, args, 1, 1))
        fn, args = _optax_case("lbfgs", jnp.float32, jnp.float32, False)
        casts.append(("optax.lbfgs first update (weak -> strong)", fn, args, 1, 1))
    for name, fn, args, state, out in casts:
        drifting = _drifting_leaves(fn, args, state, out)
        plain = jax.make_jaxpr(fn)(*args)
        guarded = jax.make_jaxpr(state_dtype_invariant(fn, state=state, out=out, mode="cast"))(
            *args
        )
        extra = _primitives(guarded) - _primitives(plain)
        missing = _primitives(plain) - _primitives(guarded)
        rows[name] = {
            "drifting_leaves": drifting,
            "added": dict(extra),
            "removed": dict(missing),
            "one_conversion_per_drifting_leaf": (
                drifting > 0 and not missing and dict(extra) == {"convert_element_type": drifting}
            ),
        }
    verdicts = [
        row.get("check_identical", row.get("one_conversion_per_drifting_leaf"))
        for row in rows.values()
        if isinstance(row, dict)
    ]
    met = all(verdicts)
    identical = sum(bool(r.get("check_identical")) for r in rows.values() if isinstance(r, dict))
    cast_ok = sum(
        bool(r.get("one_conversion_per_drifting_leaf"))
        for r in rows.values()
        if isinstance(r, dict)
    )
    n_check = sum("check_identical" in r for r in rows.values() if isinstance(r, dict))
    n_cast = len(verdicts) - n_check
    return {
        "title": "1. run-time cost under jit",
        "target": "check: jaxpr identical; cast: +1 convert per drifting leaf",
        "met": met,
        "summary": f"check identical {identical}/{n_check}; cast exact {cast_ok}/{n_cast}",
        "cases": rows,
    }


# --- 2. trace-time cost ---------------------------------------------------------


def _fresh(fn: Callable) -> Callable:
    """A new function object each time, so no JAX trace cache can answer."""

    def call(*args: Any) -> Any:
        return fn(*args)

    return call


def _trace_one(
    update: Callable,
    guarded: Callable,
    identity: Callable,
    guarded_identity: Callable,
    tx: Any,
    n: int,
    repeats: dict[int, int],
) -> dict[str, Any]:
    params = jax.eval_shape(lambda: _params(n))
    state = jax.eval_shape(tx.init, params)
    args = (params, state, params)
    functions = {
        "plain": lambda: jax.make_jaxpr(_fresh(update))(*args),
        "guarded": lambda: jax.make_jaxpr(_fresh(guarded))(*args),
    }
    for function in functions.values():
        function()  # warm up
    samples = interleaved(functions, repeats.get(n, 3))
    leaves = len(jax.tree.leaves(state))
    overhead = _guard_in_trace(identity, guarded_identity, state, calls=max(3, 20000 // leaves))
    return {
        "state_leaves": leaves,
        "plain": summary(samples["plain"]),
        "guarded": summary(samples["guarded"]),
        "ratio": paired_ratio(samples, "guarded", "plain"),
        "ratio_of_mins": min(samples["guarded"]) / min(samples["plain"]),
        "overhead_us": paired_difference(samples, "guarded", "plain") * 1e6,
        "guard_overhead_us": overhead * 1e6,
        "guard_overhead_per_leaf_us": overhead / leaves * 1e6,
        # The same ratio from the guard's own cost: far less noisy than whole traces.
        "ratio_from_guard_cost": 1 + overhead / statistics.median(samples["plain"]),
    }


def _guard_in_trace(identity: Callable, guarded: Callable, state: Any, calls: int) -> float:
    """Seconds the guard adds to one call whose state leaves are tracers.

    A whole `make_jaxpr` varies by more than the guard costs, so the guard is
    timed inside one trace, on the traced state, against the bare function.
    """
    found: dict[str, list[float]] = {}

    def traced(state: Any) -> Any:
        found.update(
            interleaved(
                {"plain": lambda: identity(state), "guarded": lambda: guarded(state)}, 7, calls
            )
        )
        return state

    jax.make_jaxpr(traced)(state)
    return paired_difference(found, "guarded", "plain")


def trace_time(
    sizes: tuple[int, ...] = (100, 1000, 10000), repeats: dict[int, int] | None = None
) -> dict[str, Any]:
    """`jax.make_jaxpr` of an `optax.adam` update, decorated (check mode) over undecorated."""
    try:
        import optax
    except ImportError:
        return _skipped("2. trace time", "optax is not installed")
    repeats = repeats or {100: 21, 1000: 9, 10000: 3}
    tx = optax.adam(1e-3)

    def update(grads: Any, state: Any, params: Any) -> Any:
        return tx.update(grads, state, params)

    def identity(state: Any) -> Any:
        return state

    guarded = state_dtype_invariant(update, state=1, out=1, annotations=False)
    guarded_identity = state_dtype_invariant(identity, annotations=False)
    rows = {
        n: _trace_one(update, guarded, identity, guarded_identity, tx, n, repeats) for n in sizes
    }
    slope, intercept = (
        linear_fit(
            [r["state_leaves"] for r in rows.values()],
            [r["guard_overhead_us"] for r in rows.values()],
        )
        if len(rows) > 1
        else (None, None)
    )
    at_1000 = rows.get(1000, {}).get("ratio")
    per_leaf = ", ".join(f"{r['guard_overhead_per_leaf_us']:.2f}" for r in rows.values())
    ratios = ", ".join(
        f"{n}: {r['ratio']:.3f} ({r['ratio_from_guard_cost']:.4f})" for n, r in rows.items()
    )
    growth = [r["guard_overhead_per_leaf_us"] for r in rows.values()]
    return {
        "title": "2. trace time (make_jaxpr, adam)",
        "target": "ratio <= 1.10 at 1,000 params; linear in leaves",
        "met": None if at_1000 is None else at_1000 <= 1.10,
        "summary": (
            f"ratio by params {ratios}; guard {per_leaf} us/state leaf "
            "(in brackets: 1 + the guard's own cost over the trace)"
        ),
        "params": rows,
        "guard_fit": {"per_leaf_us": slope, "constant_us": intercept},
        "guard_per_leaf_spread": max(growth) / min(growth) if min(growth) > 0 else None,
    }


# --- 4. eager calls on a cache hit ----------------------------------------------


def _eager_case(n: int, container: str) -> dict[str, Any]:
    """A step returning an `n`-leaf state, undecorated, guarded and jaxtyped+beartype.

    The step returns `outputs[-1]`: the same types as its input, other arrays (what a
    real step returns), until a caller appends another output.
    """
    import beartype
    import jaxtyping
    from jaxtyping import Array, Float

    state_in: Any = _params(n)
    outputs: list[Any] = [_params(n)]
    # beartype checks one item of a container per call (a sample), whatever its size.
    hint: Any = dict[str, Float[Array, "4"]]
    if container == "tuple":
        state_in, outputs[0] = tuple(state_in.values()), tuple(outputs[0].values())
        hint = tuple[Float[Array, "4"], ...]

    def step(state: Any, scale: float) -> Any:
        return outputs[-1]

    # The hints as objects: under `from __future__ import annotations` they would be the
    # string "hint", which names a local that beartype cannot resolve: nothing is checked.
    step.__annotations__ = {"state": hint, "scale": float, "return": hint}

    return {
        "state_in": state_in,
        "outputs": outputs,
        "plain": step,
        "guarded": state_dtype_invariant(step, annotations=False),
        "jaxtyped": jaxtyping.jaxtyped(typechecker=beartype.beartype)(step),
    }


def _warm_and_sample(
    functions: dict[str, Callable[[], Any]], repeats: int, number: int
) -> dict[str, list[float]]:
    """Each function called once (caches warm), then timed in turns (`interleaved`)."""
    for function in functions.values():
        function()
    return interleaved(functions, repeats, number)


def _two_flattens(state_in: Any, state_out: Any) -> Callable[[], Any]:
    """JAX's own `tree_flatten` of a step's input and output state: the floor a guard is
    measured against."""
    flatten = jax.tree_util.tree_flatten

    def two_flattens() -> Any:
        flatten(state_in)
        return flatten(state_out)

    return two_flattens


def _two_flattens_and_reads(state_in: Any, state_out: Any) -> Callable[[], Any]:
    """The two flattens and one C-level pass over each side's leaves (`map(id, ...)`):
    the least any check that looks at every leaf costs in Python. A guard reads each
    leaf's `.aval` in such a pass, and can skip neither side: an identity cache of the
    previous output would cost the same pass (`map(id)` costs what `map(aval)` does)."""
    flatten = jax.tree_util.tree_flatten

    def two_flattens_and_reads() -> Any:
        leaves_in, _ = flatten(state_in)
        leaves_out, _ = flatten(state_out)
        return tuple(map(id, leaves_in)), tuple(map(id, leaves_out))

    return two_flattens_and_reads


def _eager_one(n: int, container: str, repeats: int, calls: int) -> dict[str, Any]:
    case = _eager_case(n, container)
    state_in, state_out = case["state_in"], case["outputs"][0]
    plain, guarded, jaxtyped = case["plain"], case["guarded"], case["jaxtyped"]
    functions = {
        "plain": lambda: plain(state_in, 1.0),
        "guarded": lambda: guarded(state_in, 1.0),
        "jaxtyped": lambda: jaxtyped(state_in, 1.0),
        "two_flattens": _two_flattens(state_in, state_out),
    }
    number = max(10, calls * 10 // n)
    samples = _warm_and_sample(functions, repeats, number)
    best = {name: min(times) * 1e6 for name, times in samples.items()}
    ours = best["guarded"] - best["plain"]
    theirs = best["jaxtyped"] - best["plain"]
    floor = best["two_flattens"]
    return {
        "guarded_overhead_us": ours,
        "guarded_per_leaf_us": ours / n,
        "jaxtyped_overhead_us": theirs,
        "jax_tree_flatten_x2_us": floor,
        "beyond_flatten_per_leaf_us": (ours - floor) / n,
        "median_based": {
            "guarded_overhead_us": paired_difference(samples, "guarded", "plain") * 1e6,
            "jaxtyped_overhead_us": paired_difference(samples, "jaxtyped", "plain") * 1e6,
        },
    }


def _drifts_caught(n: int, container: str, rounds: int = 20) -> dict[str, float]:
    """Of `n` calls, each returning the state with one other leaf wrong (int32 where the
    input and the hint say float32), how many each checker reports: the leaves it checks
    per call. A mean over `rounds` sweeps, as beartype picks the item it checks at random."""
    import beartype.roar
    import jaxtyping

    from jax_dtypeguard import StateDtypeError

    case = _eager_case(n, container)
    state_in, outputs = case["state_in"], case["outputs"]
    good, wrong = outputs[0], jnp.zeros((4,), jnp.int32)
    if container == "tuple":
        drifted = [(*good[:i], wrong, *good[i + 1 :]) for i in range(n)]
    else:
        drifted = [{**good, key: wrong} for key in good]
    errors = {
        "guarded": (StateDtypeError,),
        "jaxtyped": (jaxtyping.TypeCheckError, beartype.roar.BeartypeCallHintViolation),
    }
    caught: dict[str, float] = {"leaves": n}
    for name, expected in errors.items():
        reports = 0
        for _ in range(rounds):
            for state_out in drifted:
                outputs.append(state_out)
                try:
                    case[name](state_in, 1.0)
                except expected:
                    reports += 1
                finally:
                    outputs.pop()
        caught[name] = reports / rounds
    return caught


def _two_point(rows: dict[int, dict[str, Any]], key: str) -> tuple[float, float]:
    """(per-leaf slope, constant) through the smallest and the largest state."""
    small, large = min(rows), max(rows)
    slope = (rows[large][key] - rows[small][key]) / (large - small)
    return slope, rows[small][key] - slope * small


def eager_overhead(
    sizes: tuple[int, ...] = (10, 100, 1000), repeats: int = 15, calls: int = 200
) -> dict[str, Any]:
    """Per-call overhead of a decorated identity-like step, against jaxtyped+beartype.

    Overheads are differences of the best of `repeats` samples (each the mean
    of many calls): on a shared machine the best sample is the least disturbed.

    Two containers: a dict (as params are) and a flat tuple, whose flattening
    costs JAX less. beartype checks one sampled item of either per call.
    """
    states = {
        container: {n: _eager_one(n, container, repeats, calls) for n in sizes}
        for container in ("dict", "tuple")
    }
    # Measured on the middle size: each drifting call makes a report (milliseconds).
    probed = sorted(sizes)[len(sizes) // 2]
    caught = {container: _drifts_caught(probed, container) for container in states}
    fits = {}
    for container, rows in states.items():
        slope, constant = _two_point(rows, "guarded_overhead_us")
        floor, _ = _two_point(rows, "jax_tree_flatten_x2_us")
        fits[container] = {
            "per_leaf_us": slope,
            "constant_us": constant,
            "jax_tree_flatten_x2_per_leaf_us": floor,
            "beyond_flatten_per_leaf_us": slope - floor,
        }
    below = {
        container: all(r["guarded_overhead_us"] < r["jaxtyped_overhead_us"] for r in rows.values())
        for container, rows in states.items()
    }
    dict_rows = states["dict"]
    text = ", ".join(
        f"{n}: {r['guarded_overhead_us']:.1f} vs {r['jaxtyped_overhead_us']:.1f}"
        for n, r in dict_rows.items()
    )
    fit = fits["dict"]
    return {
        "title": "4. eager call overhead",
        "target": "<= 0.2 us/leaf + small constant; below jaxtyped+beartype; every drift caught",
        "met": (
            all(f["per_leaf_us"] <= 0.2 for f in fits.values())
            and all(below.values())
            and all(c["guarded"] == c["leaves"] for c in caught.values())
        ),
        "summary": (
            f"dict: {fit['per_leaf_us']:.2f} us/leaf ({fit['jax_tree_flatten_x2_per_leaf_us']:.2f}"
            f" of it JAX's two flattens) + {fit['constant_us']:.1f} us; tuple: "
            f"{fits['tuple']['per_leaf_us']:.2f} us/leaf; us/call guard vs jaxtyped (dict) {text}; "
            f"single-leaf drifts caught of {probed}: guard {caught['dict']['guarded']:g}, "
            f"jaxtyped {caught['dict']['jaxtyped']:g} (dict), guard "
            f"{caught['tuple']['guarded']:g}, jaxtyped {caught['tuple']['jaxtyped']:g} (tuple)"
        ),
        "states": states,
        "fits": fits,
        "below_jaxtyped": below,
        "single_leaf_drifts_caught": caught,
        "note": (
            "jaxtyped+beartype checks one sampled item of a dict[str, Float[Array, '4']] "
            "or tuple[Float[Array, '4'], ...] per call (beartype's O(1) strategy): "
            "single_leaf_drifts_caught counts, over one call per leaf with that leaf returned "
            "as int32, the calls each checker reported (mean of 20 sweeps). Two jax.tree_util.tree_flatten calls "
            "(input and output state) bound the guard's cost from below."
        ),
    }


# --- 4b. eager calls on one state size: the fast path, a cached verdict, a first call ---


def _weak_copy(state: Any) -> Any:
    """The float32 state with every leaf weakly typed (same shapes and dtypes)."""

    def weak(x: jax.Array) -> jax.Array:
        leaf = jnp.broadcast_to(jnp.asarray(0.5), x.shape)  # a Python float: weak
        if leaf.dtype != x.dtype or not leaf.weak_type:
            raise AssertionError(f"expected a weak {x.dtype} leaf, made {leaf.aval}")
        return leaf

    return jax.tree.map(weak, state)


def _first_calls(
    make: Callable[[], Callable[..., Any]], plain: Callable[[], Any], repeats: int, number: int
) -> dict[str, list[float]]:
    """Seconds per call of `number` freshly decorated functions called once each (their
    first call), and of the undecorated call, in turns; decorating is not timed."""
    samples: dict[str, list[float]] = {"plain": [], "first": []}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeats):
            fresh = [make() for _ in range(number)]
            order = ("plain", "first") if round_ % 2 == 0 else ("first", "plain")
            for name in order:
                start = time.perf_counter()
                if name == "plain":
                    for _ in range(number):
                        plain()
                else:
                    for guarded in fresh:
                        guarded()
                samples[name].append((time.perf_counter() - start) / number)
            del fresh
            gc.collect()
    finally:
        if enabled:
            gc.enable()
    return samples


def _noise(seconds: list[float]) -> float:
    """Spread of samples: (median - min) / min."""
    return statistics.median(seconds) / min(seconds) - 1


def _overhead_one(n: int, container: str, repeats: int, calls: int) -> dict[str, Any]:
    case = _eager_case(n, container)
    state_in, same = case["state_in"], case["outputs"][0]
    weak = _weak_copy(same)

    def plain_weak(state: Any, scale: float) -> Any:
        return weak

    plain_weak.__annotations__ = dict(case["plain"].__annotations__)

    def plain_weak_call() -> Any:
        return plain_weak(state_in, 1.0)

    def fresh_guard(step: Callable[..., Any], **options: Any) -> Callable[[], Any]:
        guarded = state_dtype_invariant(step, annotations=False, **options)
        return lambda: guarded(state_in, 1.0)

    plain, guarded = case["plain"], case["guarded"]
    cached = state_dtype_invariant(plain_weak, weak_type=False, annotations=False)
    functions = {
        "plain": lambda: plain(state_in, 1.0),
        "fast_path": lambda: guarded(state_in, 1.0),
        "plain_weak": plain_weak_call,
        "cached_verdict": lambda: cached(state_in, 1.0),
        "two_flattens": _two_flattens(state_in, same),
        "two_flattens_and_reads": _two_flattens_and_reads(state_in, same),
    }
    number = max(10, calls * 10 // n)
    samples = _warm_and_sample(functions, repeats, number)
    first_same = _first_calls(
        lambda: fresh_guard(plain), lambda: plain(state_in, 1.0), repeats, number
    )
    first_new = _first_calls(
        lambda: fresh_guard(plain_weak, weak_type=False), plain_weak_call, repeats, number
    )

    def row(samples: dict[str, list[float]], over: str, under: str) -> dict[str, float]:
        floor_min = min(samples["two_flattens"]) if "two_flattens" in samples else None
        floor_median = statistics.median(samples["two_flattens"]) if floor_min else None
        best = (min(samples[over]) - min(samples[under])) * 1e6
        median = paired_difference(samples, over, under) * 1e6
        result = {"overhead_us": best, "overhead_median_us": median}
        if floor_min and floor_median:
            result["over_two_flattens"] = best / (floor_min * 1e6)
            result["over_two_flattens_median"] = median / (floor_median * 1e6)
            reads = min(samples["two_flattens_and_reads"])
            result["over_two_flattens_and_reads"] = best / (reads * 1e6)
        result["noise"] = _noise(samples[over])
        return result

    return {
        "leaves": n,
        "two_flattens_us": min(samples["two_flattens"]) * 1e6,
        "two_flattens_and_reads_us": min(samples["two_flattens_and_reads"]) * 1e6,
        "plain_us": min(samples["plain"]) * 1e6,
        "fast_path": row(samples, "fast_path", "plain"),
        "cached_verdict": row(samples, "cached_verdict", "plain_weak"),
        "first_call_same_types": row(first_same, "first", "plain"),
        "first_call_new_signature": row(first_new, "first", "plain"),
    }


def eager_at(n: int = 100, repeats: int = 15, calls: int = 200) -> dict[str, Any]:
    """Eager overhead per call on an `n`-leaf dict state and tuple state, in µs over the
    undecorated step, and as a ratio to JAX's `tree_flatten` of the input and output.

    Four calls of a step that returns a prebuilt state (so the step itself costs
    nothing): the fast path (output of the input's types), a cached verdict (every
    output leaf weakly typed under `weak_type=False`: not drift, but a different
    signature, looked up in the guard's cache), and the first call of a freshly
    decorated function, with the input's types and with that new signature (the
    verdict is computed).
    """
    rows = {
        container: _overhead_one(n, container, repeats, calls) for container in ("dict", "tuple")
    }
    ratios = [r["fast_path"]["over_two_flattens"] for r in rows.values()]
    text = "; ".join(
        f"{c}: fast {r['fast_path']['overhead_us']:.1f} us "
        f"(x{r['fast_path']['over_two_flattens']:.2f} of 2 flattens), cached "
        f"{r['cached_verdict']['overhead_us']:.1f}, first {r['first_call_same_types']['overhead_us']:.1f}"
        f"/{r['first_call_new_signature']['overhead_us']:.0f} us"
        for c, r in rows.items()
    )
    return {
        "title": f"4b. eager overhead, {n}-leaf states",
        "target": "fast path within 1.2x of JAX's two tree_flattens",
        "met": all(ratio <= 1.2 for ratio in ratios),
        "summary": text,
        "states": rows,
    }


# --- 6. a drift report, eager -----------------------------------------------------


def drift_report(n: int = 100, repeats: int = 7, number: int = 3) -> dict[str, Any]:
    """Time of the report of an eager step that drifts one leaf of an `n`-leaf dict
    state (a float32 gradient added to a bfloat16 leaf): the first report of a freshly
    decorated function (provenance traced and walked) and a repeated one (cached),
    over the undecorated step."""
    from jax_dtypeguard import StateDtypeError

    state = _params(n, jnp.bfloat16)
    grad = jnp.full((4,), 0.1, jnp.float32)
    first_key = next(iter(state))

    def step(state: Any, grad: jax.Array) -> Any:
        new = {key: value * 2 for key, value in state.items()}
        new[first_key] = state[first_key] + grad
        return new

    def reported(guarded: Callable[..., Any]) -> StateDtypeError:
        try:
            guarded(state, grad)
        except StateDtypeError as error:
            return error
        raise AssertionError("the drifting step was not reported")

    error = reported(state_dtype_invariant(step, annotations=False))
    origins = [str(m.origin) for m in error.mismatches if m.origin is not None]
    repeated = state_dtype_invariant(step, annotations=False)
    reported(repeated)
    samples: dict[str, list[float]] = {"plain": [], "first": [], "repeated": []}
    for round_ in range(repeats):
        fresh = [state_dtype_invariant(step, annotations=False) for _ in range(number)]
        calls = {
            "plain": lambda: [step(state, grad) for _ in range(number)],
            "first": lambda fresh=fresh: [reported(guarded) for guarded in fresh],
            "repeated": lambda: [reported(repeated) for _ in range(number)],
        }
        for name in calls if round_ % 2 == 0 else reversed(list(calls)):
            start = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - start) / number)
    first = (min(samples["first"]) - min(samples["plain"])) * 1e3
    again = (min(samples["repeated"]) - min(samples["plain"])) * 1e3
    return {
        "title": f"6. drift report (eager, {n}-leaf dict, one leaf drifts)",
        "target": "",
        "met": None,
        "summary": (
            f"first report {first:.1f} ms, repeated {again:.2f} ms over the step "
            f"({min(samples['plain']) * 1e3:.1f} ms); origins found: {len(origins)}"
        ),
        "step_ms": min(samples["plain"]) * 1e3,
        "first_report_ms": first,
        "first_report_median_ms": paired_difference(samples, "first", "plain") * 1e3,
        "repeated_report_ms": again,
        "repeated_report_median_ms": paired_difference(samples, "repeated", "plain") * 1e3,
        "noise": _noise(samples["first"]),
        "mismatches": len(error.mismatches),
        "origins": origins,
    }


# --- 5. compile counts under jax_dtypeguard.optax.invariant ---------------------


def _discover(optax: Any) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """(name, transformation) for every optimizer Optax exports, built as the audit builds
    them; and the constructors the audit is sure of but could not build, with why.

    No list of names to fall back on: if the audit's discovery moves, this fails loudly.
    """
    from jax_dtypeguard._audit._optax import transformations

    found, not_built = transformations(optax)
    if not found:
        raise RuntimeError(f"found no optimizer in optax {optax.__version__}")
    return found, not_built


def _compiles(tx: Any, optax: Any, steps: int = 3) -> int:
    params = {"matrix": jnp.ones((4, 3)), "vector": jnp.ones(3), "scalar": jnp.ones(())}
    grads = jax.tree.map(lambda x: 0.1 * x, params)

    def value_fn(p: Any) -> jax.Array:
        return 0.5 * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))

    if isinstance(tx, optax.GradientTransformationExtraArgs):

        def step(state: Any, grads: Any, params: Any, value: Any) -> Any:
            return tx.update(grads, state, params, value=value, grad=grads, value_fn=value_fn)[1]

    else:

        def step(state: Any, grads: Any, params: Any, value: Any) -> Any:  # type: ignore[misc]
            return tx.update(grads, state, params)[1]

    jitted = jax.jit(step)
    state = tx.init(params)
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(steps):
            state = jitted(state, grads, params, value_fn(params))
    return _compiles(report, jitted)


def _compiles(report: Any, jitted: Any) -> int:
    """How many times `jitted` was traced by jit in `report`'s scope (not `_cache_size()`,
    which also counts C++ dispatch entries that did not trace)."""
    return sum(f.compiles for f in report.functions if f.name == jitted.__qualname__)


def compile_counts(limit: int | None = None) -> dict[str, Any]:
    """Compilations over 3 jitted updates of every Optax optimizer, plain and under `invariant`."""
    try:
        import optax
    except ImportError:
        return _skipped("5. compile counts", "optax is not installed")
    try:
        from jax_dtypeguard.optax import invariant
    except ImportError as error:
        return _skipped("5. compile counts", f"jax_dtypeguard.optax unavailable: {error}")
    import warnings

    rows: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        discovered, not_built = _discover(optax)
        for name, tx in discovered[:limit]:
            row: dict[str, Any] = {}
            for label, candidate in (("plain", tx), ("invariant", None)):
                try:
                    candidate = candidate or invariant(tx)
                    row[label] = _compiles(candidate, optax)
                except Exception as error:
                    row[label] = f"error: {type(error).__name__}: {str(error).splitlines()[0]:.120}"
            rows[name] = row
    counted = {n: r for n, r in rows.items() if isinstance(r["invariant"], int)}
    once = [n for n, r in counted.items() if r["invariant"] == 1]
    plain_more = {
        n: r["plain"] for n, r in rows.items() if isinstance(r["plain"], int) and r["plain"] > 1
    }
    # Both sides fail: the benchmark's params do not suit it (as in the audit, skipped).
    unsuited = {n: r["plain"] for n, r in rows.items() if not isinstance(r["plain"], int)}
    # Only the guarded side fails, with a report: drift that casting cannot repair.
    reported = {
        n: r["invariant"]
        for n, r in rows.items()
        if n not in unsuited and "StateDtypeError" in str(r["invariant"])
    }
    errors = {
        n: r
        for n, r in rows.items()
        if n not in unsuited and n not in reported and not isinstance(r["invariant"], int)
    }
    ratios = [
        r["invariant"] / r["plain"]
        for r in rows.values()
        if isinstance(r["invariant"], int) and isinstance(r["plain"], int)
    ]
    return {
        "title": "5. compile counts (optax, 3 jitted updates)",
        "target": "every optimizer under invariant compiles once",
        "met": len(once) == len(counted) and not errors,
        "summary": (
            f"{len(once)}/{len(counted)} compile once under invariant (plain: "
            f"{', '.join(f'{n} {c}x' for n, c in plain_more.items()) or 'all once'}); "
            f"{len(reported)} report drift cast cannot fix ({', '.join(reported)}); "
            f"{len(unsuited)} unsuited to the params; {len(errors)} errors; "
            f"{len(discovered)} discovered, {len(rows)} run, {len(not_built)} not built"
        ),
        "discovered": len(discovered),
        "not_built": not_built,
        "optimizers": rows,
        "compile_ratio_invariant_over_plain": {
            "mean": sum(ratios) / len(ratios) if ratios else None,
            "min": min(ratios, default=None),
        },
        "plain_compiles_more_than_once": plain_more,
        "reported_unfixable_drift": reported,
        "unsuited": unsuited,
        "errors": errors,
    }


# --- 7. memory of a carried low-precision state ---------------------------------


def _nbytes(tree: Any) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(tree)))


def _memory_case(dtype: Any, value_dtype: Any, steps: int) -> dict[str, Any]:
    state0 = {"w": jnp.ones((256, 256), dtype), "b": jnp.ones((256,), dtype)}
    value = jnp.asarray(0.5, value_dtype)

    def step(state: Any, value: Any) -> Any:
        return jax.tree.map(lambda s: 0.9 * s + 0.1 * value, state)

    guarded = state_dtype_invariant(step, mode="cast")
    plain_state, guarded_state = state0, state0
    plain_jit, guarded_jit = jax.jit(step), jax.jit(guarded)
    plain_jit_state, guarded_jit_state = state0, state0
    for _ in range(steps):
        plain_state = step(plain_state, value)
        guarded_state = guarded(guarded_state, value)
    # One scope each: the guard keeps the step's name, so the report would merge them.
    with dg.explain_recompiles(quiet=True) as plain_report:
        for _ in range(steps):
            plain_jit_state = plain_jit(plain_jit_state, value)
    with dg.explain_recompiles(quiet=True) as guarded_report:
        for _ in range(steps):
            guarded_jit_state = guarded_jit(guarded_jit_state, value)
    initial = _nbytes(state0)
    return {
        "steps": steps,
        "initial_bytes": initial,
        "unguarded_bytes": _nbytes(plain_state),
        "guarded_bytes": _nbytes(guarded_state),
        "unguarded_dtype": str(plain_state["w"].dtype),
        "guarded_dtype": str(guarded_state["w"].dtype),
        "ratio_guarded": _nbytes(guarded_state) / initial,
        "ratio_unguarded": _nbytes(plain_state) / initial,
        "jit_compiles": {
            "unguarded": _compiles(plain_report, plain_jit),
            "guarded": _compiles(guarded_report, guarded_jit),
        },
    }


def memory(steps: int = 10) -> dict[str, Any]:
    """Bytes of a float16/bfloat16 state carried through a promoting step, cast mode vs none."""
    rows = {"bfloat16 state, float32 value": _memory_case(jnp.bfloat16, jnp.float32, steps)}
    with enable_x64():
        rows["float16 state, float64 value"] = _memory_case(jnp.float16, jnp.float64, steps)
    met = all(r["ratio_guarded"] == 1.0 and r["ratio_unguarded"] > 1.0 for r in rows.values())
    text = "; ".join(
        f"{r['guarded_dtype']}: guarded x{r['ratio_guarded']:.0f}, "
        f"unguarded x{r['ratio_unguarded']:.0f} ({r['unguarded_dtype']})"
        for r in rows.values()
    )
    return {
        "title": "7. memory (cast mode)",
        "target": "cast mode keeps the state's bytes",
        "met": met,
        "summary": f"after {steps} steps: {text}",
        "cases": rows,
    }


def _skipped(title: str, reason: str) -> dict[str, Any]:
    return {"title": title, "target": "", "met": None, "summary": f"skipped: {reason}"}


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "jaxpr": jaxpr_identity,
    "trace": trace_time,
    "eager": eager_overhead,
    "overhead": eager_at,
    "compiles": compile_counts,
    "memory": memory,
    "report": drift_report,
}

QUICK: dict[str, dict[str, Any]] = {
    "trace": {"sizes": (100, 1000), "repeats": {100: 7, 1000: 3}},
    "eager": {"repeats": 5, "calls": 50},
    "compiles": {"limit": 12},
    "memory": {"steps": 3},
    "overhead": {"repeats": 5, "calls": 50},
    "report": {"repeats": 3, "number": 1},
}

# For before/after comparisons (`run.py --compare`): the sizes the issue names.
COMPARE: dict[str, dict[str, Any]] = {
    "trace": {"sizes": (1000,), "repeats": {1000: 5}},
}


def run(quick: bool = False) -> dict[str, Any]:
    """All core sections (the harness runs them one by one instead)."""
    return {name: fn(**(QUICK.get(name, {}) if quick else {})) for name, fn in SECTIONS.items()}
