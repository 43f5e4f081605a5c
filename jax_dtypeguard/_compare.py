"""Walks an input and an output state together and lists every mismatch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from ._compat import Tracer
from ._errors import CASTABLE_KINDS, Mismatch
from ._signature import (
    LeafSignature,
    NotALeafError,
    category,
    describe_static,
    is_static,
    static_equal,
)

_tree = jax.tree_util


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of comparing two states.

    `castable` maps leaf indices (in flattening order, only when both trees
    have one structure) to the input signature each should be cast back to.
    `uncastable` lists the mismatches no cast can fix.
    """

    mismatches: tuple[Mismatch, ...]
    castable: tuple[tuple[int, LeafSignature], ...] = ()
    uncastable: tuple[Mismatch, ...] = ()


OK = Verdict(())


def _signature(leaf: Any, path: str) -> LeafSignature:
    try:
        return LeafSignature.of(leaf)
    except NotALeafError as error:
        raise TypeError(
            f"state leaf {path} is {error}: state leaves must be arrays of JAX dtypes, "
            "Python scalars, or static objects (functions, strings, other objects). "
            "Convert it to a JAX dtype, or keep it out of the state."
        ) from None


def _uncastable_dtype(dtype: np.dtype) -> bool:
    return jax.numpy.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jax.dtypes.float0


def _static_mismatch(path: str, a: Any, b: Any) -> list[Mismatch]:
    if is_static(a) and is_static(b) and static_equal(a, b):
        return []
    describe = lambda x: describe_static(x) if is_static(x) else str(_signature(x, path))  # noqa: E731
    return [Mismatch(path, "structure", describe(a), describe(b))]


def compare_leaves(
    path: str, a: Any, b: Any, weak_type: bool
) -> tuple[list[Mismatch], LeafSignature | None]:
    """Every mismatch between input leaf `a` and output leaf `b`, and the cast that fixes them.

    The cast target is `None` when no cast can fix them without changing what
    a value means: a change of shape, sharding or structure, of a dtype's
    category (int -> float), or of a typed key or float0.
    """
    try:
        sa, sb = LeafSignature.of(a), LeafSignature.of(b)
    except NotALeafError:
        if is_static(a) or is_static(b):
            return _static_mismatch(path, a, b), None
        sa, sb = _signature(a, path), _signature(b, path)  # the error that names the leaf
    if sa == sb:
        return [], None
    if sb.python_scalar is not None and sa.python_scalar is None and isinstance(a, Tracer):
        # Inside a trace, `jit` and JAX's loops make a returned Python scalar the array
        # of its aval: the same as the traced input leaf's is no drift, another is that
        # dtype or weak_type drift, cast like an array's (`sb` keeps its name for reports).
        if sb.as_array() == sa:
            return [], None
    elif (sa.python_scalar is None) != (sb.python_scalar is None):
        # A Python scalar that an eager step returns as a 0-d array of its kind: cast to
        # the weak array `jit` makes of the scalar. A traced array for a scalar that
        # stayed static (Equinox's filtering) cannot be made static again by a cast.
        scalar_to_array = (
            sa.python_scalar is not None
            and not isinstance(b, Tracer)
            and sb.shape == ()
            and sb.sharding is None
            and category(sa.dtype) == category(sb.dtype)
        )
        found = [
            Mismatch(
                path,
                "structure",
                str(sa),
                str(sb),
                expected_type=sa,
                got_type=sb,
                castable=scalar_to_array,
            )
        ]
        return found, (sa._replace(python_scalar=None) if scalar_to_array else None)
    found = []
    if sa.shape != sb.shape:
        found.append(Mismatch(path, "shape", str(sa), str(sb), expected_type=sa, got_type=sb))
    if sa.dtype != sb.dtype:
        found.append(Mismatch(path, "dtype", str(sa), str(sb), expected_type=sa, got_type=sb))
    if weak_type and sa.weak_type != sb.weak_type:
        found.append(Mismatch(path, "weak_type", str(sa), str(sb), expected_type=sa, got_type=sb))
    if sa.sharding != sb.sharding:
        found.append(Mismatch(path, "sharding", str(sa), str(sb), expected_type=sa, got_type=sb))
    castable = (
        found
        and all(m.kind in CASTABLE_KINDS for m in found)
        and category(sa.dtype) == category(sb.dtype)
        and not (_uncastable_dtype(sa.dtype) or _uncastable_dtype(sb.dtype))
    )
    return found, (sa if castable else None)


_MAX_KEYS_SHOWN = 12


def _describe(node: Any, path: str, other: Any = None) -> str:
    if node is None:
        return "None"
    if _is_leaf(node):
        return describe_static(node) if is_static(node) else str(_signature(node, path))
    children, _ = _one_level(node)
    kind = type(node)
    if kind is dict:
        keys = sorted(map(str, node))
        if len(keys) <= _MAX_KEYS_SHOWN:
            return f"dict with keys {keys}"
        # A large dict: its size, and the keys the other side lacks (a bounded message).
        others = set(map(str, other)) if isinstance(other, dict) else set()
        only_here = [k for k in keys if k not in others][:_MAX_KEYS_SHOWN]
        text = f"dict with {len(keys)} keys"
        return text + (f", {only_here} not in the other" if others and only_here else "")
    if kind in (tuple, list):
        return f"{kind.__name__} of {len(children)}"
    fields = ", ".join(key.lstrip(".") for key in children)
    return f"{kind.__qualname__}({fields})"


def _static_fields(a: Any, b: Any, level_a: Any, level_b: Any) -> tuple[str, str]:
    """Two nodes of one type that differ in static data, with the fields that differ."""
    name = type(a).__qualname__
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        children = {key.lstrip(".") for key in _one_level(a)[0]}
        differing = [
            field.name
            for field in dataclasses.fields(a)
            if field.name not in children
            and not static_equal(getattr(a, field.name, None), getattr(b, field.name, None))
        ]
        if differing:
            show = lambda node: ", ".join(  # noqa: E731
                f"{f}={_static_text(getattr(node, f, None))}" for f in differing
            )
            return f"{name}({show(a)})", f"{name}({show(b)})"
    return (
        f"{name} with static data {_node_data(level_a)}",
        f"{name} with static data {_node_data(level_b)}",
    )


def _static_text(value: Any) -> str:
    return describe_static(value) if is_static(value) else repr(value)


def _node_data(treedef: Any) -> str:
    data = treedef.node_data() if hasattr(treedef, "node_data") else None
    return repr(data[1]) if data is not None else str(treedef)


def _is_leaf(node: Any) -> bool:
    treedef = _tree.tree_structure(node)
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _one_level(node: Any) -> tuple[dict[str, Any], Any]:
    """The node's children by keypath string, and its one-level treedef."""
    entries, treedef = _tree.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return {_tree.keystr(path): child for path, child in entries}, treedef


def _drifting_leaves(
    a: Any, b: Any, root: str, weak_type: bool
) -> Iterator[tuple[int, list[Mismatch], LeafSignature | None]]:
    """For two trees of one structure: (index, mismatches, cast target) per drifting leaf."""
    entries, _ = _tree.tree_flatten_with_path(a)
    for index, ((path, leaf_a), leaf_b) in enumerate(zip(entries, _tree.tree_leaves(b))):
        leaf_found, target = compare_leaves(root + _tree.keystr(path), leaf_a, leaf_b, weak_type)
        if leaf_found:
            yield index, leaf_found, target


def _compare_flat(
    a: Any, b: Any, root: str, weak_type: bool, found: list[Mismatch], unfixable: list[Mismatch]
) -> None:
    for _, leaf_found, target in _drifting_leaves(a, b, root, weak_type):
        found.extend(leaf_found)
        if target is None:
            unfixable.extend(leaf_found)


def _walk(
    a: Any, b: Any, path: str, weak_type: bool, found: list[Mismatch], unfixable: list[Mismatch]
) -> None:
    """Compares subtrees that differ in structure; `unfixable` gets what no cast fixes.

    Iterative (depth-first, in flattening order), so a state nested as deeply
    as JAX can flatten never exhausts Python's recursion limit.
    """
    stack = [(a, b, path)]
    while stack:
        a, b, path = stack.pop()
        if _tree.tree_structure(a) == _tree.tree_structure(b):
            _compare_flat(a, b, path, weak_type, found, unfixable)
            continue
        if a is None or b is None or _is_leaf(a) or _is_leaf(b):
            mismatch = Mismatch(path, "structure", _describe(a, path, b), _describe(b, path, a))
            found.append(mismatch)
            unfixable.append(mismatch)
            continue
        children_a, level_a = _one_level(a)
        children_b, level_b = _one_level(b)
        if level_a != level_b:
            expected, got = _describe(a, path, b), _describe(b, path, a)
            if expected == got:  # same container and children: a static field changed
                expected, got = _static_fields(a, b, level_a, level_b)
            mismatch = Mismatch(path, "structure", expected, got)
            found.append(mismatch)
            unfixable.append(mismatch)
        common = [(key, child) for key, child in children_a.items() if key in children_b]
        stack.extend((child, children_b[key], path + key) for key, child in reversed(common))


def compare_states(state_in: Any, state_out: Any, root: str, weak_type: bool = True) -> Verdict:
    """Compares two states leaf by leaf; paths start at `root`."""
    found: list[Mismatch] = []
    uncastable: list[Mismatch] = []
    if _tree.tree_structure(state_in) != _tree.tree_structure(state_out):
        _walk(state_in, state_out, root, weak_type, found, uncastable)
        return Verdict(tuple(found), (), tuple(uncastable))
    castable = []
    for index, leaf_found, target in _drifting_leaves(state_in, state_out, root, weak_type):
        found.extend(leaf_found)
        if target is not None:
            castable.append((index, target))
        else:
            uncastable.extend(leaf_found)
    return Verdict(tuple(found), tuple(castable), tuple(uncastable))


def compare_partitioned(
    state_in: Any, state_out: Any, root: str, weak_type: bool, traced: Callable[[Any], bool]
) -> Verdict:
    """Compares two states split as Equinox's `partition` splits them by `traced`.

    The traced halves are compared leaf by leaf; the other leaves (Python
    scalars included, which `compare_states` compares by type) by value, as
    Optimistix's `eqx.tree_equal` does. Only traced leaves are cast: the
    verdict's indices are among the leaves of the whole of `state_out`.
    """
    dynamic_in, static_in, _ = _partition(state_in, traced)
    dynamic_out, static_out, positions = _partition(state_out, traced)
    verdict = compare_states(dynamic_in, dynamic_out, root, weak_type)
    values = dict(static_out)
    changed = tuple(
        Mismatch(root + path, "structure", describe_static(old), describe_static(values[path]))
        for path, old in static_in
        if path in values and not static_equal(old, values[path])
    )
    if changed:
        return Verdict(verdict.mismatches + changed, (), verdict.uncastable + changed)
    castable = tuple((positions[index], target) for index, target in verdict.castable)
    return dataclasses.replace(verdict, castable=castable)


def _partition(
    tree: Any, traced: Callable[[Any], bool]
) -> tuple[Any, list[tuple[str, Any]], list[int]]:
    """(`tree` with its untraced leaves as None, the untraced leaves by keypath, the
    positions of the traced leaves among all of `tree`'s)."""
    entries, treedef = _tree.tree_flatten_with_path(tree)
    flags = [not is_static(leaf) and bool(traced(leaf)) for _, leaf in entries]
    dynamic = [leaf if flag else None for (_, leaf), flag in zip(entries, flags)]
    static = [(_tree.keystr(path), leaf) for (path, leaf), flag in zip(entries, flags) if not flag]
    positions = [index for index, flag in enumerate(flags) if flag]
    return _tree.tree_unflatten(treedef, dynamic), static, positions
