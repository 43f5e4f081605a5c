"""The one place that touches private or version-dependent JAX (and jaxtyping, Equinox) APIs.

Supported: jax 0.4.38 up to the newest release. `tests/test_compat.py` fails
loudly if JAX moves anything used here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.core
import numpy as np
from jax._src import core as _core
from jax._src.lax import lax as _lax_internal

Tracer = jax.core.Tracer

get_aval: Callable[[Any], Any] = (
    jax.typeof if hasattr(jax, "typeof") else jax.core.get_aval  # pyright: ignore[reportAttributeAccessIssue]  # jax < 0.6
)


_CAST_OPTIONS: dict[str, Any] = (
    {"warn_on_complex_to_real_cast": False}
    if "warn_on_complex_to_real_cast"
    in inspect.signature(_lax_internal._convert_element_type).parameters
    else {}
)


def convert_element_type(x: Any, dtype: np.dtype, weak_type: bool) -> Any:
    """Casts `x` to `dtype` with the given weak_type: one `convert_element_type`.

    `jnp.astype` and `lax.convert_element_type` always return strong types;
    only this private function can restore a weak one. A cast back from
    complex to real is the user's request (cast mode), so it does not warn.
    """
    return _lax_internal._convert_element_type(x, dtype, weak_type=weak_type, **_CAST_OPTIONS)


def explicit_sharding(aval: Any) -> Any:
    """The aval's `PartitionSpec` where its mesh has an Explicit axis, else None."""
    sharding = getattr(aval, "sharding", None)
    if sharding is None:
        return None
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "_any_axis_explicit", False):
        return None
    spec = tuple(sharding.spec)
    padding = (None,) * (len(aval.shape) - len(spec))
    return jax.sharding.PartitionSpec(*spec, *padding)


def x64_enabled() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


@contextlib.contextmanager
def enable_x64(enabled: bool = True) -> Iterator[None]:
    """Turns x64 on or off within the block only, restoring the caller's setting."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(enabled):
            yield
    else:  # jax < 0.7
        experimental: Any = importlib.import_module("jax.experimental")
        with experimental.enable_x64() if enabled else experimental.disable_x64():
            yield


def _flatten_up_to_checks_node_data() -> bool:
    def first(x: Any) -> Any:
        return x

    def second(x: Any) -> Any:
        return x

    try:
        jax.tree_util.tree_structure(jax.tree_util.Partial(first)).flatten_up_to(
            jax.tree_util.Partial(second)
        )
    except ValueError:
        return True
    return False


_FLATTEN_UP_TO_IS_EXACT = _flatten_up_to_checks_node_data()


def flatten_like(treedef: Any, tree: Any) -> list[Any] | None:
    """`tree`'s values at `treedef`'s leaf positions, or None where `tree`'s nodes differ
    from `treedef`'s (types, keys, node data); a value may be a subtree.

    None also where this JAX's `flatten_up_to` does not compare node data.
    """
    if not _FLATTEN_UP_TO_IS_EXACT:
        return None
    try:
        return treedef.flatten_up_to(tree)
    except Exception:  # node data whose `==` fails: the full flatten says how, as JAX does
        return None


def source_frames(source_info: Any) -> list[tuple[str, int, str]]:
    """`(file, line, function)` of every Python frame JAX recorded for a jaxpr equation.

    Innermost first. Not `source_info_util.user_frames`: its stdlib filter also
    drops every package installed under the stdlib directory (e.g. Optax).
    """
    traceback = getattr(source_info, "traceback", None)
    if traceback is None:
        return []
    return [(f.file_name, f.line_num, f.function_name) for f in traceback.frames]


# --- jaxprs: equation parameters of loops, branches and calls (provenance) ---------------------

# Parameters that hold the jaxpr of a call-like equation (`jit`, `custom_jvp_call`,
# `custom_vjp_call`, `checkpoint`, ...): inputs and outputs map one to one.
CALL_JAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def is_literal(atom: Any) -> bool:
    """Whether a jaxpr equation's operand is a literal constant (not a variable)."""
    return isinstance(atom, _core.Literal)


def open_jaxpr(jaxpr: Any) -> Any:
    """The open `Jaxpr` of a `Jaxpr` or `ClosedJaxpr` equation parameter, else None."""
    if isinstance(jaxpr, _core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    return jaxpr if isinstance(jaxpr, _core.Jaxpr) else None


def cond_branches(eqn: Any) -> list[Any]:
    """The open jaxprs of a `cond` equation's branches; its operands are `eqn.invars[1:]`."""
    return [open_jaxpr(branch) for branch in eqn.params["branches"]]


@dataclasses.dataclass(frozen=True)
class LoopLayout:
    """How a `while` or `scan` equation's operands feed its body.

    The body's inputs are `eqn.invars[skip:]`: `consts` constants, then the
    `carries` carries (then, for `scan`, the scanned slices). Its first
    `carries` outputs are the new carries.
    """

    body: Any  # open Jaxpr
    skip: int  # leading operands that are not the body's (a while's cond constants)
    consts: int
    carries: int


def loop_layout(eqn: Any) -> LoopLayout:
    """The `LoopLayout` of a `while` or `scan` equation."""
    params = eqn.params
    if eqn.primitive.name == "while":
        body = open_jaxpr(params["body_jaxpr"])
        return LoopLayout(body, params["cond_nconsts"], params["body_nconsts"], len(eqn.outvars))
    return LoopLayout(open_jaxpr(params["jaxpr"]), 0, params["num_consts"], params["num_carry"])


# --- jaxtyping ----------------------------------------------------------------------------------

try:  # the dimension sizes bound so far in jaxtyping's current memo (for messages only)
    from jaxtyping._storage import get_shape_memo
except ImportError:  # jaxtyping absent, or it moved its storage: tests/test_compat.py says which
    get_shape_memo = None


def hide_from_tracebacks(path: str) -> None:
    """Asks JAX to leave the frames of files under `path` out of the tracebacks it filters.

    Best effort: where JAX moved its private registry, tracebacks keep the frames.
    """
    try:
        from jax._src import traceback_util
    except ImportError:  # pragma: no cover - JAX moved it
        return
    register = getattr(traceback_util, "register_exclusion", None)
    if register is not None:
        register(path)


# --- jit's tracing: where every `jax.jit` trace goes through (the recompile explainer) -------

# JAX's function that `jit` calls on a miss of its tracing cache (never on the C++ fast
# path): `_trace_for_jit(fun, jit_info, mesh, debug_info, avals, args, kwargs)` in newer JAX,
# `_infer_params_impl(fun, jit_info, mesh, resource_env, args, kwargs, in_avals)` in 0.4.x.
_JIT_TRACE_FUNCTIONS = ("_trace_for_jit", "_infer_params_impl")


@dataclasses.dataclass(frozen=True)
class JitTrace:
    """One trace by `jit`: the function it wraps and the call's arguments, as jit got them."""

    fun: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    static_argnums: tuple[int, ...]
    static_argnames: tuple[str, ...]
    signature: inspect.Signature | None

    @property
    def primitive(self) -> bool:
        """Whether this is JAX's own jit of one primitive (an eager operation's dispatch)."""
        if getattr(self.fun, "_apply_primitive", False):
            return True
        code = getattr(self.fun, "__code__", None)  # jax < 0.5 marks it by name only
        return (
            code is not None
            and code.co_name == "prim_fun"
            and getattr(self.fun, "__module__", None) == "jax._src.dispatch"
        )


def _jit_trace_point() -> tuple[Any, str, Any]:
    from jax._src import pjit

    for name in _JIT_TRACE_FUNCTIONS:
        function = getattr(pjit, name, None)
        if function is None:
            continue
        if getattr(function, "_jax_dtypeguard_original", None) is not None:
            function = function._jax_dtypeguard_original
        parameters = inspect.signature(function).parameters
        if {"fun", "args", "kwargs"} <= set(parameters) and len(parameters) >= 5:
            return pjit, name, function
    raise RuntimeError(
        f"jax_dtypeguard cannot find where JAX {jax.__version__} traces jitted functions "
        f"(looked for jax._src.pjit.{' or '.join(_JIT_TRACE_FUNCTIONS)}); "
        "explain_recompiles needs a supported JAX (0.4.38 to 0.10.x)"
    )


def traced_jaxpr(result: Any) -> Any:
    """The `ClosedJaxpr` in what JAX's jit trace function returned."""
    params: Any = result[0] if type(result) is tuple else result  # jax < 0.5: (params, args)
    return params.params["jaxpr"]


def observe_jit_traces(observer: Callable[[JitTrace, Callable[[], Any]], Any]) -> None:
    """Routes every trace by `jit` through `observer(trace, run)`, which must return `run()`.

    Installed once, for the process; `run` traces (JAX's own function). Only
    misses of jit's tracing cache get here: a call that hits jit's C++ cache
    never does, nor one that reuses an earlier trace.
    """
    module, name, original = _jit_trace_point()
    parameters = list(inspect.signature(original).parameters)
    positions = {p: parameters.index(p) for p in ("fun", "args", "kwargs")}
    info_position = 1

    def argument(name: str, arguments: tuple[Any, ...], keywords: dict[str, Any]) -> Any:
        position = positions[name]
        return arguments[position] if position < len(arguments) else keywords[name]

    @functools.wraps(original)
    def traced(*arguments: Any, **keywords: Any) -> Any:
        try:
            info = arguments[info_position]
            fun = argument("fun", arguments, keywords)
            args = tuple(argument("args", arguments, keywords))
            kwargs = dict(argument("kwargs", arguments, keywords))
        except (IndexError, KeyError, TypeError):  # a call this JAX makes otherwise: unobserved
            return original(*arguments, **keywords)
        signature = getattr(info, "fun_signature", None)
        trace = JitTrace(
            fun,
            args,
            kwargs,
            tuple(getattr(info, "static_argnums", ())),
            tuple(getattr(info, "static_argnames", ())),
            signature if isinstance(signature, inspect.Signature) else None,
        )
        return observer(trace, lambda: original(*arguments, **keywords))

    traced._jax_dtypeguard_original = original  # pyright: ignore[reportAttributeAccessIssue]
    setattr(module, name, traced)


# JAX's function that runs a jitted call on a miss of jit's C++ cache (its trace just
# before it, or within it in jax < 0.5): `(p, args_flat, fun, ...)` or `(fun, jit_info, ...)`;
# it returns `(outs, out_flat, ...)`, `out_flat` one value per output of the jaxpr.
_JIT_RUN_FUNCTIONS = ("_run_python_pjit", "_python_pjit_helper")


def observe_jit_runs(observer: Callable[[Any, Callable[[], Any]], Any]) -> None:
    """Routes every call that misses jit's C++ cache (a compiling call among them) through
    `observer(fun, run)`, which must return `run()`: `(outs, out_flat, ...)`. Installed
    once, for the process."""
    from jax._src import pjit

    for name in _JIT_RUN_FUNCTIONS:
        original = getattr(pjit, name, None)
        if original is not None:
            break
    else:
        raise RuntimeError(
            f"jax_dtypeguard cannot find where JAX {jax.__version__} runs jitted calls "
            f"(looked for jax._src.pjit.{' or '.join(_JIT_RUN_FUNCTIONS)})"
        )
    position = list(inspect.signature(original).parameters).index("fun")

    @functools.wraps(original)
    def run(*arguments: Any, **keywords: Any) -> Any:
        fun = arguments[position] if position < len(arguments) else keywords.get("fun")
        return observer(fun, lambda: original(*arguments, **keywords))

    setattr(pjit, name, run)


def trace_state_clean() -> bool:
    """Whether no JAX transformation is tracing on this thread (eager, top-level code)."""
    return _core.trace_state_clean()


def jit_tracing_observed() -> bool:
    """Whether `observe_jit_traces` is installed."""
    module, name, _ = _jit_trace_point()
    return getattr(getattr(module, name), "_jax_dtypeguard_original", None) is not None


# Monitoring events JAX records (`jax.monitoring`, seconds) for the stages of one compile:
# the trace to a jaxpr, the lowering to MLIR, and the XLA compile or persistent-cache load.
def compile_events() -> dict[str, str]:
    """Event name -> stage (`"trace"`, `"lower"`, `"compile"`) for this JAX; empty if none."""
    try:
        from jax._src import dispatch
    except ImportError:  # pragma: no cover - JAX moved it
        return {}
    names = {
        "JAXPR_TRACE_EVENT": "trace",
        "JAXPR_TO_MLIR_MODULE_EVENT": "lower",
        "BACKEND_COMPILE_EVENT": "compile",
    }
    events = {getattr(dispatch, k): v for k, v in names.items() if hasattr(dispatch, k)}
    if events:
        events["/jax/compilation_cache/cache_retrieval_time_sec"] = "compile"
    return events


def listen_to_durations(listener: Callable[..., None]) -> None:
    """Registers `listener(event, seconds, **metadata)` for JAX's duration events, for good."""
    jax.monitoring.register_event_duration_secs_listener(listener)


# --- Equinox's internal while loop ------------------------------------------------------------
# `equinox.internal.while_loop` (used by Optimistix, Diffrax and Lineax) does not call
# `jax.lax.while_loop` with the user's body: each of its loop modules first passes
# `(cond_fun, body_fun, init_val, ...)` through `common_rewrite`, which returns
# `(cond_fun, body_fun, init_val, buffers)` for JAX. `guard_loops` wraps that function
# in each module; `tests/test_compat.py` fails loudly if Equinox moves or reshapes it.

_EQUINOX_LOOP = "equinox.internal._loop"
_EQUINOX_LOOP_MODULES = ("loop", "bounded", "checkpointed")


def equinox_loop_imported() -> bool:
    """Whether the program has imported Equinox's internal while loop (never imports it)."""
    return f"{_EQUINOX_LOOP}.common" in sys.modules


def equinox_common_rewrite() -> Callable[..., Any] | None:
    """Equinox's own `common_rewrite`, or None when its loop is not imported."""
    return getattr(sys.modules.get(f"{_EQUINOX_LOOP}.common"), "common_rewrite", None)


def equinox_loop_rewrites() -> dict[str, Callable[..., Any]]:
    """The `common_rewrite` each imported Equinox loop module calls now, by module name."""
    rewrites = {}
    for name in _EQUINOX_LOOP_MODULES:
        current = getattr(sys.modules.get(f"{_EQUINOX_LOOP}.{name}"), "common_rewrite", None)
        if current is not None:
            rewrites[name] = current
    return rewrites


def set_equinox_loop_rewrite(name: str, rewrite: Callable[..., Any]) -> None:
    """Makes Equinox's loop module `name` (a key of `equinox_loop_rewrites()`) call `rewrite`."""
    sys.modules[f"{_EQUINOX_LOOP}.{name}"].common_rewrite = rewrite  # type: ignore[attr-defined]
