"""The audit of `init`: the root cause of most drift is an `init` that builds a
leaf in the wrong dtype, or weak (`jnp.array(0.0)`, `jnp.zeros(n)` without a dtype).

`init` is traced once into a jaxpr; each leaf of its state is traced back to
the equation that built it (or found to be a constant of `init`), so a report
can name `init`'s line.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._call_site import equation_location, user_frame
from .._compat import Tracer
from .._errors import Mismatch, Origin, short_path
from .._plan import describe_location
from .._signature import LeafSignature, split_traced
from ..testing import InitCheck

_tree = jax.tree_util


@dataclasses.dataclass(frozen=True)
class InitOrigin(Origin):
    """Where `init` built a leaf, and (`then`) where the step changed it."""

    then: Origin | None = None
    constant: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line} in {self.function}"
        text = f"built as a constant by init ({where})" if self.constant else f"built by {where}"
        if self.then is not None:
            text += f"; then {self.then}"
        return text


@dataclasses.dataclass(frozen=True)
class _Leaf:
    signature: LeafSignature
    origin: InitOrigin
    follows: LeafSignature | None  # the params leaf whose dtype it should have


def _matches(reference: Any) -> Callable[[Any], bool]:
    """Whether a subtree of the state mirrors `reference`: same structure and shapes."""
    treedef = _tree.tree_structure(reference)
    shapes = [np.shape(leaf) for leaf in _tree.tree_leaves(reference)]

    def matches(node: Any) -> bool:
        if _tree.tree_structure(node) != treedef:
            return False
        leaves = _tree.tree_leaves(node)
        return all(
            isinstance(leaf, (jax.Array, Tracer)) and leaf.shape == shape
            for leaf, shape in zip(leaves, shapes)
        )

    return matches


def _init_leaves(check: InitCheck, dtype: str) -> dict[str, _Leaf]:
    """Every array leaf of `init`'s state at `dtype`, by path below the root."""
    args = list(check.make_args(dtype))
    reference = args[check.reference]
    ref_leaves = _tree.tree_leaves(reference)
    mirrored = check.mirrored and any(np.ndim(leaf) > 0 for leaf in ref_leaves)
    values, rebuild = split_traced(args, check.traced)
    paths: list[str] = []
    follows: list[LeafSignature | None] = []

    def run(values: list[Any]) -> list[Any]:
        state = check.fn(*rebuild(values))
        if check.select is not None:
            state = check.select(state)
        matches = _matches(reference)
        wanted: dict[str, LeafSignature] = {}
        if mirrored:
            nodes = _tree.tree_flatten_with_path(state, is_leaf=matches)[0]
            for node_path, node in nodes:
                if not matches(node):
                    continue
                subpaths = [_tree.keystr(path) for path, _ in _tree.tree_flatten_with_path(node)[0]]
                for path, ref in zip(subpaths, ref_leaves):
                    wanted[_tree.keystr(node_path) + path] = LeafSignature.of(ref)
        arrays = [
            (_tree.keystr(path), leaf)
            for path, leaf in _tree.tree_flatten_with_path(state)[0]
            if isinstance(leaf, (jax.Array, Tracer))
        ]
        paths[:] = [path for path, _ in arrays]
        follows[:] = [wanted.get(path) for path, _ in arrays]
        return [leaf for _, leaf in arrays]

    closed = jax.make_jaxpr(run)(values)
    producers = {id(v): e for e in closed.jaxpr.eqns for v in e.outvars}
    name, location = describe_location(check.fn)
    file, _, line = location.rpartition(":")
    leaves = {}
    for path, outvar, aval, ref in zip(paths, closed.jaxpr.outvars, closed.out_avals, follows):
        eqn = producers.get(id(outvar))
        where = equation_location(eqn) if eqn is not None else None
        if eqn is None or where is None:
            number = int(line) if line.isdigit() else None
            origin = InitOrigin("init", file or None, number, name, constant=True)
        else:
            origin = InitOrigin(eqn.primitive.name, where[0], where[1], where[2])
        signature = LeafSignature(aval.shape, np.dtype(aval.dtype), bool(aval.weak_type), None)
        leaves[path] = _Leaf(signature, origin, ref)
    return leaves


# JAX's array constructors: a constant of `init` is the value one of them returned.
_CONSTRUCTORS = (
    "array",
    "asarray",
    "zeros",
    "ones",
    "full",
    "zeros_like",
    "ones_like",
    "full_like",
)


def _constant_lines(check: InitCheck, dtype: str) -> dict[str, tuple[str, int, str]]:
    """For each leaf of `init`'s state that a JAX array constructor built, the
    line that called it: `init` is run once, eagerly, watching the constructors
    return (a constant has no equation, so no line, in a jaxpr)."""
    codes = {getattr(getattr(jnp, name, None), "__code__", None) for name in _CONSTRUCTORS}
    codes.discard(None)
    made: dict[int, tuple[Any, str, int, str]] = {}

    def watch(frame: Any, event: str, value: Any) -> None:
        if event != "return" or frame.f_code not in codes:
            return
        caller = user_frame(frame.f_back, installed=True)[0]
        if caller is not None and id(value) not in made:
            code = caller.f_code
            name = getattr(code, "co_qualname", code.co_name)
            made[id(value)] = (value, short_path(code.co_filename), caller.f_lineno, name)

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        state = check.fn(*check.make_args(dtype))
    except Exception:
        return {}
    finally:
        sys.setprofile(previous)
    if check.select is not None:
        state = check.select(state)
    lines = {}
    for path, leaf in _tree.tree_flatten_with_path(state)[0]:
        if id(leaf) in made and made[id(leaf)][0] is leaf:
            lines[_tree.keystr(path)] = made[id(leaf)][1:]
    return lines


def check_init(check: InitCheck, dtype: str, mismatches: Sequence[Mismatch]) -> list[Mismatch]:
    """`mismatches` (the step's) with `init`'s findings at `dtype`: each weak leaf the
    step makes strong names the `init` line that built it, and each float buffer that
    mirrors the params in another dtype than theirs is reported, with its line."""
    leaves = _init_leaves(check, dtype)
    found = []
    reported = {m.path for m in mismatches}
    lines: dict[str, tuple[str, int, str]] | None = None
    for m in mismatches:
        path = m.path[len(check.root) :]
        leaf = leaves.get(path) if m.path.startswith(check.root) else None
        if m.kind == "weak_type" and leaf is not None and leaf.signature.weak_type:
            origin = leaf.origin
            if origin.constant:
                lines = _constant_lines(check, dtype) if lines is None else lines
                if path in lines:
                    file, line, function = lines[path]
                    origin = InitOrigin("init", file, line, function, constant=True)
            m = dataclasses.replace(m, origin=dataclasses.replace(origin, then=m.origin))
        found.append(m)
    for path, leaf in leaves.items():
        ref = leaf.follows
        if ref is None or check.root + path in reported:
            continue
        floats = jnp.issubdtype(ref.dtype, jnp.inexact) and jnp.issubdtype(
            leaf.signature.dtype, jnp.inexact
        )
        if floats and leaf.signature.dtype != ref.dtype:
            expected = str(ref._replace(weak_type=False))
            found.append(
                Mismatch(check.root + path, "dtype", expected, str(leaf.signature), leaf.origin)
            )
    return found
