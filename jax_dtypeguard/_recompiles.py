"""Why did it compile again? `explain_recompiles` watches every trace by `jit`.

Every `jax.jit` trace (and so every `eqx.filter_jit` and `nnx.jit` one) goes
through one JAX function on a miss of jit's tracing cache; `_compat` routes it
through `_observe` once, for the process. Outside an `explain_recompiles`
scope (a context variable) `_observe` only calls through; a call that hits
jit's C++ cache never reaches it. Inside, each trace that is not nested in
another is a compile: its arguments' types are kept, and a compile after a
function's first is compared with the closest earlier one. Compile times come
from JAX's monitoring events, attributed to the trace in flight (the trace
stage) or the one just finished on the same thread (lowering, XLA compile).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import _compat
from ._call_site import jax_directories, user_frame
from ._compare import compare_states
from ._errors import Mismatch, Origin, short_path
from ._jit_wrappers import CallView, EquinoxStatic, describe_function, same_function, view_of
from ._provenance import output_origin
from ._recompile_report import (
    CompiledFunction,
    Recompile,
    RecompileError,
    RecompileReport,
    Snapshot,
    describe_recompile,
    recompile_hint,
)
from ._signature import LeafSignature, NotALeafError, describe_static, static_equal

_tree = jax.tree_util

_ACTIVE: contextvars.ContextVar[tuple[_Recorder, ...]] = contextvars.ContextVar(
    "jax_dtypeguard_explain_recompiles", default=()
)
_INSTALL_LOCK = threading.Lock()
_INSTALLED = False
_EVENTS: dict[str, str] = {}


class _Local(threading.local):
    def __init__(self) -> None:
        self.stack: list[_Trace] = []  # jit traces in flight on this thread, innermost last
        # Top-level traces whose lowering and XLA compile may still come, latest last.
        self.awaiting: list[_Trace] = []
        self.traced: _Traced | None = None  # the last top-level trace, until jit runs it
        self.runs = 0  # jitted calls running on this thread (nested ones in lowering rules)


_LOCAL = _Local()


class _Trace:
    """One trace by jit; its stages' seconds arrive as JAX's monitoring events."""

    __slots__ = ("eager", "name", "nested", "parent", "seconds", "stages")

    def __init__(self, parent: _Trace | None, name: str, eager: bool = False) -> None:
        self.parent = parent
        self.name = name  # as JAX's events name it (its trace event says, where it comes)
        self.eager = eager  # JAX's jit of one primitive: an eager operation
        self.seconds = 0.0
        self.stages: set[str] = set()
        self.nested: list[str] = []  # jitted functions traced inside this one (names)

    def top(self) -> _Trace:
        trace = self
        while trace.parent is not None:
            trace = trace.parent
        return trace


@dataclasses.dataclass(frozen=True)
class _Source:
    """A value that a compiling call returned: its jaxpr's output `output`."""

    jaxpr: Any
    output: int
    inputs: dict[str, int]  # the call's leaf paths -> jaxpr inputs
    function: Any  # the key of the function (`CallView.key`)
    name: str
    location: str | None

    def origin(self, path: str, departed_from: LeafSignature, kind: str) -> Origin | None:
        """Where the value departed from `departed_from` in the call; the call's input at
        `path` (the value it stands in for, as in `state = step(state)`) preferred. A
        constant the function returned has no line of its own: the function's is given."""
        found = output_origin(self.jaxpr, self.output, departed_from, kind, self.inputs.get(path))
        if found is not None or not _compat.is_literal(self.jaxpr.jaxpr.outvars[self.output]):
            return found
        file, _, line = (self.location or "").rpartition(":")
        if not file or not line.isdigit():
            return Origin("a constant", function=self.name)
        return Origin("a constant", file, int(line), self.name)


@dataclasses.dataclass
class _Compile:
    arguments: dict[str, Any]  # parameter name -> the argument's types (abstract pytree)
    identity: Any  # the jitted function object (a weak reference)
    # Weakly held: JAX's caches keep a live jaxpr's lowering and executable, so holding
    # every compile's jaxpr would hold every program the scope compiled.
    jaxpr: weakref.ref[Any] | None
    trace: _Trace
    sources: dict[str, _Source]  # leaf path -> the compiling call that returned the leaf
    inputs: dict[str, int]  # leaf path -> the jaxpr input it is
    keywords: frozenset[str]  # the arguments passed by keyword
    flat: _Flat = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.flat = _Flat(self.arguments)


def _jaxpr_inputs(trace: _compat.JitTrace, view: CallView, jaxpr: Any) -> dict[str, int]:
    """Leaf path (in the user's names) -> index among the jaxpr's inputs, for array leaves.

    jit's inputs are the leaves of its dynamic arguments, positional then keyword, after
    any constants JAX hoisted; arrays are matched to the user's paths by identity.
    """
    if jaxpr is None:
        return {}
    static = set(trace.static_argnums)
    dynamic = (
        tuple(a for i, a in enumerate(trace.args) if i not in static),
        {k: v for k, v in trace.kwargs.items() if k not in trace.static_argnames},
    )
    leaves = _tree.tree_leaves(dynamic)
    offset = len(jaxpr.jaxpr.invars) - len(leaves)
    if offset < 0:
        return {}
    positions: dict[int, int] = {}
    repeated: set[int] = set()
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, (jax.Array, np.ndarray)):
            key = id(leaf)
            if key in positions:
                repeated.add(key)
            positions[key] = offset + index
    found = {}
    for name, value in view.arguments.items():
        if name in view.static:
            continue
        for path, leaf in _tree.tree_flatten_with_path(value)[0]:
            key = id(leaf)
            if key in positions and key not in repeated:
                found[name + _tree.keystr(path)] = positions[key]
    return found


# Arrays that a compiling call returned, while a scope was active: id -> (weak reference,
# jaxpr of the call, output index, the call's inputs). Entries go when their array does.
_RETURNED: dict[int, tuple[Any, _Source]] = {}


def _forget(key: int) -> Callable[[Any], None]:
    def forget(reference: Any) -> None:
        entry = _RETURNED.get(key)
        if entry is not None and entry[0] is reference:
            del _RETURNED[key]

    return forget


def _remember_outputs(traced: _Traced, out_flat: list[Any]) -> None:
    """Remembers the arrays a compiling call returned, for the origins of later compiles."""
    for k, value in enumerate(out_flat):
        try:
            reference = weakref.ref(value, _forget(id(value)))
        except TypeError:  # not an array: nothing will be passed back as it
            continue
        source = _Source(
            traced.jaxpr, k, traced.inputs, traced.view.key, traced.view.name, traced.view.location
        )
        _RETURNED[id(value)] = (reference, source)


def _sources(view: CallView) -> dict[str, _Source]:
    """Leaf path -> (jaxpr, output) for the arguments that a compiling call returned."""
    if not _RETURNED:
        return {}
    found = {}
    for name, value in view.arguments.items():
        if name in view.static:
            continue
        for path, leaf in _tree.tree_flatten_with_path(value)[0]:
            entry = _RETURNED.get(id(leaf))
            if entry is not None and entry[0]() is leaf:
                found[name + _tree.keystr(path)] = entry[1]
    return found


@dataclasses.dataclass
class _History:
    key: Any
    name: str
    location: str | None
    internal: bool  # one of JAX's own jitted functions (an eager jax.numpy call)
    compiles: list[_Compile] = dataclasses.field(default_factory=list)
    recompiles: list[Recompile] = dataclasses.field(default_factory=list)


class StaticArgument:
    """A static argument of `jit` (`static_argnums`/`static_argnames`): compared by value."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return describe_static(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticArgument) and static_equal(self.value, other.value)

    def __hash__(self) -> int:
        return hash(type(self.value))


class _WeakStatic:
    """A static function, held weakly: equal by identity, once dead it can equal no later
    value, so holding it would only keep it (a closure, its arrays) alive."""

    __slots__ = ("ref", "text")

    def __init__(self, value: Any) -> None:
        self.ref = weakref.ref(value)
        self.text = describe_static(value)

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        value = self.ref()
        return isinstance(other, _WeakStatic) and value is not None and value is other.ref()

    def __hash__(self) -> int:
        return hash(_WeakStatic)


def _held(value: Any) -> Any:
    """A static value as a compile keeps it: weakly for a function (named cheaply, equal by
    identity); anything else by value, since its repr may cost what its tree costs."""
    if type(value).__eq__ is not object.__eq__ or getattr(value, "__qualname__", None) is None:
        return value
    try:
        return _WeakStatic(value)
    except TypeError:  # not weakly referenceable
        return value


def _leaf_key(leaf: Any) -> Any:
    """What jit's cache sees of a leaf of abstract arguments, as an `==`-comparable value."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        sharding = getattr(leaf, "sharding", None)
        return (leaf.shape, leaf.dtype, leaf.weak_type, None if sharding is None else str(sharding))
    if isinstance(leaf, (bool, int, float, complex)):
        return type(leaf)
    return leaf


class _Flat:
    """Abstract arguments flattened once, for a quick count of the leaves that differ."""

    __slots__ = ("keys", "treedef")

    def __init__(self, arguments: dict[str, Any]) -> None:
        leaves, self.treedef = _tree.tree_flatten(arguments)
        self.keys = [_leaf_key(leaf) for leaf in leaves]

    def distance(self, other: _Flat) -> int | None:
        """How many leaves differ, or None where the trees differ in structure."""
        if self.treedef != other.treedef:
            return None
        return sum(1 for a, b in zip(self.keys, other.keys) if not _same(a, b))


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # an `==` that raises or returns an array: not provably equal
        return False


# How many of a function's latest compiles a new one is compared with.
_COMPARED = 64
_COMPARED_IN_FULL = 8


def _closest(compiles: list[_Compile], compile: _Compile) -> _Compile:
    """The earlier compile whose arguments differ from `compile`'s in the fewest leaves (the
    latest on a tie): counted quickly where the trees have one structure, else in full."""
    candidates = compiles[-_COMPARED:][::-1]
    best: tuple[int, _Compile] | None = None
    for earlier in candidates:
        distance = earlier.flat.distance(compile.flat)
        if distance is not None and (best is None or distance < best[0]):
            best = (distance, earlier)
    if best is not None:
        return best[1]
    counted = [
        (_differing_leaves(compare_arguments(e.arguments, compile.arguments)), e)
        for e in candidates[:_COMPARED_IN_FULL]
    ]
    return min(counted, key=lambda pair: pair[0])[1]


def _abstract_leaf(leaf: Any) -> Any:
    """A leaf as jit sees its type; Python scalars as they are, static leaves as held."""
    if isinstance(leaf, (bool, int, float, complex)):
        return leaf
    if isinstance(leaf, EquinoxStatic):
        return EquinoxStatic(_held(leaf.value))
    try:
        signature = LeafSignature.of(leaf)
    except NotALeafError:
        return leaf
    if signature.python_scalar is not None:
        return leaf
    sharding = None
    if signature.sharding is not None:
        sharding = getattr(leaf, "sharding", None) or getattr(leaf.aval, "sharding", None)
    return jax.ShapeDtypeStruct(
        signature.shape, signature.dtype, weak_type=signature.weak_type, sharding=sharding
    )


def _abstract_arguments(view: CallView) -> dict[str, Any]:
    arguments = {}
    for name, value in view.arguments.items():
        if name in view.static:
            arguments[name] = StaticArgument(_held(value))
        else:
            arguments[name] = _tree.tree_map(_abstract_leaf, value)
    return arguments


def _leaves_by_path(root: str, tree: Any) -> dict[str, Any]:
    return {root + _tree.keystr(p): leaf for p, leaf in _tree.tree_flatten_with_path(tree)[0]}


def _as_jit_sees(m: Mismatch) -> Mismatch:
    """A Python scalar against an array of its aval differs for jit in weak_type (and dtype)
    only: the kinds say so, the texts keep "(Python float)"."""
    a, b = m.expected_type, m.got_type
    if m.kind != "structure" or a is None or b is None:
        return m
    kinds = []
    if a.shape != b.shape:
        kinds.append("shape")
    if a.dtype != b.dtype:
        kinds.append("dtype")
    if a.weak_type != b.weak_type:
        kinds.append("weak_type")
    if a.sharding != b.sharding:
        kinds.append("sharding")
    if not kinds:
        return m
    return dataclasses.replace(m, kind=kinds[0])  # pyright: ignore[reportArgumentType]


def compare_arguments(earlier: dict[str, Any], later: dict[str, Any]) -> list[Mismatch]:
    """Every argument leaf whose type differs between two compiles, paths in argument names."""
    found: list[Mismatch] = []
    for name in dict.fromkeys([*earlier, *later]):
        if name not in later or name not in earlier:
            present = later if name in later else earlier
            text = _describe_argument(present[name])
            expected, got = ("absent", text) if name in later else (text, "absent")
            found.append(Mismatch(name, "structure", expected, got))
            continue
        a, b = earlier[name], later[name]
        if isinstance(a, StaticArgument) or isinstance(b, StaticArgument):
            if not (
                isinstance(a, StaticArgument)
                and isinstance(b, StaticArgument)
                and static_equal(a.value, b.value)
            ):
                found.append(Mismatch(name, "static", repr(a), repr(b)))
            continue
        mismatches = compare_states(a, b, name).mismatches
        if any(m.kind == "structure" for m in mismatches):
            mismatches = _static_kinds(mismatches, a, b, name)
        found.extend(_as_jit_sees(m) for m in mismatches)
    return found


def _describe_argument(value: Any) -> str:
    if isinstance(value, StaticArgument):
        return repr(value)
    leaves = _tree.tree_leaves(value)
    return f"{type(value).__name__} with {len(leaves)} leaves" if leaves else repr(value)


def _static_kinds(mismatches: tuple[Mismatch, ...], a: Any, b: Any, root: str) -> list[Mismatch]:
    """A change between two values Equinox holds static is kind `"static"`."""
    left, right = _leaves_by_path(root, a), _leaves_by_path(root, b)
    found = []
    for m in mismatches:
        old, new = left.get(m.path), right.get(m.path)
        if (
            m.kind == "structure"
            and isinstance(old, EquinoxStatic)
            and isinstance(new, EquinoxStatic)
        ):
            m = dataclasses.replace(m, kind="static", expected=old.text(), got=new.text())
        found.append(m)
    return found


def _differing_leaves(mismatches: list[Mismatch]) -> int:
    return len({m.path for m in mismatches})


def _is_internal(view: CallView) -> bool:
    """One of JAX's own jitted helpers; not a function of this package's, whose guarded
    functions (an `invariant(...).update`) the user jits as their own."""
    code = view.key
    file = getattr(code, "co_filename", None)
    if file is None:
        return False
    return os.path.abspath(file).startswith(jax_directories())


class _Recorder:
    """What one `explain_recompiles` scope has seen."""

    def __init__(self, max_compiles: int | None) -> None:
        self.max_compiles = max_compiles
        self.lock = threading.Lock()
        self.histories: dict[Any, _History] = {}
        self.timed = False
        self.exceeded = False
        self.untraced_count = 0
        self.untraced_seconds = 0.0
        self.untraced_names: dict[str, None] = {}
        self.nested: dict[str, None] = {}
        self.eager_count = 0
        self.eager_seconds = 0.0

    # -- what the observer and the event listener report -------------------------------------

    def record(self, traced: _Traced) -> Any:
        """Records one compile; returns the `RecompileError` to raise, if over budget."""
        view, jaxpr = traced.view, traced.jaxpr
        with self.lock:
            history = self.histories.get(view.key)
            if history is None:
                history = _History(view.key, view.name, view.location, _is_internal(view))
                self.histories[view.key] = history
            if jaxpr is not None and any(
                c.jaxpr is not None and c.jaxpr() is jaxpr for c in history.compiles
            ):
                return None  # JAX reused an earlier trace: jit made anew of the same function
            compile = _Compile(
                traced.arguments,
                view.identity,
                None if jaxpr is None else weakref.ref(jaxpr),
                traced.trace,
                traced.sources,
                traced.inputs,
                view.keywords,
            )
            if history.compiles:
                if not history.internal:  # a helper's recompiles are eager calls, unexplained
                    history.recompiles.append(self._explain(history, compile, traced.call_site))
                self.nested.update(dict.fromkeys(traced.trace.nested))
                # Only the latest compile (the closest, in a step that changes types once)
                # keeps the jaxprs its arguments came from: bounded memory in a long scope.
                history.compiles[-1].sources = {}
            history.compiles.append(compile)
            if (
                self.max_compiles is None
                or history.internal  # an eager jax.numpy call: one compile per dtype, by design
                or len(history.compiles) <= self.max_compiles
            ):
                return None
            self.exceeded = True
            return _budget_error(history, self.max_compiles)

    def untraced(self, name: str, seconds: float, compiled: bool) -> None:
        with self.lock:
            self.timed = True
            self.untraced_seconds += seconds
            if compiled:
                self.untraced_count += 1
                self.untraced_names[name] = None

    def timing_seen(self, eager_seconds: float) -> None:
        with self.lock:
            self.timed = True
            self.eager_seconds += eager_seconds

    def eager_operation(self) -> None:
        with self.lock:
            self.eager_count += 1

    # -- explaining ----------------------------------------------------------------------------

    def _explain(self, history: _History, compile: _Compile, call_site: str | None) -> Recompile:
        closest = _closest(history.compiles, compile)
        best = compare_arguments(closest.arguments, compile.arguments)
        best, earlier_origins = _origins(best, compile, closest, history.key)
        note = None
        if not best:
            if closest.keywords != compile.keywords:
                moved = sorted(closest.keywords ^ compile.keywords)
                note = (
                    f"argument{'s' if len(moved) > 1 else ''} {', '.join(moved)} passed by "
                    "keyword in one call and by position in the other: jit keys its cache on "
                    "how arguments are passed; pass them the same way"
                )
            elif not same_function(closest.identity, compile.identity):
                note = (
                    "jit was given a new function object (a closure or lambda made anew, "
                    "or jitted again): its cache starts empty; jit it once and reuse it"
                )
            else:
                note = (
                    "no argument changed type: the tracing context did (a config option, a "
                    "mesh, or a context manager such as jax.enable_x64)"
                )
        return Recompile(call_site, tuple(best), note, earlier_origins)

    def close(self) -> None:
        """The scope ended: the report keeps what it shows, not the jaxprs that explained it."""
        with self.lock:
            for history in self.histories.values():
                for compile in history.compiles:
                    compile.sources = {}

    # -- the report ------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.lock:
            functions = []
            eager_count, eager_seconds = self.eager_count, self.eager_seconds
            for h in self.histories.values():
                seconds = sum(c.trace.seconds for c in h.compiles)
                if h.internal:  # JAX's own jitted helpers count as the eager calls they serve
                    eager_count += len(h.compiles)
                    eager_seconds += seconds
                elif h.compiles:
                    functions.append(
                        CompiledFunction(
                            h.name,
                            h.location,
                            len(h.compiles),
                            None,
                            seconds if self.timed else None,
                            tuple(h.recompiles),
                        )
                    )
            functions.sort(key=lambda f: (-(f.seconds or 0.0), -f.compiles))
            return Snapshot(
                tuple(functions),
                self.timed,
                (self.untraced_count, self.untraced_seconds, tuple(self.untraced_names)),
                tuple(self.nested),
                self.max_compiles,
                self.exceeded,
                jax.__version__,
                (eager_count, eager_seconds),
            )


_ORIGIN_KINDS = ("dtype", "weak_type")


def _origins(
    mismatches: list[Mismatch], compile: _Compile, closest: _Compile, function: Any
) -> tuple[list[Mismatch], tuple[tuple[str, Origin], ...]]:
    """Where each changed leaf that a jitted call returned departed from its earlier type
    (`Mismatch.origin`), and where another jitted function (an `init`) built the earlier
    type."""
    explained, earlier = [], []
    for m in mismatches:
        if m.kind in _ORIGIN_KINDS and m.expected_type is not None and m.got_type is not None:
            source = compile.sources.get(m.path)
            if source is not None and m.origin is None:
                origin = source.origin(m.path, m.expected_type, m.kind)
                if origin is not None:
                    m = dataclasses.replace(m, origin=origin)
            before = closest.sources.get(m.path)
            if before is not None and before.function != function:
                origin = before.origin(m.path, m.got_type, m.kind)
                if origin is not None:
                    earlier.append((m.path, origin))
        explained.append(m)
    return explained, tuple(earlier)


def _budget_error(history: _History, budget: int) -> RecompileError:
    recompile = history.recompiles[-1]
    where = f" ({history.location})" if history.location else ""
    lines = [
        f"{history.name}{where} compiled {len(history.compiles)} times, more than "
        f"max_compiles={budget} allows:",
        *describe_recompile(recompile, len(history.compiles)),
        recompile_hint(recompile),
    ]
    return RecompileError("\n".join(lines), recompile.mismatches, function=history.name)


# --- the hook and the event listener --------------------------------------------------------


def _call_site() -> str | None:
    frame, _ = user_frame(sys._getframe(2))
    if frame is None:
        return None
    return f"{short_path(frame.f_code.co_filename)}:{frame.f_lineno}"


def _nested_name(trace: _compat.JitTrace) -> str | None:
    """The name to list in the footnote, or None for JAX's own functions."""
    try:
        view = view_of(trace)
    except Exception:  # a wrapper layout we do not know: its own name
        return describe_function(trace.fun)[0]
    return None if _is_internal(view) else view.name


def _warn(error: Exception) -> None:
    warnings.warn(
        f"jax_dtypeguard.explain_recompiles could not record a compile ({type(error).__name__}: "
        f"{error}); the report may miss it. Please report this, with JAX {jax.__version__}.",
        RuntimeWarning,
        stacklevel=3,
    )


def _observe(trace: _compat.JitTrace, run: Callable[[], Any]) -> Any:
    recorders = _ACTIVE.get()
    if not recorders:
        return run()
    local = _LOCAL
    stack = local.stack
    parent = stack[-1] if stack else None
    if parent is None and not _compat.trace_state_clean():
        # Traced inside a transformation (`grad`, `vmap`, a loop body, a lowering rule):
        # part of what encloses it, not a compile of its own.
        return run()
    current = _Trace(parent, str(getattr(trace.fun, "__name__", "")), eager=trace.primitive)
    stack.append(current)
    try:
        result = run()
    finally:
        stack.pop()
    if parent is None:
        _await_compile(local, current)
    if current.eager:
        if parent is None:
            for recorder in recorders:
                recorder.eager_operation()
        return result
    if parent is not None:
        name = _nested_name(trace)
        if name is not None:
            current.top().nested.append(name)
        return result
    try:
        jaxpr = _compat.traced_jaxpr(result)
    except Exception:  # a JAX whose result we cannot read: no jaxpr, compiles still counted
        jaxpr = None
    try:
        view = view_of(trace)
        # A compile once jit runs what it traced (`make_jaxpr`, `eval_shape`, `.lower()` trace
        # without running): `_observe_run` records it then.
        local.traced = _Traced(
            trace.fun,
            view,
            _abstract_arguments(view),
            current,
            jaxpr,
            _call_site(),
            _sources(view),
            _jaxpr_inputs(trace, view, jaxpr),
        )
    except Exception as error:  # never break the user's program: say so, and go on
        local.traced = None
        _warn(error)
    return result


@dataclasses.dataclass(frozen=True)
class _Traced:
    """A top-level trace by jit, until jit runs it."""

    fun: Any
    view: CallView
    arguments: dict[str, Any]  # abstract, as `_Compile.arguments`
    trace: _Trace
    jaxpr: Any
    call_site: str | None
    sources: dict[str, _Source]
    inputs: dict[str, int]


def _observe_run(fun: Any, run: Callable[[], Any]) -> Any:
    if not _ACTIVE.get():
        return run()
    local = _LOCAL
    local.runs += 1
    try:
        result = run()
    finally:
        local.runs -= 1
        if not local.runs:
            # The call's lowering and XLA compile are done: later events are another's.
            local.awaiting.clear()
    traced = local.traced
    if local.runs or traced is None or traced.fun is not fun:
        return result
    local.traced = None
    recorders = _ACTIVE.get()
    error = None
    try:
        for recorder in recorders:
            error = recorder.record(traced) or error
    except Exception as failure:  # never break the user's program: say so, and go on
        _warn(failure)
    if error is not None:
        raise error
    if traced.jaxpr is not None:
        _remember_outputs(traced, result[1])
    return result


_AWAITING_LIMIT = 16


def _await_compile(local: _Local, trace: _Trace) -> None:
    local.awaiting.append(trace)
    del local.awaiting[:-_AWAITING_LIMIT]


def _awaiting(local: _Local, name: str, stage: str) -> _Trace | None:
    """The trace whose lowering or XLA compile an event with JAX's name `name` times: the
    latest of that name without that stage yet (`jit(step)` is `step`'s)."""
    if name.startswith("jit(") and name.endswith(")"):
        name = name[4:-1]
    for trace in reversed(local.awaiting):
        if stage not in trace.stages and (not name or trace.name == name):
            return trace
    return None


def _on_duration(event: str, seconds: float, **metadata: Any) -> None:
    stage = _EVENTS.get(event)
    if stage is None:
        return
    recorders = _ACTIVE.get()
    if not recorders:
        return
    local = _LOCAL
    name = str(metadata.get("fun_name", ""))
    if stage == "trace":
        target = local.stack[-1] if local.stack else None
        if target is not None and name:
            target.name = name
    else:
        target = _awaiting(local, name, stage)
    if target is None:
        for recorder in recorders:
            recorder.untraced(name, seconds, compiled=stage == "compile")
        return
    target.seconds += seconds
    target.stages.add(stage)
    if stage == "compile":
        local.awaiting.remove(target)
    for recorder in recorders:
        recorder.timing_seen(seconds if target.eager else 0.0)


def _install() -> None:
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED:
            return
        _compat.observe_jit_traces(_observe)
        _compat.observe_jit_runs(_observe_run)
        _EVENTS.update(_compat.compile_events())
        if _EVENTS:
            _compat.listen_to_durations(_on_duration)
        _INSTALLED = True


# --- the public scope ------------------------------------------------------------------------


class explain_recompiles(contextlib.ContextDecorator):
    """Explains every extra compile of every jitted function within the scope.

    A context manager (`with dg.explain_recompiles() as report:`) and a
    decorator. Every function compiled by `jax.jit`, `eqx.filter_jit` or
    `nnx.jit` inside the scope is counted, library code included; for each
    compile after a function's first, the report names the call site and
    every argument leaf whose type differs from the closest earlier compile,
    and, for a leaf that an earlier jitted call returned, the line where it
    departed from its earlier type. A compile is a trace by jit that jit then
    runs (`make_jaxpr` and `eval_shape` trace without compiling); a NumPy
    array where a `jax.Array` was is no compile. A function's first compile
    within the scope is its baseline, even if it compiled before the scope
    began; compiles that happen without a trace in the scope (eager
    operations, functions traced before it) are counted in one line. A call
    that hits jit's cache costs what it costs outside the scope. Scoped by a
    context variable: other threads are not recorded, and scopes nest.

    **Arguments:**

    - `max_compiles`: raise `RecompileError` at the call that compiles any one
      function more often than this.
    - `quiet`: do not print the report to stderr at the end of the scope.

    **Returns:**

    The live `RecompileReport` (as the value of `with ... as report`).

    !!! Example

        ```python
        import jax
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        step = jax.jit(lambda x: x * 2)
        with dg.explain_recompiles(quiet=True) as report:
            step(1.0)
            step(jnp.float32(1.0))  # a strong float32 where a Python float was
        (again,) = [f for f in report.functions if f.compiles > 1]
        print(again.compiles, again.recompiles[0].mismatches[0])
        ```

        ```text
        2 x: weak float32[] (Python float) -> float32[]
        ```
    """

    def __init__(self, *, max_compiles: int | None = None, quiet: bool = False) -> None:
        if max_compiles is not None and (
            isinstance(max_compiles, bool) or not isinstance(max_compiles, int) or max_compiles < 1
        ):
            raise ValueError(
                f"max_compiles must be a positive int (or None for no budget), got {max_compiles!r}"
            )
        self.max_compiles = max_compiles
        self.quiet = quiet
        self._tokens: list[tuple[contextvars.Token[Any], _Recorder]] = []
        self._lock = threading.Lock()

    def _recreate_cm(self) -> explain_recompiles:
        # As a decorator, each call gets a scope (and report) of its own.
        return explain_recompiles(max_compiles=self.max_compiles, quiet=self.quiet)

    def __enter__(self) -> RecompileReport:
        _install()
        if not _LOCAL.runs:  # what earlier calls on this thread left is not this scope's
            _LOCAL.awaiting.clear()
            _LOCAL.traced = None
        recorder = _Recorder(self.max_compiles)
        token = _ACTIVE.set((*_ACTIVE.get(), recorder))
        with self._lock:
            self._tokens.append((token, recorder))
        return RecompileReport(recorder.snapshot)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            token, recorder = self._tokens.pop()
        _ACTIVE.reset(token)
        recorder.close()
        if not self.quiet:
            print(RecompileReport(recorder.snapshot), file=sys.stderr)
