"""What a jitted call looks like in the user's terms: the function they wrote, its file and
line, and its arguments by parameter name.

`jax.jit` traces the user's function with the user's arguments. `eqx.filter_jit`
and `nnx.jit` call `jax.jit` on a function of their own, with the arguments
split into their own layout (Equinox: arrays apart from everything else;
Flax NNX: graph nodes as flat `NodeStates`); this module puts them back
together. `tests/test_recompiles.py` fails loudly if either library changes it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import weakref
from typing import Any

import jax

from ._compat import JitTrace
from ._errors import short_path

_tree = jax.tree_util


@dataclasses.dataclass(frozen=True)
class CallView:
    """One jitted call as the user wrote it.

    `arguments` maps each parameter name to the value passed (a pytree);
    `static` names the parameters jit holds static, compared by value
    (Equinox holds every leaf that is no array static: those are marked
    `EquinoxStatic` in `arguments`).
    """

    name: str
    location: str | None
    key: Any  # what identifies the function across closures made anew: its code
    identity: Any  # the function object itself (weakly, where it can be)
    arguments: dict[str, Any]
    static: frozenset[str]
    keywords: frozenset[str] = frozenset()  # the arguments passed by keyword (jit keys on it)


def _unwrap(fun: Any) -> Any:
    while True:
        if isinstance(fun, functools.partial):
            fun = fun.func
        elif hasattr(fun, "__wrapped__") and not isinstance(fun, type):
            fun = fun.__wrapped__
        else:
            return fun


def _weakly(fun: Any) -> Any:
    try:
        return weakref.ref(fun)
    except TypeError:
        return lambda: fun


def same_function(a: Any, b: Any) -> bool:
    """Whether two `CallView.identity`s are one function object (still alive)."""
    fun = a()
    return fun is not None and fun is b()


def describe_function(fun: Any) -> tuple[str, str | None, Any]:
    """`(qualified name, "file:line", key)` of a function; the key is its code object where it
    has one, so that closures made anew from one `def` count as one function."""
    inner = _unwrap(fun)
    code = getattr(inner, "__code__", None)
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
    if name is None:
        name = type(inner).__qualname__
        code = getattr(vars(type(inner)).get("__call__"), "__code__", None)
    if code is None:
        return name, None, ("object", id(inner))
    return name, f"{short_path(code.co_filename)}:{code.co_firstlineno}", code


def _bind(
    signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[int, str]]:
    """Parameter name -> value, and argument position -> parameter name."""
    if signature is not None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            pass
        else:
            names: dict[str, Any] = {}
            positions: dict[int, str] = {}
            position = 0
            for name, value in bound.arguments.items():
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    for i, item in enumerate(value):
                        names[f"{name}[{i}]"] = item
                        positions[position] = f"{name}[{i}]"
                        position += 1
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    names.update(value)
                else:
                    names[name] = value
                    if position < len(args) and name not in kwargs:
                        positions[position] = name
                        position += 1
            return names, positions
    names = {f"args[{i}]": a for i, a in enumerate(args)}
    names.update(kwargs)
    return names, {i: f"args[{i}]" for i in range(len(args))}


def _view(
    trace: JitTrace, fun: Any, arguments: dict[str, Any], positions: dict[int, str]
) -> CallView:
    """The view of `fun`'s call with its arguments by the user's names, and which of them
    jit holds static (`static_argnums` by position, `static_argnames`)."""
    name, location, key = describe_function(fun)
    static = {positions[i] for i in trace.static_argnums if i in positions}
    static |= {n for n in trace.static_argnames if n in arguments}
    return CallView(
        name,
        location,
        key,
        _weakly(fun),
        arguments,
        frozenset(static),
        keywords=frozenset(trace.kwargs),
    )


def _plain(trace: JitTrace) -> CallView:
    arguments, positions = _bind(trace.signature, trace.args, trace.kwargs)
    return _view(trace, trace.fun, arguments, positions)


# --- Equinox: `filter_jit` jits `fun_wrapped(dynamic_donate, dynamic_nodonate, static)` ------


def _is_equinox(fun: Any) -> bool:
    code = getattr(fun, "__code__", None)
    return (
        code is not None
        and code.co_name == "fun_wrapped"
        and getattr(fun, "__module__", None) == "equinox._jit"
    )


class EquinoxStatic:
    """A leaf that Equinox holds static (not an array): compared by value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        from ._signature import static_equal

        return isinstance(other, EquinoxStatic) and static_equal(self.value, other.value)

    def __hash__(self) -> int:
        return hash(type(self.value))

    def text(self) -> str:
        """The value as a reader knows it (a function by name)."""
        from ._signature import describe_static, is_static

        return describe_static(self.value) if is_static(self.value) else repr(self.value)

    def __repr__(self) -> str:
        return f"{self.text()} (static)"


def _combine(dynamic: tuple[Any, ...], static: tuple[tuple[Any, ...], Any]) -> Any:
    """Equinox's `hashable_combine`, with its static leaves marked `EquinoxStatic`."""
    static_leaves, treedef = static
    leaves = [d if s is None else EquinoxStatic(s) for d, s in zip(dynamic, static_leaves)]
    return _tree.tree_unflatten(treedef, leaves)


def _unmark(tree: Any) -> Any:
    return _tree.tree_map(lambda x: x.value if isinstance(x, EquinoxStatic) else x, tree)


def _equinox(trace: JitTrace) -> CallView | None:
    try:
        dynamic_donate, dynamic_nodonate, static = trace.args
        dynamic = {**dynamic_donate, **dynamic_nodonate}
        static_fun, static_first, static_rest = static
        fun = _unmark(_combine(dynamic["fun"], static_fun))
        first = _combine(dynamic["first"], static_first)
        rest, kwargs = _combine(dynamic["rest"], static_rest)
    except (KeyError, TypeError, ValueError):
        return None
    args = (first, *rest[:-1])  # Equinox appends a dummy `None`
    name, location, key = describe_function(fun)
    try:
        signature: inspect.Signature | None = inspect.signature(fun)
    except (TypeError, ValueError):
        signature = None
    arguments, _ = _bind(signature, args, kwargs)
    return CallView(name, location, key, _weakly(_unwrap(fun)), arguments, frozenset())


# --- Flax NNX: `nnx.jit` jits `JitFn(f)` on graph nodes split into `NodeStates` ------------


def _flax_jit_function(fun: Any) -> Any:
    """The user's function, where `fun` is NNX's `JitFn`/`SimpleJitFn` around it."""
    module = sys.modules.get("flax.nnx.transforms.compilation")
    if module is None:
        return None
    kinds = tuple(getattr(module, n) for n in ("JitFn", "SimpleJitFn") if hasattr(module, n))
    return fun.f if kinds and isinstance(fun, kinds) else None


def _nnx_state(value: Any) -> Any:
    """A `NodeStates` argument as the `nnx.State` of the graph node it stands for."""
    nnx = sys.modules["flax.nnx"]
    from flax.nnx import extract

    def as_state(x: Any) -> Any:
        if not isinstance(x, extract.NodeStates) or x._graphdef is None:
            return x
        node = nnx.merge(x.graphdef, *x.states)
        # Paths as the guard prints them: through the node where JAX can flatten it.
        return nnx.state(node) if _tree.treedef_is_leaf(_tree.tree_structure(node)) else node

    return _tree.tree_map(as_state, value, is_leaf=lambda x: isinstance(x, extract.NodeStates))


def _flax(trace: JitTrace, fun: Any) -> CallView:
    try:
        signature: inspect.Signature | None = inspect.signature(fun)
    except (TypeError, ValueError):
        signature = None
    arguments, positions = _bind(signature, trace.args, trace.kwargs)
    try:
        arguments = {k: _nnx_state(v) for k, v in arguments.items()}
    except Exception:  # an NNX layout this version does not know: its own leaves then
        pass
    return _view(trace, fun, arguments, positions)


def view_of(trace: JitTrace) -> CallView:
    """The call as the user wrote it, for `jax.jit`, `eqx.filter_jit` and `nnx.jit`."""
    if _is_equinox(trace.fun):
        view = _equinox(trace)
        if view is not None:
            return view
    user_fun = _flax_jit_function(trace.fun)
    if user_fun is not None:
        return _flax(trace, user_fun)
    return _plain(trace)
