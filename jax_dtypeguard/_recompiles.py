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
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax

from . import _compat
from ._call_site import code_directories, user_frame
from ._compare import compare_states
from ._errors import Mismatch, short_path
from ._jit_wrappers import CallView, EquinoxStatic, describe_function, same_function, view_of
from ._recompile_report import (
    CompiledFunction,
    Recompile,
    RecompileError,
    RecompileReport,
    Snapshot,
    describe_recompile,
)
from ._signature import LeafSignature, NotALeafError, describe_static, static_equal

_tree = jax.tree_util
_F = TypeVar("_F", bound=Callable[..., Any])

_ACTIVE: contextvars.ContextVar[tuple[_Recorder, ...]] = contextvars.ContextVar(
    "jax_dtypeguard_explain_recompiles", default=()
)
_INSTALL_LOCK = threading.Lock()
_INSTALLED = False
_EVENTS: dict[str, str] = {}


class _Local(threading.local):
    def __init__(self) -> None:
        self.stack: list[_Trace] = []  # jit traces in flight on this thread, innermost last
        self.pending: _Trace | None = None  # the last compile's trace, awaiting its lowering


_LOCAL = _Local()


class _Trace:
    """One trace by jit; its stages' seconds arrive as JAX's monitoring events."""

    __slots__ = ("eager", "nested", "parent", "seconds", "stages")

    def __init__(self, parent: _Trace | None, eager: bool = False) -> None:
        self.parent = parent
        self.eager = eager  # JAX's jit of one primitive: an eager operation
        self.seconds = 0.0
        self.stages: set[str] = set()
        self.nested: list[str] = []  # jitted functions traced inside this one (names)

    def top(self) -> _Trace:
        trace = self
        while trace.parent is not None:
            trace = trace.parent
        return trace


@dataclasses.dataclass
class _Compile:
    arguments: dict[str, Any]  # parameter name -> the argument's types (abstract pytree)
    identity: Any  # the jitted function object (a weak reference)
    jaxpr: Any
    trace: _Trace


@dataclasses.dataclass
class _History:
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


def _abstract_leaf(leaf: Any) -> Any:
    """A leaf as jit sees its type; Python scalars and static leaves as they are."""
    if isinstance(leaf, (bool, int, float, complex, EquinoxStatic)):
        return leaf
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
            arguments[name] = StaticArgument(value)
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
    return [
        dataclasses.replace(m, kind="static")
        if m.kind == "structure"
        and isinstance(left.get(m.path), EquinoxStatic)
        and isinstance(right.get(m.path), EquinoxStatic)
        else m
        for m in mismatches
    ]


def _differing_leaves(mismatches: list[Mismatch]) -> int:
    return len({m.path for m in mismatches})


@functools.cache
def _jax_directories() -> tuple[str, ...]:
    return code_directories()[0]


def _is_internal(view: CallView) -> bool:
    code = view.key
    file = getattr(code, "co_filename", None)
    if file is None:
        return False
    import os

    return os.path.abspath(file).startswith(_jax_directories())


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

    def record(self, view: CallView, trace: _Trace, jaxpr: Any, call_site: str | None) -> Any:
        """Records one compile; returns the `RecompileError` to raise, if over budget."""
        with self.lock:
            history = self.histories.get(view.key)
            if history is None:
                history = _History(view.name, view.location, _is_internal(view))
                self.histories[view.key] = history
            if jaxpr is not None and any(c.jaxpr is jaxpr for c in history.compiles):
                return None  # JAX reused an earlier trace: jit made anew of the same function
            compile = _Compile(_abstract_arguments(view), view.identity, jaxpr, trace)
            if history.compiles:
                recompile = self._explain(history, compile, call_site)
                history.recompiles.append(recompile)
                self.nested.update(dict.fromkeys(trace.nested))
            history.compiles.append(compile)
            if self.max_compiles is None or len(history.compiles) <= self.max_compiles:
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
        best: list[Mismatch] | None = None
        closest: _Compile | None = None
        for earlier in reversed(history.compiles):  # the latest wins a tie
            mismatches = compare_arguments(earlier.arguments, compile.arguments)
            if best is None or _differing_leaves(mismatches) < _differing_leaves(best):
                best, closest = mismatches, earlier
        assert best is not None and closest is not None
        note = None
        if not best:
            if not same_function(closest.identity, compile.identity):
                note = (
                    "jit was given a new function object (a closure or lambda made anew, "
                    "or jitted again): its cache starts empty; jit it once and reuse it"
                )
            else:
                note = (
                    "no argument changed type: the tracing context did (a config option, a "
                    "mesh, or a context manager such as jax.enable_x64)"
                )
        return Recompile(call_site, tuple(best), note)

    # -- the report ------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self.lock:
            functions = [
                CompiledFunction(
                    h.name,
                    h.location,
                    len(h.compiles),
                    None,
                    sum(c.trace.seconds for c in h.compiles) if self.timed else None,
                    tuple(h.recompiles),
                )
                for h in self.histories.values()
                if h.compiles
            ]
            internal = frozenset(
                (h.name, h.location) for h in self.histories.values() if h.internal
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
                internal,
                (self.eager_count, self.eager_seconds),
            )


def _budget_error(history: _History, budget: int) -> RecompileError:
    recompile = history.recompiles[-1]
    where = f" ({history.location})" if history.location else ""
    lines = [
        f"{history.name}{where} compiled {len(history.compiles)} times, more than "
        f"max_compiles={budget} allows:",
        *describe_recompile(recompile, len(history.compiles)),
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


def _observe(trace: _compat.JitTrace, run: Callable[[], Any]) -> Any:
    recorders = _ACTIVE.get()
    if not recorders:
        return run()
    local = _LOCAL
    stack = local.stack
    parent = stack[-1] if stack else None
    if parent is None:
        local.pending = None
    current = _Trace(parent, eager=trace.primitive)
    stack.append(current)
    try:
        result = run()
    finally:
        stack.pop()
    if current.eager:
        if parent is None:
            local.pending = current
            for recorder in recorders:
                recorder.eager_operation()
        return result
    if parent is not None:
        name = _nested_name(trace)
        if name is not None:
            current.top().nested.append(name)
        return result
    local.pending = current
    try:
        jaxpr = _compat.traced_jaxpr(result)
    except Exception:  # a JAX whose result we cannot read: no jaxpr, compiles still counted
        jaxpr = None
    view = view_of(trace)
    call_site = _call_site()
    error = None
    for recorder in recorders:
        error = recorder.record(view, current, jaxpr, call_site) or error
    if error is not None:
        local.pending = None
        raise error
    return result


def _on_duration(event: str, seconds: float, **metadata: Any) -> None:
    stage = _EVENTS.get(event)
    if stage is None:
        return
    recorders = _ACTIVE.get()
    if not recorders:
        return
    local = _LOCAL
    if stage == "trace":
        target = local.stack[-1] if local.stack else None
    else:
        target = local.pending
        if target is not None and stage in target.stages:
            target = None
    if target is None:
        name = str(metadata.get("fun_name", "?"))
        for recorder in recorders:
            recorder.untraced(name, seconds, compiled=stage == "compile")
        return
    target.seconds += seconds
    target.stages.add(stage)
    if stage == "compile":
        local.pending = None
    for recorder in recorders:
        recorder.timing_seen(seconds if target.eager else 0.0)


def _install() -> None:
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED:
            return
        _compat.observe_jit_traces(_observe)
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
    every argument leaf whose type differs from the closest earlier compile.
    A call that hits jit's cache costs what it costs outside the scope.

    **Arguments:**

    - `max_compiles`: raise `RecompileError` at the call that compiles any one
      function more often than this.
    - `quiet`: do not print the report to stderr at the end of the scope.

    **Returns:**

    The live `RecompileReport` (as the value of `with ... as report`).

    !!! Example

        ```python
        with dg.explain_recompiles(quiet=True) as report:
            step = jax.jit(lambda x: x * 2)
            step(1.0)
            step(jnp.float32(1.0))       # weak float32[] -> float32[]: compiles again
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
        recorder = _Recorder(self.max_compiles)
        token = _ACTIVE.set((*_ACTIVE.get(), recorder))
        with self._lock:
            self._tokens.append((token, recorder))
        return RecompileReport(recorder.snapshot)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            token, recorder = self._tokens.pop()
        _ACTIVE.reset(token)
        if not self.quiet:
            print(RecompileReport(recorder.snapshot), file=sys.stderr)


@contextlib.contextmanager
def _suspended() -> Iterator[None]:
    """No recording within the block (the explainer's own traces)."""
    token = _ACTIVE.set(())
    try:
        yield
    finally:
        _ACTIVE.reset(token)
