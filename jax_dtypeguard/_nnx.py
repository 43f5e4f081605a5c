"""Flax NNX states: graph nodes flattened through `nnx.state`, cast values written back."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from ._plan import StateParameter
from ._signature import flax_nnx

_tree = jax.tree_util


def is_graph_node(value: Any) -> bool:
    """Whether `value` is a Flax NNX graph node (a module, an optimizer, a variable)."""
    nnx = flax_nnx()
    return nnx is not None and nnx.graph.is_graph_node(value)


def as_tree(value: Any) -> Any:
    """A state as a pytree: NNX graph nodes that JAX cannot flatten through `nnx.state`."""
    if is_graph_node(value) and _tree.treedef_is_leaf(_tree.tree_structure(value)):
        return flax_nnx().state(value)
    return value


def write_back(target: Any, value: Any, name: str) -> None:
    """Updates the in-place state `target` to `value` (of the same structure)."""
    if is_graph_node(target):
        nnx = flax_nnx()
        nnx.update(target, nnx.state(value) if is_graph_node(value) else value)
    elif isinstance(target, dict):
        target.update(value)
    elif isinstance(target, list):
        target[:] = value
    else:
        raise TypeError(
            f"cast mode cannot write the cast values back into the in-place state '{name}', "
            f"a {type(target).__qualname__}: only Flax NNX objects, dicts and lists can be "
            'updated in place. Use mode="check", or return the new state (out=...).'
        )


def returning(fn: Callable[..., Any], parameter: StateParameter) -> Callable[..., Any]:
    """`fn`, also returning the in-place state `parameter` as it is after the call."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        return result, as_tree(parameter.find(args, kwargs)[1])

    return call
