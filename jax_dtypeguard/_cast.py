"""Casts drifting leaves back: one conversion per drifting leaf, none otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ._compat import convert_element_type
from ._signature import LeafSignature

_PYTHON_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex}


def _cast_leaf(leaf: Any, target: LeafSignature) -> Any:
    if target.python_scalar is not None:
        value = (
            leaf.real if isinstance(leaf, complex) and target.python_scalar != "complex" else leaf
        )
        return _PYTHON_TYPES[target.python_scalar](value)
    if isinstance(leaf, jax.ShapeDtypeStruct):  # an abstract state: the cast is a new struct
        return jax.ShapeDtypeStruct(
            leaf.shape, target.dtype, sharding=leaf.sharding, weak_type=target.weak_type
        )
    return convert_element_type(leaf, target.dtype, target.weak_type)


def cast_back(state_out: Any, castable: Sequence[tuple[int, LeafSignature]]) -> Any:
    """`state_out` with each listed leaf cast to its target signature."""
    if not castable:
        return state_out
    leaves, treedef = jax.tree_util.tree_flatten(state_out)
    for index, target in castable:
        leaves[index] = _cast_leaf(leaves[index], target)
    return jax.tree_util.tree_unflatten(treedef, leaves)
