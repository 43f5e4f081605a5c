"""Dtype policies: what a policy adds to the trace of an Adam update, and to its jaxpr.

    python benchmarks/policy.py            # prints a JSON report
    python benchmarks/run.py --only policy

A 1,000-param `optax.adam` update (bfloat16 params, float32 grads, float32
moments by policy), guarded in check mode with a policy over the params, the
moments and the grads, against the same guard without a policy and against
the undecorated update. Traces are timed interleaved (`timing.interleaved`)
with a new function object per trace, so no JAX cache answers; "cold"
builds a new `Policy` per trace, so its per-structure layout cache is empty.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if not any((Path(entry) / "jax_dtypeguard").is_dir() for entry in sys.path[1:] if entry):
    sys.path.insert(1, str(HERE.parent))

from timing import interleaved, paired_difference, paired_ratio  # noqa: E402

import jax_dtypeguard as dg  # noqa: E402

RULES = {
    "params.**": "bfloat16",
    "opt_state.**.mu.**": "float32",
    "opt_state.**.nu.**": "float32",
    "grads.**": "float32",
}


def _params(n: int, dtype: Any) -> dict[str, jax.Array]:
    return {f"p{i:05d}": jnp.full((4,), 0.5, dtype) for i in range(n)}


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(*args)

    return call


def _primitives(jaxpr: Any) -> Counter[str]:
    return Counter(eqn.primitive.name for eqn in jaxpr.jaxpr.eqns)


def _policy_in_trace(rules: Any, args: tuple[Any, ...], calls: int) -> float:
    """Seconds a policy adds to one guarded call whose arguments are tracers: a guarded
    identity-like update with the policy against the same without, inside one trace (a
    whole `make_jaxpr` varies by more than the policy costs)."""

    def update(grads: Any, opt_state: Any, params: Any) -> Any:
        return grads, opt_state

    def guard(policy: Any) -> Callable[..., Any]:
        return dg.state_dtype_invariant(
            update, state="opt_state", out=1, annotations=False, mode="check", policy=policy
        )

    without, with_policy = guard(None), guard(rules)
    found: dict[str, list[float]] = {}

    def traced(*args: Any) -> Any:
        found.update(
            interleaved(
                {"without": lambda: without(*args), "policy": lambda: with_policy(*args)}, 7, calls
            )
        )
        return args

    jax.make_jaxpr(traced)(*args)
    return paired_difference(found, "policy", "without")


def run(n: int = 1000, repeats: int = 7) -> dict[str, Any]:
    import optax

    tx = optax.adam(1e-3)
    policy = dg.Policy(RULES)

    def update(grads: Any, opt_state: Any, params: Any) -> Any:
        return tx.update(grads, opt_state, params)

    def guard(mode: str, rules: Any) -> Callable[..., Any]:
        return dg.state_dtype_invariant(
            update, state="opt_state", out=1, annotations=False, mode=mode, policy=rules
        )

    params = jax.eval_shape(lambda: _params(n, jnp.bfloat16))
    grads = jax.eval_shape(lambda: _params(n, jnp.float32))
    opt_state = policy.cast(jax.eval_shape(tx.init, params), root="opt_state")
    args = (grads, opt_state, params)
    without, with_policy = guard("check", None), guard("check", policy)
    functions = {
        "plain": lambda: jax.make_jaxpr(_fresh(update))(*args),
        "guarded": lambda: jax.make_jaxpr(_fresh(without))(*args),
        "policy": lambda: jax.make_jaxpr(_fresh(with_policy))(*args),
        "policy_cold": lambda: jax.make_jaxpr(_fresh(guard("check", dg.Policy(RULES))))(*args),
    }
    for function in functions.values():
        function()  # warm up
    samples = interleaved(functions, repeats)

    # The jaxprs: check mode is the undecorated update's; cast mode, given bfloat16 grads,
    # is the update of float32 grads plus one conversion per grad, on entry.
    plain_jaxpr = jax.make_jaxpr(update)(*args)
    check_jaxpr = jax.make_jaxpr(with_policy)(*args)
    bf16_grads = jax.eval_shape(lambda: _params(n, jnp.bfloat16))
    cast_bf16 = jax.make_jaxpr(guard("cast", policy))(bf16_grads, opt_state, params)
    extra = _primitives(cast_bf16) - _primitives(plain_jaxpr)
    missing = _primitives(plain_jaxpr) - _primitives(cast_bf16)
    leaves = len(jax.tree.leaves(opt_state)) + 2 * n
    policy_cost = _policy_in_trace(policy, args, calls=5)
    plain_trace = statistics.median(samples["plain"])
    return {
        "title": "policy: trace of a 1,000-param adam update (check mode)",
        "params": n,
        "governed_leaves": leaves,
        "target": (
            "the policy's own cost <= 5 % of the trace at 1,000 params; check-mode jaxpr "
            "identical to the undecorated update's; cast: one conversion per cast leaf"
        ),
        "met": (
            1 + policy_cost / plain_trace <= 1.05
            and str(check_jaxpr) == str(plain_jaxpr)
            and dict(extra) == {"convert_element_type": n}
            and not missing
        ),
        "trace_seconds": {name: statistics.median(s) for name, s in samples.items()},
        "ratio_policy_over_guarded": paired_ratio(samples, "policy", "guarded"),
        "ratio_policy_over_plain": paired_ratio(samples, "policy", "plain"),
        "ratio_cold_policy_over_guarded": paired_ratio(samples, "policy_cold", "guarded"),
        "ratio_guarded_over_plain": paired_ratio(samples, "guarded", "plain"),
        "policy_cost_in_trace_s": policy_cost,
        "policy_cost_per_leaf_us": policy_cost / leaves * 1e6,
        "ratio_from_policy_cost": 1 + policy_cost / plain_trace,
        "check_jaxpr_identical": str(check_jaxpr) == str(plain_jaxpr),
        "cast_extra_equations": dict(extra),
        "cast_missing_equations": dict(missing),
        "cast_leaves": n,
        "summary": (
            f"policy/no policy {paired_ratio(samples, 'policy', 'guarded'):.3f} "
            f"(cold {paired_ratio(samples, 'policy_cold', 'guarded'):.3f}), "
            f"policy/undecorated {paired_ratio(samples, 'policy', 'plain'):.3f}; "
            f"the policy's own cost {policy_cost * 1e3:.1f} ms "
            f"({policy_cost / leaves * 1e6:.2f} us/leaf, ratio {1 + policy_cost / plain_trace:.4f}); "
            f"check jaxpr identical: {str(check_jaxpr) == str(plain_jaxpr)}; "
            f"cast adds {dict(extra)} for {n} cast leaves"
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
