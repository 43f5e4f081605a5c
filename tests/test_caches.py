"""`dg.clear_caches()`: every cache of the package is registered, bounded and clearable,
and guarded functions keep working after it."""

import ast
import gc
import pathlib
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest
from conftest import count_calls
from jaxtyping import Array, Float

import jax_dtypeguard as dg
from jax_dtypeguard import (
    StateDtypeError,
    _annotations,
    _caches,
    _call_site,
    _comparisons,
    _errors,
    _plan,
    _signature,
    state_dtype_invariant,
)
from jax_dtypeguard import lax as dl

PACKAGE = pathlib.Path(dg.__file__).parent


class Annotated(NamedTuple):
    x: Float[Array, "n"]  # noqa: F821 (a jaxtyping dimension)


def promote(state: Annotated) -> Annotated:
    return Annotated(state.x + jnp.ones(state.x.shape, jnp.float32))


def loop_body(carry):
    return carry + jnp.float32(1)


def fill_every_cache() -> dict[str, object]:
    """Runs what fills each cache once; returns the caches by name."""
    guarded = state_dtype_invariant(promote, mode="warn")
    with pytest.warns(dg.StateDtypeWarning, match="first at"):  # a report with an origin
        guarded(Annotated(jnp.ones(3, jnp.float16)))
    assert dl.fori_loop(0, 2, lambda i, c: loop_body(c), jnp.float16(0)).dtype == jnp.float16
    assert dl.while_loop(lambda c: c < 2, loop_body, jnp.float16(0)).dtype == jnp.float16
    guard = guarded.__dtypeguard__  # type: ignore[attr-defined]
    return {
        "the guard's verdicts": guard.verdicts,
        "the guard's explanations": guard.explained,
        "the annotation checker's verdicts": guard.annotations.cache,
        "annotated classes' fields": _annotations._RECORDS,
        "functions' parameters": _plan._PARAMETERS,
        "leaf signatures by aval": _signature._BY_AVAL,
        "guarded loop bodies": dl._CACHE,
        "short source paths": _errors._short_path.cache,  # type: ignore[attr-defined]
        "code directories": _call_site.code_directories.cache,  # type: ignore[attr-defined]
        "user files": _call_site._user_code.cache,  # type: ignore[attr-defined]
    }


def test_clear_caches_empties_every_cache():
    caches = fill_every_cache()
    assert [name for name, cache in caches.items() if not cache] == []
    dg.clear_caches()
    assert [name for name, cache in caches.items() if cache] == []
    assert [c for c in _caches._LIVE.values() if len(c)] == []


def test_no_cache_lives_outside_the_registry():
    """`functools` caches and weak dictionaries are made in `_caches` only, so each one is
    bounded and `clear_caches()` reaches it."""
    forbidden = {"lru_cache", "cache", "WeakKeyDictionary", "WeakValueDictionary"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_caches.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in forbidden:
                if isinstance(node.value, ast.Name) and node.value.id in ("functools", "weakref"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module in ("functools", "weakref"):
                found += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name in forbidden
                ]
    assert found == []


def test_a_verdict_is_computed_again_after_clearing(monkeypatch):
    compared = count_calls(monkeypatch, _comparisons, "compare_states")
    guarded = state_dtype_invariant(lambda s: s * jnp.float32(2), mode="cast")
    state = jnp.ones(2, jnp.float16)
    for _ in range(3):
        assert guarded(state).dtype == jnp.float16
    assert len(compared) == 1  # cached after the first call
    dg.clear_caches()
    for _ in range(3):
        assert guarded(state).dtype == jnp.float16
    assert len(compared) == 2


def test_an_origin_is_searched_again_after_clearing():
    traced = []

    @state_dtype_invariant(mode="warn")
    def step(state):
        traced.append(1)
        return state * jnp.float32(2)

    def calls_per_step():
        before = len(traced)
        with pytest.warns(dg.StateDtypeWarning, match="first at"):
            step(jnp.ones(2, jnp.float16))
        return len(traced) - before

    assert calls_per_step() == 2  # the call, and the trace that finds the origin
    assert calls_per_step() == 1  # the origin is remembered
    dg.clear_caches()
    assert calls_per_step() == 2


def test_every_cache_stays_within_its_limit(monkeypatch):
    limit = 3
    dg.clear_caches()
    monkeypatch.setattr(_caches, "CACHE_LIMIT", limit)  # caches made from now on
    for cache in list(_caches._LIVE.values()):  # and those made already
        monkeypatch.setattr(cache, "limit", limit)
    checked = state_dtype_invariant(lambda s: s * jnp.float32(2), mode="cast")
    annotated = state_dtype_invariant(promote, mode="cast")
    bodies = []
    for n in range(1, 9):
        assert checked(jnp.ones(n, jnp.float16)).dtype == jnp.float16
        assert annotated(Annotated(jnp.ones(n, jnp.float16))).x.dtype == jnp.float16
        new_class = NamedTuple(f"State{n}", [("x", Float[Array, "n"])])  # noqa: UP014
        state_dtype_invariant(lambda s: s, mode="cast")(new_class(jnp.ones(n)))
        body = eval("lambda c: c + 1")  # a new function each time
        bodies.append(body)
        dl.while_loop(lambda c: c[0] < 2, body, jnp.zeros(n, jnp.float16))
        _errors.short_path(f"module_{n}.py")
    too_big = {repr(c)[:80]: len(c) for c in _caches._LIVE.values() if len(c) > c.limit}
    assert too_big == {}
    assert len(checked.__dtypeguard__.verdicts) <= limit  # type: ignore[attr-defined]
    assert len(dl._CACHE) <= limit


def test_the_containers_respect_their_limit():
    cache = _caches.Cache(limit=2)
    weak = _caches.WeakCache(limit=2)
    keys = [type(f"K{i}", (), {}) for i in range(5)]
    for i, key in enumerate(keys):
        cache.remember(i, i)
        weak.remember(key, i)
    assert len(cache) <= 2 and len(weak) <= 2
    assert cache[4] == 4 and weak[keys[4]] == 4  # the newest entry is kept
    cache.remember([], 0)  # unhashable: not kept, no error
    weak.remember(1, 0)  # not weakly referenceable: not kept, no error
    assert [] not in list(cache) and 1 not in list(weak.keys())
    del keys, key
    gc.collect()
    assert len(weak) == 0


def test_memoized_keeps_results_until_cleared():
    calls = []

    @_caches.memoized
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3)] == [9, 9] and calls == [3]
    dg.clear_caches()
    assert square(3) == 9 and calls == [3, 3]


def test_register_takes_only_what_can_be_emptied():
    learnt = _caches.register(set())
    learnt.add(int)
    dg.clear_caches()
    assert learnt == set()
    with pytest.raises(TypeError, match="no clear"):
        _caches.register(object())
    _caches._OTHERS.remove(learnt)


def test_guarded_functions_work_after_clearing():
    def step(state):
        return state * jnp.float32(2)

    cast = state_dtype_invariant(step, mode="cast")
    check = state_dtype_invariant(step)
    jitted = jax.jit(cast)
    state = jnp.ones(3, jnp.float16)
    for _ in range(2):
        assert cast(state).dtype == jnp.float16
        assert jitted(state).dtype == jnp.float16
        assert jax.jit(cast)(state).dtype == jnp.float16  # traced again
        with pytest.raises(StateDtypeError, match=r"state: float16\[3\] -> float32\[3\]"):
            check(state)
        with pytest.raises(StateDtypeError, match="first at"):
            jax.jit(check)(state)
        for _ in range(2):  # a Python loop of eager calls
            state = cast(state)
        assert dl.fori_loop(0, 3, lambda i, c: step(c), state).dtype == jnp.float16
        assert dl.scan(lambda c, x: (step(c), x), state, None, length=2)[0].dtype == jnp.float16
        with dg.guard_loops(mode="cast"):
            assert jax.lax.fori_loop(0, 3, lambda i, c: step(c), state).dtype == jnp.float16
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dg.clear_caches()
