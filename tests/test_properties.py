"""Property tests: random states, random mutations, an independent oracle.

A state is drawn as a *spec* (containers, `None`, leaves of every dtype JAX
has, weak and strong, Python scalars, zero-size arrays, typed PRNG keys,
float0); mutations rewrite the spec and say, on their own, which paths and
kinds of drift they introduce. The oracle:

- check mode reports exactly the mutated (path, kind) pairs;
- cast mode restores the input's exact types for dtype/weak_type drift and
  raises, with exactly the uncastable pairs, for the rest;
- no value changes, except by the cast's own rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from jax_dtypeguard import StateDtypeError, state_dtype_invariant
from jax_dtypeguard._compat import convert_element_type
from jax_dtypeguard.testing import x64_for

ROOT = "state"
SHAPES = [(), (0,), (1,), (3,), (2, 0), (0, 2), (2, 3)]
KEY_SHAPES = [(), (0,), (2,)]
PY_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex}
KEY_IMPLS = ("threefry2x32", "rbg")

_BASE = ["bool", "int8", "int16", "int32", "uint8", "uint16", "uint32"]
_BASE += ["float16", "bfloat16", "float32", "complex64"]
_NARROW = [
    "int2",
    "int4",
    "uint2",
    "uint4",
    "float4_e2m1fn",
    "float8_e3m4",
    "float8_e4m3",
    "float8_e4m3b11fnuz",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
]
WIDE = ["int64", "uint64", "float64", "complex128"]
NARROW = [name for name in _NARROW if hasattr(jnp, name)]


def dtype_pool(x64: bool) -> list[str]:
    """Every numeric dtype this JAX can hold with the current x64 setting."""
    return _BASE + NARROW + (WIDE if x64 else [])


class NT1(NamedTuple):
    a: Any


class NT2(NamedTuple):
    a: Any
    b: Any


class NT3(NamedTuple):
    a: Any
    b: Any
    c: Any


NAMED = {1: NT1, 2: NT2, 3: NT3}


# --- specs -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A leaf: kind is "array", "python", "key" or "float0"."""

    kind: str
    dtype: str  # numeric dtype name; Python type name; key impl; "float0"
    shape: tuple[int, ...]
    weak: bool
    seed: int
    uid: int = -1


@dataclasses.dataclass(frozen=True)
class Node:
    """A container ("list", "tuple", "dict", "nt") or "none"; children keyed."""

    kind: str
    children: tuple[tuple[Any, Any], ...] = ()


def _step_key(node: Node, key: Any) -> str:
    if node.kind == "dict":
        return f"[{key!r}]"
    if node.kind == "nt":
        return f".{key}"
    return f"[{key}]"


def _container(kind: str, items: list[Any]) -> Node:
    if kind == "dict":
        return Node("dict", tuple(sorted(items)))
    if kind == "nt":
        return Node("nt", tuple(zip("abc", items)))
    return Node(kind, tuple(enumerate(items)))


def leaf_specs(pool: list[str], python_scalars: bool) -> st.SearchStrategy[Leaf]:
    seeds = st.integers(0, 3)
    arrays = st.builds(
        Leaf, st.just("array"), st.sampled_from(pool), st.sampled_from(SHAPES), st.booleans(), seeds
    )
    keys = st.builds(
        Leaf,
        st.just("key"),
        st.sampled_from(KEY_IMPLS),
        st.sampled_from(KEY_SHAPES),
        st.just(False),
        seeds,
    )
    float0 = st.builds(
        Leaf, st.just("float0"), st.just("float0"), st.sampled_from(SHAPES), st.just(False), seeds
    )
    options = [arrays, arrays, arrays, keys, float0]
    if python_scalars:
        python = st.sampled_from(list(PY_TYPES)).flatmap(
            lambda t: st.builds(
                Leaf, st.just("python"), st.just(t), st.just(()), st.just(t != "bool"), seeds
            )
        )
        options.append(python)
    return st.one_of(*options)


def tree_specs(pool: list[str], python_scalars: bool = True) -> st.SearchStrategy[Any]:
    leaf = leaf_specs(pool, python_scalars)
    base = st.one_of(leaf, leaf, leaf, st.just(Node("none")))  # None in one place of four

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        lists = st.lists(children, max_size=3)
        return st.one_of(
            lists.map(lambda xs: _container("list", xs)),
            lists.map(lambda xs: _container("tuple", xs)),
            st.lists(children, min_size=1, max_size=3).map(lambda xs: _container("nt", xs)),
            st.dictionaries(st.sampled_from("abcd"), children, max_size=3).map(
                lambda d: _container("dict", list(d.items()))
            ),
        )

    return st.recursive(base, extend, max_leaves=10).map(_number)


def _number(spec: Any) -> Any:
    counter = iter(range(10**6))

    def go(node: Any) -> Any:
        if isinstance(node, Leaf):
            return dataclasses.replace(node, uid=next(counter))
        return Node(node.kind, tuple((k, go(c)) for k, c in node.children))

    return go(spec)


def spec_leaves(spec: Any) -> list[Leaf]:
    """Leaves in JAX's flattening order (dict keys sorted, `None` skipped)."""
    if isinstance(spec, Leaf):
        return [spec]
    return [leaf for _, child in spec.children for leaf in spec_leaves(child)]


def nodes_with_paths(spec: Any, keys: tuple[Any, ...] = (), path: str = ROOT):
    yield keys, path, spec
    if isinstance(spec, Node):
        for key, child in spec.children:
            yield from nodes_with_paths(child, (*keys, key), path + _step_key(spec, key))


# --- building values -----------------------------------------------------------


def make_leaf(leaf: Leaf) -> Any:
    if leaf.kind == "python":
        value = leaf.seed % (2 if leaf.dtype == "bool" else 4)
        if leaf.dtype == "complex":
            return complex(value, 1)
        return PY_TYPES[leaf.dtype](value)
    if leaf.kind == "key":
        key = jax.random.key(leaf.seed, impl=leaf.dtype)
        return jax.random.split(key, leaf.shape[0]) if leaf.shape else key
    if leaf.kind == "float0":
        return np.zeros(leaf.shape, dtype=jax.dtypes.float0)
    size = int(np.prod(leaf.shape, dtype=int))
    modulus = 2 if leaf.dtype in ("bool", "int2") else 4
    values = ((np.arange(size) + leaf.seed) % modulus).reshape(leaf.shape)
    dtype = jnp.dtype(leaf.dtype)
    return convert_element_type(jnp.asarray(values).astype(dtype), dtype, leaf.weak)


def build(spec: Any, leaf_value) -> Any:
    if isinstance(spec, Leaf):
        return leaf_value(spec)
    if spec.kind == "none":
        return None
    values = [build(child, leaf_value) for _, child in spec.children]
    if spec.kind == "dict":
        return {k: v for (k, _), v in zip(spec.children, values)}
    if spec.kind == "list":
        return values
    if spec.kind == "tuple":
        return tuple(values)
    return NAMED[len(values)](*values)


# --- mutations -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mutation:
    """What a mutation did: the new subtree, the drift it should cause."""

    new: Any
    expected: frozenset[tuple[str, str]]
    castable: bool
    # For leaf rewrites: how the step computes the new leaf from the old one.
    source: int | None = None
    # A Python scalar that the step returns as an array.
    becomes_array: bool = False


def _kind(dtype: str) -> str:
    for kind in (jnp.bool_, jnp.complexfloating, jnp.floating, jnp.integer):
        if jnp.issubdtype(jnp.dtype(dtype), kind):
            return kind.__name__
    return dtype


_FRESH = iter(range(10**6, 10**9))


def _fresh(pool: list[str]) -> Leaf:
    return Leaf(
        "array", pool[0] if "float32" not in pool else "float32", (2,), False, 1, next(_FRESH)
    )


def _py_kinds(a: str, b: str) -> set[str]:
    kinds = {"dtype"}
    if (a == "bool") != (b == "bool"):
        kinds.add("weak_type")
    return kinds


def mutate(draw, spec: Any, path: str, pool: list[str], weak_type: bool, allow_python: bool):
    """One random mutation of the node `spec` at `path`."""
    structure = frozenset({(path, "structure")})
    if isinstance(spec, Leaf):
        # Type changes first: Hypothesis favours (and shrinks towards) the first option.
        if spec.kind == "array":
            options = ["dtype", "weak", "dtype", "weak", "shape", "dtype_shape"]  # castable: 2/3
            if spec.shape == () and allow_python:
                options.append("to_python")
        elif spec.kind == "python":
            options = ["pytype", "to_array"]
        else:
            options = ["dtype", "shape"]
        choice = draw(st.sampled_from([*options, "to_none"]))
        if choice == "to_none":
            return Mutation(Node("none"), structure, False)
        if choice == "to_python":
            new = Leaf("python", "float", (), True, spec.seed, next(_FRESH))
            return Mutation(new, structure, False)
        if choice == "to_array":
            # A Python float that comes back as a 0-d float array is cast to the weak
            # array `jit` makes of it; any other kind is not.
            new = Leaf("array", "float32", (), spec.weak, spec.seed, next(_FRESH))
            return Mutation(new, structure, spec.dtype == "float", spec.uid, becomes_array=True)
        if choice == "pytype":
            # Python's scalar types are each their own kind: never cast into one another.
            new_type = draw(st.sampled_from([t for t in PY_TYPES if t != spec.dtype]))
            kinds = _py_kinds(spec.dtype, new_type)
            if not weak_type:
                kinds.discard("weak_type")
            new = dataclasses.replace(spec, dtype=new_type, weak=new_type != "bool")
            return Mutation(new, frozenset((path, k) for k in kinds), False, spec.uid)
        if choice == "weak":
            new = dataclasses.replace(spec, weak=not spec.weak)
            expected = frozenset({(path, "weak_type")}) if weak_type else frozenset()
            return Mutation(new, expected, True, spec.uid)
        new = spec
        kinds = set()
        castable = True
        if choice in ("dtype", "dtype_shape"):
            kinds.add("dtype")
            if spec.kind == "array":
                new_dtype = draw(st.sampled_from([d for d in pool if d != spec.dtype]))
                new = dataclasses.replace(new, dtype=new_dtype)
                # A cast changes precision within a kind, never the kind itself.
                castable = _kind(spec.dtype) == _kind(new_dtype)
            elif spec.kind == "key":
                other = next(i for i in KEY_IMPLS if i != spec.dtype)
                new = dataclasses.replace(new, dtype=other)
                castable = False
            else:  # float0 -> bool
                new = dataclasses.replace(new, kind="array", dtype="bool")
                castable = False
        if choice in ("shape", "dtype_shape"):
            kinds.add("shape")
            castable = False
            shapes = KEY_SHAPES if spec.kind == "key" else SHAPES
            new_shape = draw(st.sampled_from([s for s in shapes if s != spec.shape]))
            new = dataclasses.replace(new, shape=new_shape)
        return Mutation(new, frozenset((path, k) for k in kinds), castable, spec.uid)
    if spec.kind == "none":
        return Mutation(_fresh(pool), structure, False)
    options = ["to_none", "to_leaf"]
    if spec.kind == "dict":
        options += ["add_key"] + (["drop_key"] if spec.children else [])
    elif spec.kind in ("list", "tuple"):
        options += ["append", "swap"] + (["drop_last"] if spec.children else [])
    else:
        options += ["to_tuple"]
    choice = draw(st.sampled_from(options))
    if choice == "to_none":
        return Mutation(Node("none"), structure, False)
    if choice == "to_leaf":
        return Mutation(_fresh(pool), structure, False)
    children = list(spec.children)
    if choice == "add_key":
        missing = [k for k in "abcdz" if k not in dict(children)]
        children.append((missing[-1], _fresh(pool)))
        new = Node("dict", tuple(sorted(children)))
    elif choice == "drop_key":
        children.pop(draw(st.integers(0, len(children) - 1)))
        new = Node("dict", tuple(children))
    elif choice == "append":
        new = Node(spec.kind, (*children, (len(children), _fresh(pool))))
    elif choice == "drop_last":
        new = Node(spec.kind, tuple(children[:-1]))
    elif choice == "swap":
        new = Node("tuple" if spec.kind == "list" else "list", spec.children)
    else:  # NamedTuple -> tuple
        new = Node("tuple", tuple(enumerate(child for _, child in children)))
    return Mutation(new, structure, False)


def _replace_at(spec: Any, keys: tuple[Any, ...], new: Any) -> Any:
    if not keys:
        return new
    head, rest = keys[0], keys[1:]
    children = tuple((k, _replace_at(c, rest, new) if k == head else c) for k, c in spec.children)
    return Node(spec.kind, children)


@st.composite
def scenarios(draw, pool: list[str], python_scalars: bool = True):
    """(input spec, output spec, mutations by uid, expected pairs, weak_type)."""
    spec = draw(tree_specs(pool, python_scalars))
    if not spec_leaves(spec):
        # Leafless states can only drift in structure: keep one in four of them.
        assume(draw(st.sampled_from([False, False, False, True])))
    weak_type = draw(st.booleans())
    nodes = list(nodes_with_paths(spec))
    leaves = [node for node in nodes if isinstance(node[2], Leaf)]
    containers = [node for node in nodes if not isinstance(node[2], Leaf)]
    chosen: list[tuple[tuple[Any, ...], str, Any]] = []
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        # Mostly leaves (type drift), sometimes a container or None (structure drift):
        # drawing among all nodes would favour the root, and so structure drift alone.
        prefer_leaf = not containers or draw(st.sampled_from([True, True, True, False]))
        group = leaves if leaves and prefer_leaf else containers
        keys, path, node = group[draw(st.integers(0, len(group) - 1))]
        if any(keys[: len(k)] == k or k[: len(keys)] == keys for k, _, _ in chosen):
            continue  # keep mutated subtrees disjoint
        chosen.append((keys, path, node))
    out = spec
    mutations = []
    for keys, path, node in chosen:
        mutation = mutate(draw, node, path, pool, weak_type, python_scalars)
        out = _replace_at(out, keys, mutation.new)
        mutations.append(mutation)
    return spec, out, mutations, weak_type


# --- the step and the oracle -------------------------------------------------------


def transform(value: Any, old: Leaf, new: Leaf) -> Any:
    """The step's rewrite of one leaf from `old`'s type to `new`'s."""
    if new.kind == "python":
        if isinstance(value, complex) and new.dtype != "complex":
            value = value.real
        return PY_TYPES[new.dtype](value)
    if old.kind == "array" and new.kind == "array" and old.shape == new.shape:
        if jnp.iscomplexobj(value) and not jnp.issubdtype(new.dtype, jnp.complexfloating):
            value = value.real  # old JAX warns on a complex -> real conversion
        return convert_element_type(value, jnp.dtype(new.dtype), new.weak)
    return make_leaf(new)


def make_step(spec_in: Any, spec_out: Any):
    old_leaves = {leaf.uid: leaf for leaf in spec_leaves(spec_in)}

    def step(state: Any) -> Any:
        by_uid = dict(zip(old_leaves, jax.tree_util.tree_leaves(state)))

        def value(leaf: Leaf) -> Any:
            if leaf.uid not in by_uid:
                return make_leaf(leaf)
            old = old_leaves[leaf.uid]
            if old == leaf:
                return by_uid[leaf.uid]
            return transform(by_uid[leaf.uid], old, leaf)

        return build(spec_out, value)

    return step


def expected_pairs(mutations: list[Mutation]) -> set[tuple[str, str]]:
    return set().union(*(m.expected for m in mutations))


def reported(error: StateDtypeError) -> list[tuple[str, str]]:
    return [(m.path, m.kind) for m in error.mismatches]


def _bits(x: Any) -> bytes:
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x).tobytes()


def _aval(x: Any) -> tuple[Any, ...]:
    if isinstance(x, tuple(PY_TYPES.values())):
        return ("python", type(x))
    aval = jax.typeof(x) if hasattr(jax, "typeof") else jax.core.get_aval(x)
    return (tuple(aval.shape), aval.dtype, aval.weak_type)


def run_check(spec_in, spec_out, mutations, weak_type, jit: bool, guard=state_dtype_invariant):
    state = build(spec_in, make_leaf)
    step = make_step(spec_in, spec_out)
    guarded = guard(step, mode="check", weak_type=weak_type)
    call = jax.jit(guarded) if jit else guarded
    expected = expected_pairs(mutations)
    if not expected:
        call(state)
        return
    with pytest.raises(StateDtypeError) as info:
        call(state)
    got = reported(info.value)
    assert len(got) == len(set(got)), f"duplicate mismatches: {got}"
    assert set(got) == expected


def run_cast(spec_in, spec_out, mutations, weak_type, jit: bool, guard=state_dtype_invariant):
    state = build(spec_in, make_leaf)
    step = make_step(spec_in, spec_out)
    guarded = guard(step, mode="cast", weak_type=weak_type)
    call = jax.jit(guarded) if jit else guarded
    # What no cast can fix; castable drift is not listed, even beside a structure change.
    uncastable = expected_pairs([m for m in mutations if not m.castable])
    if uncastable:
        with pytest.raises(StateDtypeError) as info:
            call(state)
        got = reported(info.value)
        assert len(got) == len(set(got)), f"duplicate mismatches: {got}"
        assert set(got) == uncastable
        return
    result = call(state)
    raw = jax.jit(step)(state) if jit else step(state)
    assert jax.tree_util.tree_structure(result) == jax.tree_util.tree_structure(state)
    reported_uids = {m.source for m in mutations if m.expected}
    to_array = {m.source for m in mutations if m.becomes_array}
    leaves_in = jax.tree_util.tree_leaves(state)
    leaves_raw = jax.tree_util.tree_leaves(raw)
    leaves_out = jax.tree_util.tree_leaves(result)
    for leaf, a, r, b in zip(spec_leaves(spec_in), leaves_in, leaves_raw, leaves_out):
        if leaf.uid in to_array:
            # A Python float returned as an array: the weak array `jit` makes of it.
            weak_float = jax.dtypes.canonicalize_dtype(float)
            assert isinstance(b, jax.Array) and _aval(b) == ((), weak_float, True), leaf
            assert _bits(b) == _bits(convert_element_type(r, weak_float, True)), leaf
        elif leaf.uid in reported_uids:
            # Cast back: the input's exact type, the value rounded by the cast only.
            assert _aval(b) == _aval(a), leaf
            if leaf.kind == "python":
                assert b == transform(r, leaf, leaf) and type(b) is type(a)
            else:
                expected = convert_element_type(r, jnp.dtype(leaf.dtype), leaf.weak)
                assert _bits(b) == _bits(expected), leaf
        else:
            # Untouched by the guard (unchanged, or weak-only drift with weak_type=False).
            assert _aval(b) == _aval(r), leaf
            assert _bits(b) == _bits(r), leaf
            if not jit and all(m.source != leaf.uid for m in mutations):
                assert b is a


# Example counts scale with the Hypothesis profile tests/conftest.py loads ("ci": 25).
EXAMPLES = settings.default.max_examples
PROFILE = settings(
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JIT_PROFILE = settings(PROFILE, max_examples=max(1, EXAMPLES // 3))  # each example compiles
SMALL_PROFILE = settings(PROFILE, max_examples=max(1, EXAMPLES * 2 // 3))
# "ci": 200 examples, with as many cast-restoring ones as 400 gave when mutations hit the root.
SLOW_PROFILE = settings(PROFILE, max_examples=EXAMPLES * 8)


@PROFILE
@given(data=st.data())
def test_check_mode_reports_exactly_the_mutated_paths(x64, data):
    spec_in, spec_out, mutations, weak_type = data.draw(scenarios(dtype_pool(x64)))
    run_check(spec_in, spec_out, mutations, weak_type, jit=False)


@PROFILE
@given(data=st.data())
def test_cast_mode_restores_dtypes_and_raises_for_the_rest(x64, data):
    spec_in, spec_out, mutations, weak_type = data.draw(scenarios(dtype_pool(x64)))
    run_cast(spec_in, spec_out, mutations, weak_type, jit=False)


@JIT_PROFILE
@given(data=st.data())
def test_check_mode_under_jit(x64, data):
    spec_in, spec_out, mutations, weak_type = data.draw(scenarios(dtype_pool(x64), False))
    run_check(spec_in, spec_out, mutations, weak_type, jit=True)


@JIT_PROFILE
@given(data=st.data())
def test_cast_mode_under_jit(x64, data):
    spec_in, spec_out, mutations, weak_type = data.draw(scenarios(dtype_pool(x64), False))
    run_cast(spec_in, spec_out, mutations, weak_type, jit=True)


def _blind_guard(step, mode, weak_type):
    """A broken guard: it never looks (mode "off"), whatever mode it is asked for."""
    return state_dtype_invariant(step, mode="off", weak_type=weak_type)


def _weak_blind_guard(step, mode, weak_type):
    """A broken guard: it ignores weak-type drift even when asked to report it."""
    return state_dtype_invariant(step, mode=mode, weak_type=False)


@pytest.mark.parametrize("run", [run_check, run_cast], ids=["check", "cast"])
@pytest.mark.parametrize("guard", [_blind_guard, _weak_blind_guard], ids=["blind", "weak-blind"])
def test_the_properties_catch_a_broken_guard(run, guard):
    """The search and the oracle together can fail: they find a broken guard's bug
    within the profile's examples (without this, a vacuous oracle would pass too)."""

    # Weak-type drift is the rarest kind drawn: more examples; the search stops at the
    # first failure, and skips shrinking it.
    @settings(PROFILE, max_examples=EXAMPLES * 4, phases=[Phase.generate])
    @given(data=st.data())
    def prop(data):
        spec_in, spec_out, mutations, weak_type = data.draw(scenarios(dtype_pool(False)))
        run(spec_in, spec_out, mutations, weak_type, jit=False, guard=guard)

    with pytest.raises((AssertionError, pytest.fail.Exception, StateDtypeError)):
        prop()


@pytest.mark.slow
@SLOW_PROFILE
@given(data=st.data())
def test_many_examples_check_and_cast(x64, data):
    spec_in, spec_out, mutations, weak_type = data.draw(scenarios(dtype_pool(x64)))
    run_check(spec_in, spec_out, mutations, weak_type, jit=False)
    run_cast(spec_in, spec_out, mutations, weak_type, jit=False)


@SMALL_PROFILE
@given(data=st.data())
def test_unchanged_state_always_passes(x64, data):
    spec = data.draw(tree_specs(dtype_pool(x64)))
    state = build(spec, make_leaf)
    for mode in ("check", "cast"):
        result = state_dtype_invariant(lambda s: s, mode=mode)(state)
        assert result is state


@SMALL_PROFILE
@given(data=st.data())
def test_rebuilt_state_of_equal_types_passes(data):
    """Fresh arrays of the same types (not the same objects) are no drift."""
    spec = data.draw(tree_specs(dtype_pool(False)))
    state = build(spec, make_leaf)
    rebuilt = build(spec, make_leaf)
    assert state_dtype_invariant(lambda s: rebuilt)(state) is rebuilt


@pytest.mark.parametrize("name", NARROW + WIDE)
def test_every_named_dtype_is_a_legal_leaf(name):
    """The pool really holds every dtype (guards against silently dropping one)."""
    with x64_for("float64"):
        leaf = make_leaf(Leaf("array", name, (2,), False, 0))
        assert leaf.dtype == jnp.dtype(name)
        assert state_dtype_invariant(lambda s: s)(leaf) is leaf


def test_float0_and_key_leaves_read_well_in_reports():
    state = {"k": jax.random.key(0), "t": np.zeros(2, jax.dtypes.float0)}

    def step(state):
        return {"k": jax.random.key(0, impl="rbg"), "t": jnp.zeros(2, bool)}

    for mode in ("check", "cast"):
        with pytest.raises(StateDtypeError) as info:
            state_dtype_invariant(step, mode=mode)(state)
        text = str(info.value)
        assert "state['k']: key<fry>[] -> key<rbg>[]" in text
        assert "state['t']: float0[2] -> bool[2]" in text
        if mode == "cast":  # cast mode: no advice to use cast mode
            assert 'mode="cast"' not in text
            assert "typed PRNG keys and float0 leaves cannot be cast" in text
