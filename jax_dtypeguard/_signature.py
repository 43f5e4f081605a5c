"""One description of a state leaf's type: shape, dtype, weak_type, sharding."""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from ._caches import Cache, register
from ._compat import Tracer, explicit_sharding, get_aval

_PYTHON_SCALARS = (bool, int, float, complex)
# What an array leaf is: a JAX array, a tracer, a NumPy array or a NumPy scalar.
ARRAY_TYPES = (jax.Array, Tracer, np.ndarray, np.generic)
# Types seen to carry a JAX aval in `.aval` (arrays and tracers), learnt lazily.
_AVAL_TYPES: set[type] = register(set())
_aval_of = operator.attrgetter("aval")


def flax_nnx() -> Any:
    """Flax NNX, where the program has imported it (a state can only be NNX then)."""
    return sys.modules.get("flax.nnx")


def category(dtype: np.dtype) -> str:
    """The kind of values a dtype holds: bool, integer, floating, complex, or the dtype itself.

    A cast within a category changes precision only; across categories it
    changes what the values mean (`0.3` as an int is `0`).
    """
    for kind in (np.bool_, np.complexfloating, np.floating, np.integer):
        if jax.numpy.issubdtype(dtype, kind):
            return kind.__name__
    return str(dtype)


def needs_x64(dtype: Any) -> bool:
    """Whether JAX holds `dtype` only with x64 on (64-bit reals, 128-bit complex)."""
    resolved = np.dtype(dtype)
    return resolved.itemsize >= (16 if resolved.kind == "c" else 8)


class NotALeafError(TypeError):
    """Internal: a state leaf that JAX cannot type (a string, an object)."""


# The signatures of the avals seen lately (JAX shares one aval among arrays of one type).
_BY_AVAL = Cache()


class LeafSignature(NamedTuple):
    """The type of one state leaf, as JAX sees it.

    `python_scalar` is the Python type's name (`"int"`, `"float"`, ...) for a
    Python scalar leaf, `None` for an array. `sharding` is the
    `PartitionSpec` under a mesh with Explicit axes, else `None`.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    weak_type: bool
    sharding: Any = None
    python_scalar: str | None = None

    @classmethod
    def of(cls, leaf: Any) -> LeafSignature:
        """The signature of `leaf`; raises `NotALeafError` for non-array leaves."""
        if isinstance(leaf, _PYTHON_SCALARS) and not isinstance(leaf, np.generic):
            kind = next(t for t in _PYTHON_SCALARS if isinstance(leaf, t))
            dtype = jax.dtypes.canonicalize_dtype(kind)
            return cls((), np.dtype(dtype), kind is not bool, None, kind.__name__)
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return cls(
                tuple(leaf.shape),
                leaf.dtype,
                bool(getattr(leaf, "weak_type", False)),
                explicit_sharding(leaf),
            )
        aval: Any
        if isinstance(leaf, Tracer):
            aval = leaf.aval
        elif isinstance(leaf, jax.Array):
            # `Array.aval` can lack the mesh (a 0-d array placed with P()); typeof has it.
            named = isinstance(leaf.sharding, jax.sharding.NamedSharding)
            aval = get_aval(leaf) if named else leaf.aval
        elif isinstance(leaf, (np.ndarray, np.generic)):
            try:
                aval = get_aval(leaf)
            except TypeError as error:
                raise NotALeafError(
                    f"a NumPy array of dtype {leaf.dtype}, which JAX cannot hold"
                ) from error
        else:
            raise NotALeafError(f"a {type(leaf).__module__}.{type(leaf).__qualname__}")
        try:
            return _BY_AVAL[aval]
        except (KeyError, TypeError):  # not seen yet, or unhashable
            pass
        signature = cls(
            tuple(aval.shape), aval.dtype, bool(aval.weak_type), explicit_sharding(aval)
        )
        _BY_AVAL.remember(aval, signature)
        return signature

    def as_array(self) -> LeafSignature:
        """The type of the array JAX makes of this leaf when it traces it (a Python
        scalar's 0-d array; an array's own type)."""
        return self if self.python_scalar is None else self._replace(python_scalar=None)

    def __str__(self) -> str:
        dtype = "float0" if self.dtype == jax.dtypes.float0 else self.dtype
        text = f"{dtype}[{','.join(map(str, self.shape))}]"
        if self.weak_type:
            text = "weak " + text
        if self.sharding is not None:
            text += f" sharded {self.sharding}"
        if self.python_scalar is not None:
            text += f" (Python {self.python_scalar})"
        return text


def is_static(leaf: Any) -> bool:
    """A leaf that is no array and no Python scalar (a function, a string, an object).

    Such leaves are static parts of a state, as Equinox treats them: compared
    by equality, never traced or cast.
    """
    return not isinstance(leaf, (*ARRAY_TYPES, jax.ShapeDtypeStruct, *_PYTHON_SCALARS))


def split_traced(
    tree: Any, traced: Callable[[Any], bool] | None = None
) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The leaves of `tree` that JAX should trace, and a function rebuilding the
    tree from new values for them; every other leaf is kept as it is, a constant
    of the trace. `traced` narrows which traceable leaves are traced
    (`eqx.is_array` keeps Python scalars static); a leaf JAX cannot trace is
    static whatever it says."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    flags = [not is_static(leaf) and (traced is None or bool(traced(leaf))) for leaf in leaves]

    def rebuild(values: list[Any]) -> Any:
        it = iter(values)
        full = [next(it) if t else leaf for leaf, t in zip(leaves, flags)]
        return jax.tree_util.tree_unflatten(treedef, full)

    return [leaf for leaf, t in zip(leaves, flags) if t], rebuild


def static_equal(a: Any, b: Any) -> bool:
    """Whether two static leaves are equal (identity, else an `==` that says True)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return (a == b) is True
    except Exception:  # an `==` that raises or returns an array: not provably equal
        return False


def describe_static(leaf: Any) -> str:
    """A static leaf as a reader knows it: a function by name, anything else by repr."""
    name = getattr(leaf, "__qualname__", None) or getattr(
        getattr(leaf, "__wrapped__", None), "__qualname__", None
    )
    if name is None and hasattr(leaf, "fun"):  # jax.custom_jvp / custom_vjp
        name = getattr(leaf.fun, "__qualname__", None)
    kind = type(leaf).__name__
    if name is not None and callable(leaf):
        return f"{kind} {name}"
    text = repr(leaf).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


class _StaticKey:
    """A static leaf in a cache key: equal when `static_equal` says so."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticKey) and static_equal(self.value, other.value)

    def __hash__(self) -> int:
        try:
            return hash((type(self.value), self.value))
        except TypeError:
            return hash(type(self.value))


def _slow_key(leaf: Any) -> Any:
    if isinstance(leaf, (jax.Array, Tracer)) and hasattr(leaf, "aval"):
        _AVAL_TYPES.add(type(leaf))
        return leaf.aval
    if isinstance(leaf, _PYTHON_SCALARS) and not isinstance(leaf, np.generic):
        return type(leaf)
    if is_static(leaf):
        return _StaticKey(leaf)
    return LeafSignature.of(leaf)


def array_keys(leaves: Sequence[Any]) -> tuple[Any, ...] | None:
    """The leaves' avals in one C-level pass, or None unless every leaf is an array or tracer."""
    try:
        return tuple(map(_aval_of, leaves))
    except AttributeError:
        return None


def leaf_keys(leaves: Sequence[Any]) -> tuple[Any, ...]:
    """Cheap hashable stand-ins for the leaves' signatures.

    Equal keys mean equal signatures; unequal keys are settled by comparing
    `LeafSignature`s. This is the eager fast path and the cache key.
    """
    keys = array_keys(leaves)  # all arrays or tracers: the usual case
    if keys is not None:
        return keys
    aval_types = _AVAL_TYPES
    return tuple([x.aval if type(x) in aval_types else _slow_key(x) for x in leaves])


def state_keys(leaves_in: Sequence[Any], leaves_out: Sequence[Any]) -> tuple[Any, ...] | None:
    """The key of the verdict on an input and an output state that are not all arrays:
    both sides' `leaf_keys`, and whether their arrays are tracers.

    A verdict depends on that (a Python scalar returned for a traced array is
    the array `jit` makes of it; for a concrete one, a structure change). None,
    for no caching, where some arrays are traced and others are not.
    """
    arrays = [leaf for leaf in (*leaves_in, *leaves_out) if isinstance(leaf, jax.Array)]
    traced = sum(isinstance(leaf, Tracer) for leaf in arrays)
    if 0 < traced < len(arrays):
        return None
    return leaf_keys(leaves_in), leaf_keys(leaves_out), traced > 0
