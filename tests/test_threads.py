"""Concurrency: threads tracing and calling guarded functions under their own scopes.

`strict()` and `mode()` live in context variables: each thread sees only its
own scope, even while other threads trace the same function. The eager
verdict cache is shared by threads and must never hand one thread's verdict
to another's configuration.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, StateDtypeWarning, _caches, state_dtype_invariant

THREADS = 8


def run_threads(targets: list[Callable[[], Any]], timeout: float = 60.0) -> list[Any]:
    """Runs the targets at once (released together by a barrier); returns results or errors."""
    barrier = threading.Barrier(len(targets))
    results: list[Any] = [None] * len(targets)

    def worker(index: int, target: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[index] = target()
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=worker, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return results


def drifting(state, x):
    return state * x  # float16 state * float32 x -> float32


def weak_to_strong(state):
    return state + jnp.ones((), jnp.float32)


STATE = jnp.ones(3, jnp.float16)
X = jnp.full(3, 2.0, jnp.float32)


def _outcome(call: Callable[[], Any]) -> str:
    # Warnings are not recorded per thread: `warnings.catch_warnings` is process-global.
    try:
        return str(call().dtype)
    except StateDtypeError:
        return "error"


SCOPES = {
    "strict": (dg.strict, (), "error"),
    "cast": (dg.mode, ("cast",), "float16"),
    "check": (dg.mode, ("check",), "error"),
    "warn": (dg.mode, ("warn",), "float32"),
    "off": (dg.mode, ("off",), "float32"),
    "none": (None, (), "error"),
}


def _in_scope(name: str, call: Callable[[], Any]) -> Callable[[], tuple[str, str, Any]]:
    manager, args, _ = SCOPES[name]

    def target() -> tuple[str, str, Any]:
        if manager is None:
            return name, _outcome(call), dg.config.mode
        with manager(*args):
            return name, _outcome(call), dg.config.mode

    return target


@pytest.mark.filterwarnings("ignore::jax_dtypeguard.StateDtypeWarning")
@pytest.mark.parametrize("how", ["jit", "eager"])
def test_scopes_do_not_leak_between_threads(how):
    guarded = state_dtype_invariant(drifting)  # declared without a mode: follows the scope

    def call() -> Any:
        for _ in range(5):
            # A fresh function under a fresh jit: every call traces, under this thread's scope
            # (jit caches traces per function, and a cached trace keeps its verdict).
            fresh = jax.jit(lambda state, x: guarded(state, x)) if how == "jit" else guarded
            result = fresh(STATE, X)
        return result

    names = list(SCOPES) * (THREADS * 2 // len(SCOPES))
    results = run_threads([_in_scope(name, call) for name in names])
    for result in results:
        assert not isinstance(result, BaseException), result
        name, outcome, seen_mode = result
        assert outcome == SCOPES[name][2], (name, outcome)
        expected_mode = SCOPES[name][1][0] if SCOPES[name][0] is dg.mode else "check"
        assert seen_mode == expected_mode
    assert dg.config.mode == "check" and not dg.config.strict


def test_strict_in_one_thread_only():
    """One function declared cast with weak_type=False, called eagerly by all threads."""
    guarded = state_dtype_invariant(weak_to_strong, mode="cast", weak_type=False)
    weak = jnp.asarray(1.0)  # weak float32
    assert weak.aval.weak_type

    def strict_thread() -> str:
        with dg.strict():
            outcomes = {_outcome(lambda: guarded(weak)) for _ in range(50)}
        return "/".join(sorted(outcomes))

    def lenient_thread() -> str:
        outcomes = set()
        for _ in range(50):
            result = guarded(weak)
            outcomes.add("weak" if result.aval.weak_type else "strong")
        return "/".join(sorted(outcomes))

    results = run_threads([strict_thread, lenient_thread] * (THREADS // 2))
    assert results == ["error", "strong"] * (THREADS // 2)


def test_eager_verdict_cache_under_threads(monkeypatch):
    """Many signatures from many threads, a cache small enough to be cleared constantly."""
    monkeypatch.setattr(_caches, "CACHE_LIMIT", 3)
    guarded = state_dtype_invariant(drifting, mode="cast")
    checked = state_dtype_invariant(drifting)
    dtypes = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.int8, jnp.int32, jnp.uint8]
    # A wider dtype of each state's kind: cast mode repairs drift within a kind only.
    xs = {"same": None, "wider": "wider"}
    wider = {jnp.int8: jnp.int32, jnp.int32: jnp.int32, jnp.uint8: jnp.uint32}

    def thread(offset: int) -> list[str]:
        problems = []
        for round_ in range(30):
            dtype = dtypes[(offset + round_) % len(dtypes)]
            for shape in ((), (3,), (0, 2)):
                state = jnp.zeros(shape, dtype)
                for label, x_dtype in xs.items():
                    if x_dtype == "wider":
                        x_dtype = wider.get(dtype, jnp.float32)
                    x = jnp.ones(shape, x_dtype or dtype)
                    drifts = jnp.result_type(dtype, x.dtype) != dtype
                    out = guarded(state, x)
                    if out.dtype != dtype or out.shape != shape:
                        problems.append(f"cast {dtype} {shape} {label}: {out.dtype}")
                    try:
                        checked(state, x)
                        raised = False
                    except StateDtypeError as error:
                        raised = True
                        if error.mismatches[0].path != "state":
                            problems.append(f"path {error.mismatches[0].path}")
                    if raised != drifts:
                        problems.append(f"check {dtype} {shape} {label}: raised={raised}")
        return problems

    results = run_threads([lambda i=i: thread(i) for i in range(THREADS)], timeout=120)
    assert results == [[]] * THREADS
    assert len(guarded.__dtypeguard__.verdicts) <= 3


def test_threads_tracing_one_jitted_function():
    """Threads sharing one jitted guarded function: one compile, one verdict, no deadlock."""
    guarded = jax.jit(state_dtype_invariant(drifting, mode="cast"))
    results = run_threads([lambda: guarded(STATE, X).dtype for _ in range(THREADS)])
    assert results == [jnp.float16] * THREADS


def test_lax_forms_and_strict_across_threads():
    def body(state):
        return drifting(state, X)

    def cond(state):
        return state.sum() < 20

    def strict_thread() -> str:
        with dg.strict():
            try:
                dg.lax.while_loop(cond, body, STATE)
            except StateDtypeError:
                return "error"
        return "passed"

    def plain_thread() -> str:
        return str(dg.lax.while_loop(cond, body, STATE).dtype)

    results = run_threads([strict_thread, plain_thread] * (THREADS // 2))
    assert results == ["error", "float16"] * (THREADS // 2)


def test_a_report_does_not_swallow_other_threads_warnings():
    """Deterministic: the report's re-trace of the step is held open while we warn."""
    inside, release = threading.Event(), threading.Event()
    calls = []

    def step(state):
        calls.append(1)
        if len(calls) == 2:  # a second trace: the report looking for the drift's origin
            inside.set()
            release.wait(10)
        return state.astype(jnp.float32)

    guarded = state_dtype_invariant(step)
    raised: list[BaseException] = []

    def reporter() -> None:
        try:
            guarded(STATE)
        except BaseException as error:
            raised.append(error)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread = threading.Thread(target=reporter)
        thread.start()
        # The premise: the report re-traces the step (else this test checks nothing).
        reached = inside.wait(10)
        warnings.warn("a warning from another thread", UserWarning, stacklevel=1)
        release.set()
        thread.join(10)
        filters_after = list(warnings.filters)
    assert reached, "the drift report no longer re-traces the step: rewrite this test"
    assert not thread.is_alive()
    assert [type(error) for error in raised] == [StateDtypeError]
    assert any("from another thread" in str(w.message) for w in caught)
    assert filters_after[0][0] == "always"


def test_warn_mode_from_many_threads_warns_every_call():
    """Without reports re-tracing (no drift origin to find twice), no warning is lost."""
    guarded = state_dtype_invariant(drifting, mode="warn")
    with pytest.warns(StateDtypeWarning):
        guarded(STATE, X)  # the report of this signature is now cached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_threads([lambda: [guarded(STATE, X) for _ in range(5)]] * THREADS)
    assert all(len(r) == 5 for r in results)
    warned = [w for w in caught if issubclass(w.category, StateDtypeWarning)]
    assert len(warned) == 5 * THREADS
