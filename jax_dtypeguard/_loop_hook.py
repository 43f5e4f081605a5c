"""`guard_loops`: guard the loops and branches of code you did not write.

Within a scope, `jax.lax.while_loop`, `fori_loop`, `scan`, `cond` and
`switch` (the attributes of the `jax.lax` module, which library code looks up
when it calls them) and Equinox's internal while loop guard their bodies and
branches. With the default `weak_type=False` only what JAX or Equinox rejects
is drift, and `jax.lax`'s loops and branches run untouched: only when JAX
rejects a carry or a branch are they traced again, guarded, to say where and
(cast mode) to repair it. So a program whose loops hold traces to the same
jaxpr inside the scope as outside it, at the cost of a lookup per loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.abc
import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import _config
from ._call_site import user_frame
from ._carry_rules import Rule, accepted_scalars, carry_verdict
from ._cast import cast_back
from ._comparisons import LoopRule
from ._compat import (
    equinox_common_rewrite,
    equinox_loop_imported,
    equinox_loop_rewrites,
    set_equinox_loop_rewrite,
)
from ._config import Fixed, Mode
from ._delivery import deliver
from ._equinox_loop import promote_weak_carry, weak_carry_note
from ._errors import Report, StateDtypeError, short_path
from ._guard import Guard, Reporting
from ._guarded import guarded_callable, is_guarded
from ._plan import CallPlan, StateParameter, describe_location, parameter_name
from ._provenance import explain
from ._signature import LeafSignature, NotALeafError

_tree = jax.tree_util


@dataclasses.dataclass(frozen=True)
class _Form:
    """A `jax.lax` loop: which argument is its body, where the carry is in and out of it."""

    body: str
    position: int
    out: int | None


_LOOPS = {
    "while_loop": _Form("body_fun", 0, None),
    "fori_loop": _Form("body_fun", 1, None),
    "scan": _Form("f", 0, 0),
}
_BRANCHES = ("cond", "switch")


# --------------------------------------------------------------------------------------------
# Reports


def _call_site() -> str | None:
    """The user's innermost frame on the stack, as `file:line in function`."""
    frame = user_frame(sys._getframe(1))[0]
    if frame is None:
        return None
    return f"{short_path(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}"


def _context(form: str, scalars: list[str]) -> list[str]:
    """The lines a report adds before its hint: the loop or branch, where it was reached
    from, and the Python scalars the loop accepted for arrays."""
    site_text = _call_site()
    where = f"In jax.lax.{form}" if form in _LOOPS or form in _BRANCHES else f"In {form}"
    lines = [where + (f", reached from {site_text}." if site_text else ".")]
    if scalars:
        lines.append(
            f"Python scalars where the carry holds arrays ({', '.join(scalars)}): the loop "
            "accepts them, but return arrays of the carry's types (`jnp.asarray(value, "
            'dtype)`), or use mode="cast", which converts them.'
        )
    return lines


# --------------------------------------------------------------------------------------------
# Bodies


def _carry_guard(
    fn: Callable[..., Any],
    position: int,
    out: int | None,
    settings: _config.LoopSettings,
    form: str,
    rule: Rule = "lax",
) -> Callable[..., Any]:
    """`fn`, a loop body, comparing its carry out with its carry in under `rule`."""
    parameter = StateParameter.at(fn, position, "carry")

    def notes(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> list[str]:
        state_out = result if out is None else result[out]
        accepted = accepted_scalars(args[position], state_out, rule)
        lines = _context(form, [parameter.name + path for path in accepted])
        if rule == "equinox":
            lines += weak_carry_note(args[position], state_out, parameter.name)
        return lines

    guard = Guard(
        fn,
        CallPlan.single(parameter, out),
        comparison=LoopRule(rule),
        settings=Fixed(
            settings.mode,
            settings.weak_type,
            made_strict=settings.mode == "check" and _config.config.strict,
        ),
        reporting=Reporting(notes=notes),
        annotations=False,
    )
    return guarded_callable(guard)


def _already_guarded(fn: Any) -> bool:
    """A guarded function (`dg.lax` body, decorated function, this hook's guard), or a body
    Equinox rewrote around one of this hook's guards."""
    return is_guarded(fn) or hasattr(fn, _EQUINOX_MARK)


def _as_is(
    original: Callable[..., Any], settings: Any, args: Any, kwargs: Any
) -> tuple[bool, Any, TypeError | None]:
    """Runs JAX's own form unguarded (the default: nothing JAX accepts is drift).

    `(True, result, None)` when JAX accepted it; `(False, None, JAX's error)` when
    JAX rejected a type, or `(False, None, None)` when every trace is to be guarded
    (`weak_type=True`).
    """
    if settings.weak_type:
        return False, None, None
    try:
        return True, original(*args, **kwargs), None
    except StateDtypeError:
        raise
    except TypeError as error:
        return False, None, error


def _loop(name: str, original: Callable[..., Any], settings: Any, args: Any, kwargs: Any) -> Any:
    form = _LOOPS[name]
    try:
        bound = inspect.signature(original).bind(*args, **kwargs)
    except TypeError:
        return original(*args, **kwargs)  # JAX's own error for a bad call
    body = bound.arguments[form.body]
    if _already_guarded(body) or not callable(body):
        return original(*args, **kwargs)
    ran, result, jax_error = _as_is(original, settings, args, kwargs)
    if ran:
        return result
    bound.arguments[form.body] = _carry_guard(body, form.position, form.out, settings, name)
    try:
        return original(*bound.args, **bound.kwargs)
    except StateDtypeError:
        raise
    except Exception:
        if jax_error is None:
            raise
    raise jax_error  # what JAX rejected is nothing the guard can name: JAX's own error


# --------------------------------------------------------------------------------------------
# Branches


class _Recorded:
    """A branch that keeps its arguments and output (the last trace's)."""

    def __init__(self, fn: Callable[..., Any], casts: tuple[Any, ...] = ()) -> None:
        self.fn, self.args, self.output, self.traced = fn, (), None, False
        self.casts = casts

    def __call__(self, *args: Any) -> Any:
        output = self.fn(*args)
        self.args, self.output, self.traced = args, output, True
        return cast_back(output, self.casts) if self.casts else output


def _branch_parts(name: str, original: Callable[..., Any], args: Any, kwargs: Any):
    arguments = inspect.signature(original).bind(*args, **kwargs).arguments
    operands = tuple(arguments.get("operands", ()))
    if "operand" in arguments:
        operands = operands or (arguments["operand"],)
    if name == "cond":
        return arguments["pred"], [arguments["true_fun"], arguments["false_fun"]], operands
    return arguments["index"], list(arguments["branches"]), operands


def _call_branches(name: str, original: Any, selector: Any, fns: list[Any], operands: Any) -> Any:
    if name == "cond":
        return original(selector, *fns, *operands)
    return original(selector, fns, *operands)


def _branch_names(name: str, count: int) -> list[str]:
    return ["true_fun", "false_fun"] if name == "cond" else [f"branches[{i}]" for i in range(count)]


def _narrowest(outputs: list[Any]) -> Any:
    """Per leaf, the dtype every branch's dtype promotes from (a promotion widens), else None."""
    trees = [_tree.tree_structure(output) for output in outputs]
    if any(tree != trees[0] for tree in trees):
        return None
    columns = zip(*(_tree.tree_leaves(output) for output in outputs))
    target = []
    for column in columns:
        signatures = [LeafSignature.of(leaf) for leaf in column]
        if any(s.shape != signatures[0].shape for s in signatures):
            return None
        bottom = [
            s
            for s in signatures
            if all(jnp.promote_types(s.dtype, o.dtype) == o.dtype for o in signatures)
        ]
        if not bottom:
            return None
        target.append(jax.ShapeDtypeStruct(bottom[0].shape, bottom[0].dtype))
    return _tree.tree_unflatten(trees[0], target)


def _compare_branches(records: list[_Recorded], operands: Any, settings: Any):
    """(index of the branch that keeps the operands' types, the types to compare with,
    [(branch index, verdict)] of the branches that differ from them, root name)."""
    state = operands[0] if len(operands) == 1 else tuple(operands)
    root = parameter_name(records[0].fn, 0, "operand") if len(operands) == 1 else "operands"
    keeps = [
        i
        for i, record in enumerate(records)
        if not carry_verdict(state, record.output, root, "branches", False).mismatches
    ]
    reference = keeps[0] if keeps else None
    if reference is not None:
        target = records[reference].output
    else:
        root = "output"
        try:
            target = _narrowest([record.output for record in records])
        except NotALeafError:
            target = None
    disagreeing = []
    for i, record in enumerate(records):
        base = records[0].output if target is None else target
        verdict = carry_verdict(base, record.output, root, "branches", settings.weak_type)
        if verdict.mismatches:
            disagreeing.append((i, verdict))
    return reference, target, disagreeing, root


def _branches(name: str, original: Any, settings: Any, args: Any, kwargs: Any) -> Any:
    try:
        selector, fns, operands = _branch_parts(name, original, args, kwargs)
    except (TypeError, KeyError):
        return original(*args, **kwargs)
    if not operands or any(_already_guarded(fn) or not callable(fn) for fn in fns):
        return original(*args, **kwargs)
    ran, result, jax_error = _as_is(original, settings, args, kwargs)
    if ran:
        return result
    records = [_Recorded(fn) for fn in fns]
    try:
        result = _call_branches(name, original, selector, records, operands)
    except StateDtypeError:
        raise
    except Exception as error:
        jax_error, result = jax_error or error, None
    if not all(record.traced for record in records):
        if jax_error is None:
            return result
        raise jax_error
    reference, target, disagreeing, root = _compare_branches(records, operands, settings)
    if not disagreeing:
        if jax_error is not None:
            raise jax_error
        return result
    mode = settings.mode
    names = _branch_names(name, len(fns))
    castable = all(v.castable and not v.uncastable for _, v in disagreeing)
    if mode == "cast" and castable and target is not None:
        # New functions: JAX caches traced branches by the function's identity.
        casts = {i: verdict.castable for i, verdict in disagreeing}
        fixed = [_Recorded(fn, casts.get(i, ())) for i, fn in enumerate(fns)]
        return _call_branches(name, original, selector, fixed, operands)
    _report_branches(name, records, names, reference, target, disagreeing, root, operands, mode)
    if jax_error is not None:
        raise jax_error
    return result


def _report_branches(
    name, records, names, reference, target, disagreeing, root, operands, mode
) -> None:
    if reference is not None:
        base_name, base_location = describe_location(records[reference].fn)
        other = f"{names[reference]} {base_name} ({base_location}), which keeps the operands' types"
    elif target is not None:
        other = "the narrowest types the branches return (the others are promotions)"
    else:
        base_name, base_location = describe_location(records[0].fn)
        other = f"{names[0]} {base_name} ({base_location})"
    reports = []
    state = (
        StateParameter(root, position=0)
        if len(operands) == 1
        else StateParameter(root, operands=len(operands))
    )
    for i, verdict in disagreeing:
        fn = records[i].fn
        mismatches = list(verdict.mismatches)
        if reference is not None:
            mismatches = explain(fn, state, None, records[i].args, {}, mismatches)
        fn_name, location = describe_location(fn)
        report = Report(
            fn_name,
            location,
            tuple(mismatches),
            mode,
            strict=mode == "check" and _config.config.strict,
            states=(root,),
            role=names[i],
            what=f"returns other types than {other}",
            notes=tuple(_context(name, [])),
        )
        reports.append(report)
    trailer = None
    if mode == "cast" and target is None:
        trailer = (
            "No branch keeps the operands' types and no dtype is the narrowest of the "
            "branches', so cast mode cannot choose the types to cast to: make the branches "
            "return one type."
        )
    deliver(*reports, trailer=trailer)


# --------------------------------------------------------------------------------------------
# Equinox's internal while loop


def _equinox_rewrite(original: Callable[..., Any]) -> Callable[..., Any]:
    """Equinox's `common_rewrite`, whose `body_fun` is guarded under Equinox's rule (its
    carry is Equinox's own); in cast mode a weak initial carry is promoted first, as
    `jax.lax.while_loop` would promote it."""

    @functools.wraps(original)
    def common_rewrite(cond_fun, body_fun, init_val, *args, **kwargs):
        settings = _config.loop_settings()
        if settings is not None and callable(body_fun) and not _already_guarded(body_fun):
            if settings.mode == "cast":
                init_val = promote_weak_carry(
                    original, cond_fun, body_fun, init_val, *args, **kwargs
                )
            body_fun = _carry_guard(
                body_fun, 0, None, settings, "equinox.internal.while_loop", "equinox"
            )
        rewritten = original(cond_fun, body_fun, init_val, *args, **kwargs)
        with contextlib.suppress(AttributeError, TypeError):
            setattr(rewritten[1], _EQUINOX_MARK, True)
        return rewritten

    common_rewrite.__dtypeguard_hook__ = original  # type: ignore[attr-defined]
    return common_rewrite


# Set on Equinox's rewritten bodies: the user's body inside is guarded already, so the
# `jax.lax` loop Equinox hands them to is not guarded again.
_EQUINOX_MARK = "__dtypeguard_equinox__"


def _patch_equinox(install: bool) -> None:
    original = equinox_common_rewrite()
    if original is None:
        return
    for module, current in equinox_loop_rewrites().items():
        hooked = getattr(current, "__dtypeguard_hook__", None)
        if install and hooked is None and current is original:
            set_equinox_loop_rewrite(module, _equinox_rewrite(current))
        elif not install and hooked is not None:
            set_equinox_loop_rewrite(module, hooked)


class _EquinoxImport(importlib.abc.MetaPathFinder):
    """Patches Equinox's loop as soon as it is imported within a scope, so that the
    first Equinox loop after `import optimistix` inside `guard_loops` is reached too."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _EQUINOX_LAST:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = getattr(spec.loader, "exec_module", None)
        if execute is None:
            return spec

        def exec_module(module: Any) -> None:
            execute(module)
            with _lock:
                if _users[0] > 0:
                    _patch_equinox(True)
                    _equinox_patched[0] = True

        spec.loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


# Equinox's loop module, imported after `common`, `bounded` and `checkpointed` (it imports them).
_EQUINOX_LAST = "equinox.internal._loop.loop"
_equinox_import = _EquinoxImport()


# --------------------------------------------------------------------------------------------
# The hook on `jax.lax`


def _hook(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    handle = _loop if name in _LOOPS else _branches

    @functools.wraps(original)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        settings = _config.loop_settings()
        if settings is None:
            return original(*args, **kwargs)
        if not _equinox_patched[0] and equinox_loop_imported():
            _patch_equinox(True)
            _equinox_patched[0] = True
        return handle(name, original, settings, args, kwargs)

    hooked.__dtypeguard_hook__ = original  # type: ignore[attr-defined]
    return hooked


_equinox_patched = [False]
_lock = threading.Lock()
_users = [0]


def install() -> None:
    """Puts the hook on `jax.lax`'s loops and branches (and Equinox's loop, if imported)."""
    with _lock:
        _users[0] += 1
        if _users[0] > 1:
            return
        for name in (*_LOOPS, *_BRANCHES):
            current = getattr(jax.lax, name)
            if getattr(current, "__dtypeguard_hook__", None) is None:
                setattr(jax.lax, name, _hook(name, current))
        if equinox_loop_imported():
            _patch_equinox(True)
            _equinox_patched[0] = True
        elif _equinox_import not in sys.meta_path:
            sys.meta_path.insert(0, _equinox_import)


def uninstall() -> None:
    """Takes the hook off again when the last scope that needed it ends."""
    with _lock:
        _users[0] -= 1
        if _users[0] > 0:
            return
        for name in (*_LOOPS, *_BRANCHES):
            current = getattr(jax.lax, name)
            original = getattr(current, "__dtypeguard_hook__", None)
            if original is not None:
                setattr(jax.lax, name, original)
        _patch_equinox(False)
        _equinox_patched[0] = False
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(_equinox_import)


_held_for_config = [False]


def follow_config() -> None:
    """Keeps the hook on while `config.loops` guards the whole program, and no longer."""
    with _lock:
        on = _config.config.loops_default is not None
        if on == _held_for_config[0]:
            return
        _held_for_config[0] = on
    install() if on else uninstall()


class guard_loops(contextlib.ContextDecorator):
    """Guards every loop and branch called through `jax.lax` within the block.

    Within the scope (a `with` block, or a function decorated with it) every
    `jax.lax.while_loop`, `fori_loop`, `scan`, `cond` and `switch` that any
    code calls, library code included, and Equinox's internal while loop
    (which Optimistix and Diffrax use) is guarded as `jax_dtypeguard.lax`
    guards it: a body or branch that changes the carry's (or the other
    branches') types is reported as a `StateDtypeError` naming the function
    (even inside a library), each leaf path, where the drift was introduced
    and your call site that led there.

    By default only what JAX or Equinox would reject is drift (dtype, shape,
    structure, sharding): a Python scalar the loop accepts, or a weak carry
    made strong, is left alone, and a program whose loops hold traces to the
    same jaxpr as without the scope. The scope is a context variable: other
    threads and asyncio tasks are unaffected; scopes nest. Each loop is
    guarded once: `jax_dtypeguard.lax` forms and decorated bodies are left to
    their own guards.

    Only calls that look `while_loop` (etc.) up on the `jax.lax` module are
    reached: code that ran `from jax.lax import while_loop` holds JAX's own
    function and is not guarded. Equinox's loop is reached once Equinox is
    imported.

    **Arguments:**

    - `mode`: `"check"` (raise `StateDtypeError`), `"cast"` (cast dtype
      drift back to the carry's types, or a disagreeing branch to the types
      of the branch that keeps the operands' types; promote a weak initial
      carry of Equinox's loop to the body's dtype, as `jax.lax.while_loop`
      does and Equinox does not; raise the rest), `"warn"`
      (emit a `StateDtypeWarning`, then let JAX or Equinox do what it does),
      or `"off"` (no guard within the block). Strict mode turns cast and
      warn into check.
    - `weak_type`: also report a weak carry that its body makes strong (JAX
      accepts it silently) and a Python scalar returned for an array carry
      of another type (a weak float for a strong `float32[]`).

    **Returns:**

    A context manager, also usable as a decorator.

    !!! Example
        ```python
        import jax
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        def widen(i, x):
            return x + jnp.float32(1)  # float16 + float32 -> float32

        with dg.guard_loops(mode="cast"):
            x = jax.lax.fori_loop(0, 3, widen, jnp.float16(0))
        assert x.dtype == jnp.float16
        ```
    """

    def __init__(self, *, mode: Mode = "check", weak_type: bool = False) -> None:
        _config.validate_mode(mode)
        if not isinstance(weak_type, bool):
            raise TypeError(f"weak_type must be True or False; got {weak_type!r}.")
        self.settings = _config.LoopSettings(mode, weak_type)
        self._tokens: list[Any] = []

    def _recreate_cm(self) -> guard_loops:  # a fresh scope per decorated call (threads)
        return guard_loops(mode=self.settings.mode, weak_type=self.settings.weak_type)  # type: ignore[arg-type]

    def __enter__(self) -> None:
        install()
        self._tokens.append(_config.loops_override.set(self.settings))

    def __exit__(self, *exc: object) -> None:
        _config.loops_override.reset(self._tokens.pop())
        uninstall()

    def __repr__(self) -> str:
        return f"guard_loops(mode={self.settings.mode!r}, weak_type={self.settings.weak_type!r})"
