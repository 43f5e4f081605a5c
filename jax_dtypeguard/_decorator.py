"""`state_dtype_invariant`: compare a step's output state with its input state."""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, overload

import jax

from . import _annotations, _config
from ._cast import cast_back
from ._compare import OK, Verdict, compare_states
from ._compat import Tracer
from ._errors import Mismatch, StateDtypeError, StateDtypeWarning, format_report, short_path
from ._signature import NotALeafError, leaf_keys

F = TypeVar("F", bound=Callable[..., Any])
_tree = jax.tree_util
_EMPTY = inspect.Parameter.empty
_CACHE_LIMIT = 4096


def describe_location(fn: Callable[..., Any]) -> tuple[str, str]:
    """`(qualified name, "file:line")` of a function, looking through wrappers."""
    target = inspect.unwrap(fn)
    while isinstance(target, functools.partial):
        target = inspect.unwrap(target.func)
    name = getattr(target, "__qualname__", None) or getattr(fn, "__qualname__", None)
    name = name or type(fn).__qualname__
    code = getattr(target, "__code__", None)
    if code is None:
        return name, "<unknown location>"
    return name, f"{short_path(code.co_filename)}:{code.co_firstlineno}"


def parameter_name(fn: Callable[..., Any], position: int, fallback: str) -> str:
    """The name of `fn`'s positional parameter `position`, else `fallback`."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fallback
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if position < len(parameters) and parameters[position].kind in positional:
        return parameters[position].name
    return fallback


class StateParameter:
    """Where the state is among a function's arguments."""

    def __init__(self, fn: Callable[..., Any], state: int | str | None) -> None:
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            parameters = None
        if parameters is None:
            if isinstance(state, str):
                raise TypeError(
                    f"state={state!r} names a parameter, but the signature of {fn!r} "
                    "cannot be inspected; pass the state's position instead (state=0)."
                )
            self.position: int | None = state or 0
            self.name = "state"
            self.keyword: str | None = None
            self.default: Any = _EMPTY
            return
        skip = 1 if parameters and parameters[0].name in ("self", "cls") else 0
        candidates = parameters[skip:]
        names = ", ".join(p.name for p in candidates) or "none"
        has_var_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
        if state is None or isinstance(state, int):
            index = 0 if state is None else state
            if not candidates or not -len(candidates) <= index < len(candidates):
                what = "has no parameter" if not candidates else f"has no parameter {index}"
                raise ValueError(
                    f"state={state!r}: {describe_location(fn)[0]} {what} to take the "
                    f"state (its parameters: {names}). Pass state=<name or position>."
                )
            parameter = candidates[index]
        else:
            matches = [p for p in candidates if p.name == state]
            if not matches:
                if not has_var_keyword:
                    raise ValueError(
                        f"state={state!r} names no parameter of "
                        f"{describe_location(fn)[0]} (its parameters: {names})."
                    )
                parameter = inspect.Parameter(state, inspect.Parameter.KEYWORD_ONLY)
            else:
                parameter = matches[0]
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(
                f"state={state!r} is the variadic parameter {parameter}; the state "
                "must be one named parameter."
            )
        positional = (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        self.position = parameters.index(parameter) if parameter.kind in positional else None
        self.keyword = None if parameter.kind is parameter.POSITIONAL_ONLY else parameter.name
        self.name = parameter.name
        self.default = parameter.default

    @classmethod
    def at(cls, fn: Callable[..., Any], position: int, fallback_name: str) -> StateParameter:
        """The positional argument `position` of every call, named after `fn`'s parameter."""
        parameter = cls.__new__(cls)
        parameter.position, parameter.keyword, parameter.default = position, None, _EMPTY
        parameter.name = parameter_name(fn, position, fallback_name)
        return parameter

    def find(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        if self.position is not None and len(args) > self.position:
            return True, args[self.position]
        if self.keyword is not None and self.keyword in kwargs:
            return True, kwargs[self.keyword]
        if self.default is not _EMPTY:
            return True, self.default
        return False, None


def _a_value_of(value: Any) -> str:
    if isinstance(value, (jax.Array, Tracer)):
        return "an array"
    return f"a {type(value).__name__}"


def _validate(
    mode: object, weak_type: object, annotations: object, out: object, state: object
) -> None:
    if mode is not None:
        _config.validate_mode(mode)
    for name, value in (("weak_type", weak_type), ("annotations", annotations)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {value!r}.")
    if out is not None and (isinstance(out, bool) or not isinstance(out, int)):
        raise TypeError(
            f"out must be None (the whole return value is the state) or an int "
            f"(the state's index in a returned tuple); got {out!r}."
        )
    if state is not None and (isinstance(state, bool) or not isinstance(state, (int, str))):
        raise TypeError(f"state must be a parameter's name (str) or position (int); got {state!r}.")


class _Guard:
    """The per-function machinery behind one decorated function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        state: int | str | StateParameter | None,
        out: int | None,
        mode: str | None,
        weak_type: bool,
        annotations: bool,
    ) -> None:
        self.fn = fn
        self.parameter = state if isinstance(state, StateParameter) else StateParameter(fn, state)
        self.out = out
        self.mode = mode
        self.weak_type = weak_type
        self.annotations = (
            _annotations.checker_for(fn, self.parameter.name) if annotations else None
        )
        self.cache: dict[Any, Verdict] = {}
        self.explained: dict[Any, list[Mismatch]] = {}

    # False: exactly the declared mode and weak_type, whatever the configuration (testing).
    follows_config = True
    # (name, "file:line") a report gives the function, where not its own (`invariant(adamw)`).
    title: tuple[str, str] | None = None

    def settings(self) -> tuple[str, bool]:
        """The (mode, weak_type) of this call: the configuration applied to the declared ones."""
        if not self.follows_config:
            return self.mode or "check", self.weak_type
        return _config.effective(self.mode, self.weak_type)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        mode, weak_type = self.settings()
        if mode == "off":
            return self.fn(*args, **kwargs)
        found, state_in = self.parameter.find(args, kwargs)
        if not found:
            self.fn(*args, **kwargs)  # raises Python's own error for the missing argument
            raise TypeError(
                f"{describe_location(self.fn)[0]} was called without its state "
                f"argument '{self.parameter.name}'; pass it positionally or by keyword."
            )
        leaves_in, tree_in = _tree.tree_flatten(state_in)
        result = self.fn(*args, **kwargs)
        state_out = self._select(result)
        verdict = self._verdict(leaves_in, tree_in, state_out, weak_type)
        mismatches = list(verdict.mismatches)
        if mode == "cast":
            if verdict.castable and not verdict.uncastable:
                result = self._replace(result, cast_back(state_out, verdict.castable))
            mismatches = list(verdict.uncastable)
        if self.annotations is not None:
            mismatches += self.annotations(args, kwargs, result)
        if mismatches:
            self._report(mismatches, mode, args, kwargs)
        return result

    def _select(self, result: Any) -> Any:
        if self.out is None:
            return result
        if not isinstance(result, (tuple, list)):
            name = describe_location(self.fn)[0]
            raise TypeError(
                f"{name} returned {_a_value_of(result)}, but out={self.out} "
                "expects a tuple or list holding the new state; use out=None if "
                "the function returns the state itself."
            )
        if not -len(result) <= self.out < len(result):
            name = describe_location(self.fn)[0]
            raise ValueError(
                f"out={self.out} is past the {len(result)} values {name} returned; "
                f"use an index below {len(result)}."
            )
        return result[self.out]

    def _replace(self, result: Any, state_out: Any) -> Any:
        if self.out is None:
            return state_out
        items = list(result)
        items[self.out] = state_out
        if isinstance(result, list):
            return items
        if hasattr(result, "_fields"):
            return type(result)(*items)
        return type(result)(items)

    def _verdict(
        self, leaves_in: list[Any], tree_in: Any, state_out: Any, weak_type: bool
    ) -> Verdict:
        leaves_out, tree_out = _tree.tree_flatten(state_out)
        try:
            keys = (leaf_keys(leaves_in), leaf_keys(leaves_out))
        except NotALeafError:
            keys = None
        if keys is not None and tree_in == tree_out and keys[0] == keys[1]:
            return OK
        cache_key = (tree_in, tree_out, keys, weak_type)
        try:
            return self.cache[cache_key]
        except (KeyError, TypeError):
            pass
        state_in = _tree.tree_unflatten(tree_in, leaves_in)
        try:
            verdict = compare_states(state_in, state_out, self.parameter.name, weak_type)
        except TypeError as error:
            raise TypeError(f"{describe_location(self.fn)[0]}: {error}") from None
        if keys is not None:
            if len(self.cache) >= _CACHE_LIMIT:
                self.cache.clear()
            try:
                self.cache[cache_key] = verdict
            except TypeError:
                pass
        return verdict

    def _explain(
        self, mismatches: list[Mismatch], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Mismatch]:
        """Adds origins; eager calls reuse them per (mismatches, argument signature)."""
        from ._provenance import explain

        leaves, treedef = _tree.tree_flatten((args, kwargs))
        key = None
        if not any(isinstance(leaf, Tracer) for leaf in leaves):
            try:
                key = (tuple(mismatches), treedef, leaf_keys(leaves))
                return self.explained[key]
            except (KeyError, TypeError, NotALeafError):
                pass
        explained = explain(self.fn, self.parameter, self.out, args, kwargs, mismatches)
        if key is not None:
            if len(self.explained) >= _CACHE_LIMIT:
                self.explained.clear()
            with contextlib.suppress(TypeError):
                self.explained[key] = explained
        return explained

    def _report(
        self, mismatches: list[Mismatch], mode: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        mismatches = self._explain(mismatches, args, kwargs)
        name, location = self.title or describe_location(self.fn)
        strict = mode == "check" and self.follows_config and _config.config.strict
        hint = "strict" if strict else mode
        message = format_report(name, location, self.parameter.name, mismatches, hint)
        if mode == "warn":
            if not _config.retracing.get():
                warnings.warn(StateDtypeWarning(message), stacklevel=4)
            return
        raise StateDtypeError(message, mismatches, name)


@overload
def state_dtype_invariant(
    fn: F,
    /,
    *,
    state: int | str | None = None,
    out: int | None = None,
    mode: str | None = None,
    weak_type: bool = True,
    annotations: bool = True,
) -> F: ...


@overload
def state_dtype_invariant(
    fn: None = None,
    /,
    *,
    state: int | str | None = None,
    out: int | None = None,
    mode: str | None = None,
    weak_type: bool = True,
    annotations: bool = True,
) -> Callable[[F], F]: ...


def state_dtype_invariant(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    state: int | str | None = None,
    out: int | None = None,
    mode: str | None = None,
    weak_type: bool = True,
    annotations: bool = True,
) -> Any:
    """Guards a step function so its output state keeps its input state's types.

    At trace time (or on an eager call) the new state is compared with the
    state argument leaf by leaf: tree structure, shape, dtype, weak_type and,
    under explicit sharding, sharding.

    **Arguments:**

    - `fn`: the step function. Omit it to get a decorator.
    - `state`: the state parameter, by name or position (default: the first
      parameter, skipping `self`/`cls`).
    - `out`: where the new state is in the return value: `None` for the whole
      return value, an int for an element of a returned tuple or list.
    - `mode`: `"check"` (raise `StateDtypeError`), `"cast"` (cast dtype and
      weak_type drift back, raise the rest), `"warn"` (emit a
      `StateDtypeWarning`), `"off"`; `None` uses `jax_dtypeguard.config.mode`.
    - `weak_type`: whether a change of weak_type alone counts as drift.
    - `annotations`: also check the function's jaxtyping annotations.

    **Returns:**

    The guarded function (same name, docstring and signature).

    **Raises:**

    `StateDtypeError` on drift (check mode, or what cast mode cannot fix);
    `TypeError`/`ValueError` on misuse.

    !!! Example
        ```python
        import jax.numpy as jnp
        from jax_dtypeguard import state_dtype_invariant

        @state_dtype_invariant(mode="cast")
        def step(state, lr):
            return state - lr * state  # a float64 lr would promote the state

        assert step(jnp.ones(3, jnp.float16), 0.1).dtype == jnp.float16
        ```
    """
    _validate(mode, weak_type, annotations, out, state)
    if fn is None:
        return functools.partial(
            state_dtype_invariant,
            state=state,
            out=out,
            mode=mode,
            weak_type=weak_type,
            annotations=annotations,
        )
    if not callable(fn):
        raise TypeError(
            f"state_dtype_invariant expects a function; got {type(fn).__name__} "
            f"{fn!r}. Use it bare (@state_dtype_invariant) or with keyword "
            'arguments (@state_dtype_invariant(mode="cast")).'
        )
    guard = _Guard(fn, state, out, mode, weak_type, annotations)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return guard(*args, **kwargs)

    guarded.__dtypeguard__ = guard  # type: ignore[attr-defined]
    return guarded
