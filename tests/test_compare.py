"""The tree comparison: every mismatch, at the right path, of the right kind."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_dtypeguard._compare import compare_states
from jax_dtypeguard._signature import LeafSignature


class Adam(NamedTuple):
    count: jax.Array
    mu: jax.Array


class Other(NamedTuple):
    count: jax.Array
    mu: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Point:
    x: jax.Array
    y: jax.Array


def kinds(verdict):
    return [(m.path, m.kind) for m in verdict.mismatches]


def test_equal_states_have_no_mismatch():
    state = {"a": jnp.ones(3), "b": (jnp.int32(1), 2.0)}
    assert compare_states(state, state, "state").mismatches == ()


def test_every_drifting_leaf_is_reported_with_its_path():
    state = Adam(jnp.int32(0), {"w": jnp.ones(3, jnp.float16), "b": jnp.ones(2, jnp.float16)})
    out = Adam(jnp.int32(1), {"w": jnp.ones(3, jnp.float32), "b": jnp.ones(2, jnp.float32)})
    assert kinds(compare_states(state, out, "opt_state")) == [
        ("opt_state.mu['b']", "dtype"),
        ("opt_state.mu['w']", "dtype"),
    ]


def test_a_leaf_drifting_in_dtype_and_shape_gives_two_mismatches():
    verdict = compare_states(jnp.ones(3, jnp.float16), jnp.ones(4, jnp.float32), "state")
    assert kinds(verdict) == [("state", "shape"), ("state", "dtype")]
    assert verdict.mismatches[0].expected == "float16[3]"
    assert verdict.mismatches[0].got == "float32[4]"


def test_weak_type_drift_and_its_switch():
    strong = jnp.float32(1.0)
    concrete = jnp.asarray(1.0) * 1.0  # a weakly typed array
    abstract = jax.eval_shape(lambda: jnp.asarray(1.0))  # a weakly typed ShapeDtypeStruct
    for weak in (concrete, abstract):
        assert LeafSignature.of(weak).weak_type
        assert kinds(compare_states(weak, strong, "s")) == [("s", "weak_type")]
        assert kinds(compare_states(strong, weak, "s")) == [("s", "weak_type")]
        assert compare_states(weak, strong, "s", weak_type=False).mismatches == ()
        assert compare_states(weak, weak, "s").mismatches == ()


def test_zero_then_none_is_a_structure_mismatch_naming_the_field():
    state = {"info": {"num_linesearch_steps": 0, "value": jnp.float32(1)}}
    out = {"info": {"num_linesearch_steps": None, "value": jnp.float32(1)}}
    verdict = compare_states(state, out, "opt_state")
    (mismatch,) = verdict.mismatches
    assert mismatch.path == "opt_state['info']['num_linesearch_steps']"
    assert mismatch.kind == "structure"
    assert mismatch.expected == "weak int32[] (Python int)"
    assert mismatch.got == "None"


def test_python_scalar_against_array_is_structure():
    verdict = compare_states({"n": 0}, {"n": jnp.int32(0)}, "s")
    assert kinds(verdict) == [("s['n']", "structure")]


def test_python_scalars_count_as_jax_types_them():
    assert compare_states(1.0, 2.0, "s").mismatches == ()
    assert kinds(compare_states(1, 1.5, "s")) == [("s", "dtype")]


def test_dict_keys_changed_and_common_keys_still_compared():
    state = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2)}
    out = {"a": jnp.ones(2, jnp.float32), "c": jnp.ones(2)}
    verdict = compare_states(state, out, "s")
    assert kinds(verdict) == [("s", "structure"), ("s['a']", "dtype")]
    assert verdict.mismatches[0].expected == "dict with keys ['a', 'b']"
    assert verdict.mismatches[0].got == "dict with keys ['a', 'c']"


def test_namedtuple_type_change_is_structure_and_fields_still_compared():
    state = Adam(jnp.int32(0), jnp.ones(2, jnp.float16))
    out = Other(jnp.int32(0), jnp.ones(2, jnp.float32))
    verdict = compare_states(state, out, "s")
    assert kinds(verdict) == [("s", "structure"), ("s.mu", "dtype")]
    assert "Adam(count, mu)" in verdict.mismatches[0].expected
    assert "Other(count, mu)" in verdict.mismatches[0].got


def test_tuple_against_list_is_structure():
    verdict = compare_states((jnp.ones(1),), [jnp.ones(1)], "s")
    assert kinds(verdict) == [("s", "structure")]
    assert verdict.mismatches[0].expected == "tuple of 1"
    assert verdict.mismatches[0].got == "list of 1"


def test_dataclass_fields_and_extra_tuple_element():
    state = (Point(jnp.ones(2), jnp.ones(2)), jnp.ones(1))
    out = (Point(jnp.ones(2), jnp.ones(3)), jnp.ones(1), jnp.ones(1))
    verdict = compare_states(state, out, "s")
    assert kinds(verdict) == [("s", "structure"), ("s[0].y", "shape")]


def test_leaf_against_subtree_is_structure():
    verdict = compare_states({"a": jnp.ones(2)}, {"a": (jnp.ones(2),)}, "s")
    assert kinds(verdict) == [("s['a']", "structure")]
    assert verdict.mismatches[0].got == "tuple of 1"


def test_empty_containers_and_none():
    assert compare_states((), (), "s").mismatches == ()
    assert compare_states(None, None, "s").mismatches == ()
    assert kinds(compare_states((), None, "s")) == [("s", "structure")]
    assert kinds(compare_states({}, [], "s")) == [("s", "structure")]


def test_castable_and_uncastable_are_split():
    key = jax.random.key(0)
    state = {"w": jnp.ones(2, jnp.float16), "k": key, "n": jnp.ones(2)}
    out = {"w": jnp.ones(2, jnp.float32), "k": jax.random.key_data(key), "n": jnp.ones(3)}
    verdict = compare_states(state, out, "s")
    assert [(i, str(sig)) for i, sig in verdict.castable] == [(2, "float16[2]")]
    assert sorted(m.path for m in verdict.uncastable) == ["s['k']", "s['k']", "s['n']"]


def test_non_array_leaves_are_static_and_compared_by_equality():
    assert compare_states({"name": "adam"}, {"name": "adam"}, "s").mismatches == ()
    assert compare_states({"f": jax.nn.relu}, {"f": jax.nn.relu}, "s").mismatches == ()
    verdict = compare_states({"name": "adam"}, {"name": "sgd"}, "s")
    assert [str(m) for m in verdict.mismatches] == ["s['name']: 'adam' -> 'sgd'"]
    assert verdict.uncastable == verdict.mismatches
    (changed,) = compare_states({"f": jax.nn.relu}, {"f": jax.nn.gelu}, "s").mismatches
    assert (changed.kind, changed.expected, changed.got) == (
        "structure",
        "custom_jvp relu",
        "function gelu",
    )
    (to_array,) = compare_states({"f": "x"}, {"f": jnp.ones(2)}, "s").mismatches
    assert (to_array.kind, to_array.expected, to_array.got) == ("structure", "'x'", "float32[2]")


def test_numpy_arrays_are_canonicalised_like_jax_does(x64):
    sig = LeafSignature.of(np.ones(2, np.float64))
    assert sig.dtype == (np.float64 if x64 else np.float32)
    assert not sig.weak_type


def test_shape_dtype_struct_leaves():
    a = jax.ShapeDtypeStruct((2,), jnp.float32)
    b = jax.ShapeDtypeStruct((2,), jnp.float16)
    assert kinds(compare_states(a, b, "s")) == [("s", "dtype")]


def _is_array(leaf):
    return isinstance(leaf, jax.Array)


def test_partitioned_states_cast_only_traced_leaves_at_their_place_in_the_whole_tree():
    from jax_dtypeguard._cast import cast_back
    from jax_dtypeguard._compare import compare_partitioned

    before = {"a_count": 3, "b": jnp.ones(2, jnp.float16), "c_name": "adam"}
    after = {"a_count": 3, "b": jnp.ones(2, jnp.float32), "c_name": "adam"}
    verdict = compare_partitioned(before, after, "state", True, _is_array)
    assert [(m.path, m.kind) for m in verdict.mismatches] == [("state['b']", "dtype")]
    assert [index for index, _ in verdict.castable] == [1]  # "a_count" is leaf 0 of the whole
    assert cast_back(after, verdict.castable)["b"].dtype == jnp.float16


def test_partitioned_states_compare_untraced_leaves_by_value_and_cast_nothing_then():
    from jax_dtypeguard._compare import compare_partitioned

    before = {"count": 3, "x": jnp.ones(2, jnp.float16)}
    after = {"count": 4, "x": jnp.ones(2, jnp.float32)}
    verdict = compare_partitioned(before, after, "state", True, _is_array)
    assert {(m.path, m.kind) for m in verdict.mismatches} == {
        ("state['count']", "structure"),
        ("state['x']", "dtype"),
    }
    assert verdict.castable == ()
    assert [m.path for m in verdict.uncastable] == ["state['count']"]
    assert compare_states(before, after, "state").mismatches[0].path == "state['x']"  # by type


def _traced(compare):
    """`compare(*leaves)`, the leaves tracers of bool[], float16[], float32[], weak float32[]."""
    found = {}

    def trace(*leaves):
        found["verdicts"] = compare(*leaves)
        return leaves

    jax.eval_shape(trace, jnp.array(True), jnp.float16(1), jnp.float32(1), 1.0)
    return found["verdicts"]


def test_a_python_scalar_of_the_traced_leafs_aval_is_no_drift():
    # jit and JAX's loops turn a returned Python scalar into the array of its aval.
    verdicts = _traced(
        lambda flag, half, single, weak: [
            compare_states({"is_reset": flag}, {"is_reset": False}, "s"),
            compare_states(weak, 2.0, "s"),
        ]
    )
    assert [v.mismatches for v in verdicts] == [(), ()]


def test_a_python_scalar_of_another_aval_inside_a_trace_is_that_dtype_or_weak_type_drift():
    flag_int, half_float, single_float, no_weak = _traced(
        lambda flag, half, single, weak: [
            compare_states(flag, 1, "s"),
            compare_states(half, 0.5, "s"),
            compare_states(single, 0.5, "s"),
            compare_states(single, 0.5, "s", weak_type=False),
        ]
    )
    assert kinds(flag_int) == [("s", "dtype"), ("s", "weak_type")]
    assert flag_int.castable == () and len(flag_int.uncastable) == 2  # bool -> int: a kind
    assert kinds(half_float) == [("s", "dtype"), ("s", "weak_type")]
    assert half_float.mismatches[0].got == "weak float32[] (Python float)"
    assert half_float.castable == ((0, LeafSignature((), np.dtype("float16"), False)),)
    assert kinds(single_float) == [("s", "weak_type")]
    assert no_weak.mismatches == ()


def test_a_python_scalar_for_a_concrete_array_stays_structure():
    for state, out in [({"f": jnp.array(True)}, {"f": False}), (jnp.float32(1), 2.0)]:
        verdict = compare_states(state, out, "s")
        assert [m.kind for m in verdict.mismatches] == ["structure"]
        assert verdict.castable == ()
