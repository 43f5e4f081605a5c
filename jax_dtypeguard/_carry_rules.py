"""What a loop or a branch accepts: JAX's and Equinox's rules for a body's output.

`jax.lax` loops take a body output whose leaves have the carry's shape and
dtype, weak_type aside, and promote a weak initial carry to the body's dtype
where `jnp.result_type` allows it; Equinox's internal while loop converts
Python scalars with `jnp.array` and compares shape and dtype only (it does
not promote a weak initial carry); `cond` and
`switch` compare branches' outputs with each other, weak_type aside. A Python
scalar is typed as JAX types it.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._compare import OK, Verdict, compare_states
from ._signature import LeafSignature, NotALeafError, leaf_keys

_tree = jax.tree_util
Rule = Literal["lax", "equinox", "branches"]
_WEAK_PYTHON_TYPES = ((np.bool_, bool), (np.integer, int), (np.floating, float))


def _python_type_of(dtype: np.dtype) -> type:
    for kind, python_type in _WEAK_PYTHON_TYPES:
        if np.issubdtype(dtype, kind):
            return python_type
    return complex


def accepts(rule: Rule, carry: LeafSignature, output: LeafSignature) -> bool:
    """Whether a loop (or a `cond`) takes `output` where its carry (or the other branch) is `carry`."""
    if carry.shape != output.shape or carry.sharding != output.sharding:
        return False
    if carry.dtype == output.dtype:
        return True
    return rule == "lax" and carry.python_scalar is None and weak_promotion(carry, output)


def weak_promotion(carry: LeafSignature, output: LeafSignature) -> bool:
    """Whether `jax.lax`'s loops promote the weak initial carry `carry` to `output`'s dtype.

    They do where the carry is weak, of another dtype than the body's output,
    and `jnp.result_type` of the two is the output's dtype (a weak float32
    `jnp.inf` carried by a float16 body); the loop is then traced again with
    the carry converted. Equinox's internal while loop does not do this.
    """
    if not carry.weak_type or carry.dtype == output.dtype or carry.shape != output.shape:
        return False
    promoted = jnp.result_type(_python_type_of(carry.dtype), output.dtype)
    return np.dtype(promoted) == output.dtype


def weak_promotions(state_in: Any, state_out: Any) -> dict[str, np.dtype]:
    """The leaves of a loop's initial carry that `jax.lax` would promote, by keypath
    (below the root): each one's dtype after promotion (the body's output dtype).

    Paths that do not line up (a changed structure, a leaf that is no array)
    are left out.
    """
    leaves_out, tree_out = _tree.tree_flatten(state_out)
    entries, tree_in = _tree.tree_flatten_with_path(state_in)
    if tree_in != tree_out:
        return {}
    found = {}
    for (path, leaf_in), leaf_out in zip(entries, leaves_out):
        try:
            signature_in, signature_out = LeafSignature.of(leaf_in), LeafSignature.of(leaf_out)
        except NotALeafError:
            continue
        if weak_promotion(signature_in, signature_out):
            found[_tree.keystr(path)] = signature_out.dtype
    return found


def scalar_for_array(carry: LeafSignature, output: LeafSignature) -> bool:
    """A Python scalar returned where the carry holds an array."""
    return carry.python_scalar is None and output.python_scalar is not None


def carry_verdict(state_in: Any, state_out: Any, root: str, rule: Rule, weak_type: bool) -> Verdict:
    """Compares a body's output with its carry under a loop's rule.

    With `weak_type=False` only what the loop rejects is drift. With
    `weak_type=True` every change is, as for the decorator, except that a
    Python scalar the loop accepts for an array leaf is castable (converted to
    the carry's type) instead of a structure change no cast can fix.
    """
    leaves_in, tree_in = _tree.tree_flatten(state_in)
    leaves_out, tree_out = _tree.tree_flatten(state_out)
    if tree_in != tree_out:
        return compare_states(state_in, state_out, root, weak_type)
    try:
        if leaf_keys(leaves_in) == leaf_keys(leaves_out):
            return OK
    except NotALeafError:
        pass
    found, castable, uncastable = [], [], []
    entries = _tree.tree_flatten_with_path(state_in)[0]
    for index, ((path, leaf_in), leaf_out) in enumerate(zip(entries, leaves_out)):
        where = root + _tree.keystr(path)
        try:
            signature_in, signature_out = LeafSignature.of(leaf_in), LeafSignature.of(leaf_out)
        except NotALeafError:
            leaf = compare_states(leaf_in, leaf_out, where, weak_type)
            found += leaf.mismatches
            uncastable += leaf.uncastable
            continue
        if signature_in == signature_out:
            continue
        accepted = accepts(rule, signature_in, signature_out)
        if accepted and not weak_type:
            continue
        leaf = compare_states(leaf_in, leaf_out, where, weak_type)
        if not leaf.mismatches:  # a Python scalar of the traced carry's own type
            continue
        found += leaf.mismatches
        if accepted and scalar_for_array(signature_in, signature_out):
            castable.append((index, signature_in))
        elif leaf.uncastable:
            uncastable += leaf.uncastable
        elif leaf.castable:
            castable.append((index, leaf.castable[0][1]))
    if not found:
        return OK
    return Verdict(tuple(found), tuple(castable), tuple(uncastable))


def accepted_scalars(state_in: Any, state_out: Any, rule: Rule) -> list[str]:
    """Keypaths (below the root) of Python scalars the loop accepts for array leaves of
    another type (a weak float for a strong float32 leaf; not `False` for a `bool[]`)."""
    entries = _tree.tree_flatten_with_path(state_in)[0]
    leaves_out, tree_out = _tree.tree_flatten(state_out)
    if _tree.tree_structure(state_in) != tree_out:
        return []
    paths = []
    for (path, leaf_in), leaf_out in zip(entries, leaves_out):
        try:
            signature_in, signature_out = LeafSignature.of(leaf_in), LeafSignature.of(leaf_out)
        except NotALeafError:
            continue
        if (
            scalar_for_array(signature_in, signature_out)
            and signature_out.as_array() != signature_in
            and accepts(rule, signature_in, signature_out)
        ):
            paths.append(_tree.keystr(path))
    return paths
