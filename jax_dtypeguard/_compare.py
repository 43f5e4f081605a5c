"""Walks an input and an output state together and lists every mismatch."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from ._errors import CASTABLE_KINDS, Mismatch
from ._signature import LeafSignature, NotALeafError

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
            f"state leaf {path} is {error}: state leaves must be arrays or Python "
            "scalars (bool, int, float, complex). Keep other values out of the "
            "state, or mark them static (`equinox.field(static=True)`, "
            "`flax.struct.field(pytree_node=False)`)."
        ) from None


def _uncastable_dtype(dtype: np.dtype) -> bool:
    return jax.numpy.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jax.dtypes.float0


def compare_leaves(path: str, a: Any, b: Any, weak_type: bool) -> list[Mismatch]:
    """Every mismatch between input leaf `a` and output leaf `b`."""
    sa, sb = _signature(a, path), _signature(b, path)
    if sa == sb:
        return []
    if (sa.python_scalar is None) != (sb.python_scalar is None):
        return [Mismatch(path, "structure", str(sa), str(sb))]
    found = []
    if sa.shape != sb.shape:
        found.append(Mismatch(path, "shape", str(sa), str(sb)))
    if sa.dtype != sb.dtype:
        found.append(Mismatch(path, "dtype", str(sa), str(sb)))
    if weak_type and sa.weak_type != sb.weak_type:
        found.append(Mismatch(path, "weak_type", str(sa), str(sb)))
    if sa.sharding != sb.sharding:
        found.append(Mismatch(path, "sharding", str(sa), str(sb)))
    return found


def _is_castable(a: Any, b: Any, found: list[Mismatch]) -> bool:
    if not all(m.kind in CASTABLE_KINDS for m in found):
        return False
    sa, sb = LeafSignature.of(a), LeafSignature.of(b)
    return not (_uncastable_dtype(sa.dtype) or _uncastable_dtype(sb.dtype))


_MAX_KEYS_SHOWN = 12


def _describe(node: Any, path: str, other: Any = None) -> str:
    if node is None:
        return "None"
    if _is_leaf(node):
        return str(_signature(node, path))
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


def _is_leaf(node: Any) -> bool:
    treedef = _tree.tree_structure(node)
    return treedef.num_nodes == 1 and treedef.num_leaves == 1


def _one_level(node: Any) -> tuple[dict[str, Any], Any]:
    """The node's children by keypath string, and its one-level treedef."""
    entries, treedef = _tree.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    return {_tree.keystr(path): child for path, child in entries}, treedef


def _drifting_leaves(
    a: Any, b: Any, root: str, weak_type: bool
) -> Iterator[tuple[int, Any, list[Mismatch], bool]]:
    """For two trees of one structure: (index, input leaf, mismatches, castable) per drifting leaf."""
    entries, _ = _tree.tree_flatten_with_path(a)
    for index, ((path, leaf_a), leaf_b) in enumerate(zip(entries, _tree.tree_leaves(b))):
        leaf_found = compare_leaves(root + _tree.keystr(path), leaf_a, leaf_b, weak_type)
        if leaf_found:
            yield index, leaf_a, leaf_found, _is_castable(leaf_a, leaf_b, leaf_found)


def _compare_flat(
    a: Any, b: Any, root: str, weak_type: bool, found: list[Mismatch], unfixable: list[Mismatch]
) -> None:
    for _, _, leaf_found, castable in _drifting_leaves(a, b, root, weak_type):
        found.extend(leaf_found)
        if not castable:
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
            mismatch = Mismatch(path, "structure", _describe(a, path, b), _describe(b, path, a))
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
    for index, leaf_in, leaf_found, fixable in _drifting_leaves(
        state_in, state_out, root, weak_type
    ):
        found.extend(leaf_found)
        if fixable:
            castable.append((index, LeafSignature.of(leaf_in)))
        else:
            uncastable.extend(leaf_found)
    return Verdict(tuple(found), tuple(castable), tuple(uncastable))
