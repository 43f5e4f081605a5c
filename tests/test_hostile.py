"""Hostile and odd states: each works or fails with a clear error; none hangs or crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import F16

from jax_dtypeguard import StateDtypeError, state_dtype_invariant


def identity(state):
    return state


def nest(depth: int, leaf):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def kinds(error: StateDtypeError) -> list[tuple[str, str]]:
    return [(m.path, m.kind) for m in error.mismatches]


# --- deep and recursive ---------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 600])
def test_deep_states(depth):
    state = nest(depth, jnp.ones(2, F16))
    bottom = "state" + "[0]" * depth
    assert state_dtype_invariant(identity)(state) is state
    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda state: nest(depth, jnp.ones(2)))(state)
    assert kinds(info.value) == [(bottom, "dtype")]
    cast = state_dtype_invariant(lambda state: nest(depth, jnp.ones(2)), mode="cast")(state)
    assert jax.tree_util.tree_leaves(cast)[0].dtype == F16
    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda state: nest(depth, None))(state)
    assert kinds(info.value) == [(bottom, "structure")]
    # A structure change deep down, beside a leaf that still lines up.
    pair = nest(depth, [jnp.ones(2, F16), jnp.ones(2, F16)])
    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda state: nest(depth, [jnp.ones(2), None]), mode="check")(pair)
    assert kinds(info.value) == [(bottom + "[0]", "dtype"), (bottom + "[1]", "structure")]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),  # PYTHONPATH: the package under test
    )


def test_states_jax_cannot_flatten_fail_without_crashing():
    """Deeper than JAX can flatten, or containing itself: an exception, not a crash or hang."""
    result = _run(
        """
        import jax.numpy as jnp
        from jax_dtypeguard import state_dtype_invariant

        def nest(depth, leaf):
            for _ in range(depth):
                leaf = [leaf]
            return leaf

        loop = []
        loop.append(loop)
        for state in (nest(20_000, jnp.ones(2)), loop):
            try:
                state_dtype_invariant(lambda state: state)(state)
            except (RecursionError, SystemError, ValueError, TypeError) as error:
                print("raised", type(error).__name__)
            else:
                print("passed")
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split()
    assert lines.count("raised") + lines.count("passed") == 2, result.stdout


# --- pytrees whose flatten raises ---------------------------------------------------------


class Exploding:
    """Registered as a pytree whose flatten raises (after `fuse` successful flattens)."""

    def __init__(self, fuse: int = 0):
        self.fuse = fuse


def _flatten(node: Exploding):
    if node.fuse <= 0:
        raise ValueError("flatten exploded")
    node.fuse -= 1
    return (jnp.ones(2),), None


jax.tree_util.register_pytree_node(Exploding, _flatten, lambda aux, children: Exploding())


def test_a_flatten_that_raises_passes_through_unchanged():
    with pytest.raises(ValueError, match="flatten exploded"):
        state_dtype_invariant(identity)({"x": Exploding()})
    with pytest.raises(ValueError, match="flatten exploded"):
        state_dtype_invariant(lambda state: Exploding())(jnp.ones(2))
    # The input flattens, then the output explodes.
    with pytest.raises(ValueError, match="flatten exploded"):
        state_dtype_invariant(lambda state: {"x": Exploding()})({"x": Exploding(fuse=1)})


class _Touchy:
    """Node data whose `==` raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing me")

    def __hash__(self) -> int:
        return 0


@jax.tree_util.register_pytree_node_class
class _WithData:
    def __init__(self, x, data):
        self.x, self.data = x, data

    def tree_flatten(self):
        return (self.x,), self.data

    @classmethod
    def tree_unflatten(cls, data, children):
        return cls(children[0], data)


@pytest.mark.parametrize("make", [_Touchy, lambda: np.arange(3)], ids=["raising ==", "numpy"])
def test_node_data_that_cannot_be_compared_gets_jaxs_own_error(make):
    # What JAX raises comparing the two tree structures (as `jax.jit` would compare them);
    # newer JAX says to make node data hashable and comparable.
    structure = jax.tree_util.tree_structure
    with pytest.raises(Exception) as jax_error:
        _ = structure(_WithData(0, make())) == structure(_WithData(0, make()))
    step = state_dtype_invariant(lambda state: _WithData(state.x + 1, make()))
    with pytest.raises(type(jax_error.value)) as caught:
        step(_WithData(jnp.ones(2), make()))
    assert str(caught.value) == str(jax_error.value)


# --- NumPy, big ints, ShapeDtypeStruct ----------------------------------------------------


def test_numpy_arrays_in_states(x64):
    state = {"a": np.ones(3, np.float16), "b": np.float32(1.0), "c": np.zeros((0, 2), np.int8)}
    assert state_dtype_invariant(identity)(state) is state
    # The same types as JAX arrays: no drift (a NumPy array has a strong dtype).
    as_jax = state_dtype_invariant(lambda state: jax.tree_util.tree_map(jnp.asarray, state))(state)
    assert as_jax["a"].dtype == F16
    wider = np.float64 if x64 else np.float32

    def promote(state):
        return {**state, "a": state["a"] * np.ones(3, np.float64)}

    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(promote)(state)
    assert kinds(info.value) == [("state['a']", "dtype")]
    assert f"float16[3] -> {np.dtype(wider).name}[3]" in str(info.value)
    cast = state_dtype_invariant(promote, mode="cast")(state)
    assert cast["a"].dtype == F16
    np.testing.assert_array_equal(cast["a"], np.ones(3, np.float16))


def test_python_ints_too_large_for_int32():
    big = 2**40
    assert state_dtype_invariant(lambda state: state + 1)(big) == big + 1
    assert state_dtype_invariant(lambda state: state * 10**30)(big) == big * 10**30
    # A float coming back is a change of kind: cast mode never casts it back to an int.
    with pytest.raises(StateDtypeError, match=r"changed kind \(int32 -> float32\)"):
        state_dtype_invariant(lambda state: state * 1.0, mode="cast")(big)
    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda state: state * 1.0)(big)
    assert "state: weak int32[] (Python int) -> weak float32[] (Python float)" in str(info.value)
    # Under jit JAX itself refuses the int: its error passes through.
    with pytest.raises(OverflowError):
        jax.jit(state_dtype_invariant(lambda state: state + 1))(big)


def test_shape_dtype_struct_leaves():
    sds = jax.ShapeDtypeStruct
    state = {"w": sds((3,), F16), "n": sds((), jnp.int32)}
    assert state_dtype_invariant(identity)(state) is state

    def widen(state):
        return {**state, "w": sds((3,), jnp.float32)}

    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(widen)(state)
    assert kinds(info.value) == [("state['w']", "dtype")]
    cast = state_dtype_invariant(widen, mode="cast")(state)
    assert isinstance(cast["w"], sds) and cast["w"].dtype == F16 and cast["w"].shape == (3,)
    weak = state_dtype_invariant(
        lambda state: {**state, "w": sds((3,), F16, weak_type=True)}, mode="cast"
    )
    assert not weak(state)["w"].weak_type
    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda state: {**state, "w": sds((4,), F16)}, mode="cast")(state)
    assert kinds(info.value) == [("state['w']", "shape")]
    # Abstract evaluation: eval_shape turns the structs into tracers.
    out = jax.eval_shape(
        state_dtype_invariant(lambda state: {**state, "w": state["w"] * 2.0}), state
    )
    assert out["w"].dtype == F16


# --- leaves JAX cannot type ----------------------------------------------------------------


class Opaque:
    """Not registered as a pytree: a leaf JAX cannot type."""


@pytest.mark.parametrize(
    ("leaf", "named"),
    [
        (np.array(["a"]), "a NumPy array of dtype <U1, which JAX cannot hold"),
        (np.array([object()]), "a NumPy array of dtype object, which JAX cannot hold"),
    ],
    ids=["numpy-str", "numpy-object"],
)
def test_untypable_leaves_get_a_clear_error(leaf, named):
    state = {"w": jnp.ones(2), "odd": leaf}
    for mode in ("check", "cast", "warn"):
        with pytest.raises(TypeError) as info:
            state_dtype_invariant(identity, mode=mode)(state)
        assert not isinstance(info.value, StateDtypeError)
        text = str(info.value)
        assert f"state leaf state['odd'] is {named}" in text
        assert "Convert it to a JAX dtype, or keep it out of the state" in text
    # Only in the output.
    with pytest.raises(TypeError, match=r"state leaf state\['odd'\]"):
        state_dtype_invariant(lambda state: {**state, "odd": leaf})({"w": jnp.ones(2), "odd": 1.0})
    # mode="off" does not look.
    assert state_dtype_invariant(identity, mode="off")(state) is state


@pytest.mark.parametrize("leaf", [Opaque(), "text"], ids=["object", "str"])
def test_objects_and_strings_are_static_leaves(leaf):
    state = {"w": jnp.ones(2), "odd": leaf}
    for mode in ("check", "cast", "warn"):
        assert state_dtype_invariant(identity, mode=mode)(state) is state
    with pytest.raises(StateDtypeError, match=r"state\['odd'\]: .* -> 'other'  \[structure\]"):
        state_dtype_invariant(lambda state: {**state, "odd": "other"}, mode="cast")(state)


def test_empty_and_none_states():
    for state in ({}, [], (), None):
        assert state_dtype_invariant(identity)(state) is state
    with pytest.raises(StateDtypeError) as info:
        state_dtype_invariant(lambda state: {"a": jnp.ones(2)})({})
    assert kinds(info.value) == [("state", "structure")]
    with pytest.raises(StateDtypeError):
        state_dtype_invariant(lambda state: jnp.ones(2))(None)


# --- very many leaves ----------------------------------------------------------------------


def _wide(n: int) -> dict[str, jax.Array]:
    leaf = jnp.zeros((), F16)
    return {f"k{i:06d}": leaf for i in range(n)}


def _peak(call) -> int:
    """Peak memory traced while running `call`."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


PATHS = ["keep", "drift", "cast", "structure"]


def _exercise_wide(n: int) -> dict[str, int]:
    """Every path through the guard on an `n`-leaf state; returns each path's peak memory."""
    state = _wide(n)
    one = {**state, "k000007": jnp.zeros((), jnp.float32)}
    missing = dict(state)
    del missing["k000003"]

    def keep():
        assert state_dtype_invariant(identity)(state) is state

    def drift():
        with pytest.raises(StateDtypeError) as info:
            state_dtype_invariant(lambda state: one)(state)
        assert kinds(info.value) == [("state['k000007']", "dtype")]

    def cast():
        result = state_dtype_invariant(lambda state: one, mode="cast")(state)
        assert result["k000007"].dtype == F16 and result["k000008"] is state["k000008"]

    def structure():
        with pytest.raises(StateDtypeError) as info:
            state_dtype_invariant(lambda state: missing)(state)
        assert kinds(info.value) == [("state", "structure")]
        text = str(info.value)
        assert f"dict with {n} keys, ['k000003'] not in the other" in text
        assert len(text) < 2000  # bounded, whatever the number of keys

    calls = {"keep": keep, "drift": drift, "cast": cast, "structure": structure}
    return {name: _peak(calls[name]) for name in PATHS}


@pytest.fixture(scope="module")
def ten_thousand_peaks() -> dict[str, int]:
    return _exercise_wide(10_000)


@pytest.fixture(scope="module")
def fifty_thousand_peaks() -> dict[str, int]:
    return _exercise_wide(50_000)


def test_ten_thousand_leaves(ten_thousand_peaks):
    assert list(ten_thousand_peaks) == PATHS
    assert all(peak > 0 for peak in ten_thousand_peaks.values())


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_fifty_thousand_leaves_memory_stays_linear(ten_thousand_peaks, fifty_thousand_peaks, path):
    small, large = ten_thousand_peaks[path], fifty_thousand_peaks[path]
    # Five times the leaves: about five times the memory (a quadratic path: 25 times).
    assert large < 12.5 * small, (small, large)
