"""Where a guarded function's state is: computed once, when it is guarded.

A `StateParameter` says where one state is among the arguments; a `CallPlan`
gathers the states of one function and where each new state comes back (an
element of the return value, or the argument itself when it is updated in
place).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ._caches import WeakCache
from ._errors import short_path

EMPTY = inspect.Parameter.empty
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def is_index(value: object) -> bool:
    """An int that is not a bool (`True` is not a position)."""
    return isinstance(value, int) and not isinstance(value, bool)


def unwrap(fn: Any) -> Any:
    """The function behind `functools.wraps` wrappers and `functools.partial`s."""
    target = inspect.unwrap(fn)
    while isinstance(target, functools.partial):
        target = inspect.unwrap(target.func)
    return target


def describe_location(fn: Callable[..., Any]) -> tuple[str, str]:
    """`(qualified name, "file:line")` of a function, looking through wrappers."""
    target = unwrap(fn)
    name = getattr(target, "__qualname__", None) or getattr(fn, "__qualname__", None)
    name = name or type(fn).__qualname__
    code = getattr(target, "__code__", None)
    if code is None:
        return name, "<unknown location>"
    return name, f"{short_path(code.co_filename)}:{code.co_firstlineno}"


# Each function's parameters, read once: at decoration, then by reports and provenance.
_PARAMETERS = WeakCache()


def _parameters(fn: Callable[..., Any]) -> tuple[inspect.Parameter, ...] | None:
    try:
        return _PARAMETERS[fn]
    except (KeyError, TypeError):
        pass
    try:
        parameters = tuple(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        parameters = None
    _PARAMETERS.remember(fn, parameters)
    return parameters


def parameter_name(fn: Callable[..., Any], position: int, fallback: str) -> str:
    """The name of `fn`'s positional parameter `position`, else `fallback`."""
    parameters = _parameters(fn) or []
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    return positional[position].name if 0 <= position < len(positional) else fallback


def argument_names(fn: Callable[..., Any], count: int) -> list[str]:
    """Names for `count` positional arguments of `fn`: parameter names, then `args[i]`."""
    parameters = _parameters(fn)
    if parameters is None:
        return [f"args[{i}]" for i in range(count)]
    positional = [p.name for p in parameters if p.kind in _POSITIONAL]
    variadic = next((p.name for p in parameters if p.kind is p.VAR_POSITIONAL), "args")
    return [
        positional[i] if i < len(positional) else f"{variadic}[{i - len(positional)}]"
        for i in range(count)
    ]


@dataclasses.dataclass(frozen=True)
class StateParameter:
    """Where one state is among a function's arguments.

    `name` roots the state's paths in reports. The state is the positional
    argument `position`, else the keyword argument `keyword`, else `default`;
    `operands` > 1 makes it the tuple of all positional arguments (the
    operands of a branch).
    """

    name: str
    position: int | None = None
    keyword: str | None = None
    default: Any = EMPTY
    operands: int = 0

    @classmethod
    def of(cls, fn: Callable[..., Any], state: int | str | None) -> StateParameter:
        """The parameter of `fn` that `state` names (a position, a name, or None: the first)."""
        parameters = _parameters(fn)
        if parameters is None:
            if isinstance(state, str):
                raise TypeError(
                    f"state={state!r} names a parameter, but the signature of {fn!r} "
                    "cannot be inspected; pass the state's position instead (state=0)."
                )
            return cls("state", position=state or 0)
        skip = 1 if parameters and parameters[0].name in ("self", "cls") else 0
        candidates = parameters[skip:]
        names = ", ".join(p.name for p in candidates) or "none"
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
            if matches:
                parameter = matches[0]
            elif any(p.kind is p.VAR_KEYWORD for p in parameters):
                parameter = inspect.Parameter(str(state), inspect.Parameter.KEYWORD_ONLY)
            else:
                raise ValueError(
                    f"state={state!r} names no parameter of "
                    f"{describe_location(fn)[0]} (its parameters: {names})."
                )
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(
                f"state={state!r} is the variadic parameter {parameter}; the state "
                "must be one named parameter."
            )
        return cls(
            parameter.name,
            position=parameters.index(parameter) if parameter.kind in _POSITIONAL else None,
            keyword=None if parameter.kind is parameter.POSITIONAL_ONLY else parameter.name,
            default=parameter.default,
        )

    @classmethod
    def at(cls, fn: Callable[..., Any], position: int, fallback_name: str) -> StateParameter:
        """The positional argument `position` of every call, named after `fn`'s parameter."""
        return cls(parameter_name(fn, position, fallback_name), position=position)

    @classmethod
    def branch_operands(cls, fn: Callable[..., Any], count: int) -> StateParameter:
        """A branch's state: its one operand, or the tuple of its `count` operands."""
        if count == 1:
            return cls(parameter_name(fn, 0, "operand"), position=0)
        return cls("operands", operands=count)

    @classmethod
    def argument(
        cls, name: str, position: int, keyword: str, default: Any = EMPTY
    ) -> StateParameter:
        """Positional argument `position` (or keyword `keyword`), reported as `name`."""
        return cls(name, position=position, keyword=keyword, default=default)

    def slots(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Which of a call's arguments hold the state: `("0",)`, `("k",)`, every positional
        one (branch operands), or none (the state is the parameter's default)."""
        if self.operands:
            return tuple(str(i) for i in range(len(args)))
        if self.position is not None and len(args) > self.position:
            return (str(self.position),)
        if self.keyword is not None and self.keyword in kwargs:
            return (self.keyword,)
        return ()

    def find(self, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """`(True, the state)` in a call's arguments, or `(False, None)` where it is missing."""
        if self.operands:
            return True, tuple(args)
        if self.position is not None and len(args) > self.position:
            return True, args[self.position]
        if self.keyword is not None and self.keyword in kwargs:
            return True, kwargs[self.keyword]
        if self.default is not EMPTY:
            return True, self.default
        return False, None


@dataclasses.dataclass(frozen=True)
class CallPlan:
    """The states of one guarded function and where each new state is.

    `outs[i]` is where state `i` comes back: `None` for the whole return
    value, an int for an element of a returned tuple or list, or `INPLACE`
    for a state updated in place (compared with itself after the call).
    """

    states: tuple[StateParameter, ...]
    outs: tuple[int | str | None, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.states)

    @classmethod
    def single(cls, state: StateParameter, out: int | None = None) -> CallPlan:
        return cls((state,), (out,))

    @classmethod
    def at_positions(
        cls, fn: Callable[..., Any], state_arg: int | tuple[int, ...], out: Any
    ) -> CallPlan:
        """The plan of a state at the positional argument `state_arg` of `fn`, found at
        `out` in its return value (`None`: all of it); for a tuple of positions, a state
        in parts named `state0`, `state1`, ..., at a tuple of indices (default: in order).
        """
        if not isinstance(state_arg, tuple):
            return cls.single(StateParameter.at(fn, state_arg, "state"), out)
        states = tuple(StateParameter.at(fn, p, f"state{i}") for i, p in enumerate(state_arg))
        return cls(states, tuple(range(len(states))) if out is None else out)

    @classmethod
    def of(
        cls,
        fn: Callable[..., Any],
        state: int | str | tuple[int | str, ...] | None,
        out: int | tuple[int, ...] | None,
        inplace: bool | int | str | tuple[int | str, ...],
    ) -> CallPlan:
        """The plan of `state_dtype_invariant(fn, state=..., out=..., inplace=...)`."""
        specs = state if isinstance(state, tuple) else (state,)
        states = tuple(StateParameter.of(fn, spec) for spec in specs)
        names = [p.name for p in states]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"state={state!r} names the parameter {duplicates[0]!r} twice.")
        in_place = _in_place(fn, states, inplace)
        returned = [p for p in states if p.name not in in_place]
        outs_given = out if isinstance(out, tuple) else (out,)
        if not returned:
            if out is not None:
                raise ValueError(
                    f"out={out!r}, but every state of {describe_location(fn)[0]} is updated "
                    "in place (inplace=True): nothing new is returned. Drop out=, or list "
                    "in inplace= only the states that are updated in place."
                )
            outs_given = ()
        elif len(returned) > 1 and len(outs_given) != len(returned):
            raise ValueError(
                f"state={state!r} has {len(returned)} returned states "
                f"({', '.join(p.name for p in returned)}), so out= must give each one's "
                f"index in the returned tuple, in the same order (e.g. "
                f"out={tuple(range(len(returned)))}); got out={out!r}."
            )
        elif len(returned) == 1 and len(outs_given) != 1:
            raise ValueError(
                f"out={out!r} gives {len(outs_given)} indices for the one returned state "
                f"{returned[0].name!r}; pass one index (or None for the whole return value)."
            )
        if len(outs_given) > 1 and None in outs_given:
            raise ValueError(
                f"out={out!r}: with several returned states each needs its index in the "
                "returned tuple; None (the whole return value) cannot be one of them."
            )
        given = iter(outs_given)
        outs = tuple(INPLACE if p.name in in_place else next(given) for p in states)
        return cls(states, outs)


INPLACE = "inplace"


def select(fn: Callable[..., Any], result: Any, out: int | None) -> Any:
    """The new state in `fn`'s `result` at `out`; a clear error if `result` has none there."""
    if out is None:
        return result
    if not isinstance(result, (tuple, list)):
        raise TypeError(
            f"{describe_location(fn)[0]} returned {_a_value_of(result)}, but out={out} "
            "expects a tuple or list holding the new state; use out=None if "
            "the function returns the state itself."
        )
    if not -len(result) <= out < len(result):
        raise ValueError(
            f"out={out} is past the {len(result)} values {describe_location(fn)[0]} "
            f"returned; use an index below {len(result)}."
        )
    return result[out]


def replace_in(result: Any, out: int | None, value: Any) -> Any:
    """`result` with its element `out` (or the whole, for None) replaced by `value`."""
    if out is None:
        return value
    items = list(result)
    items[out] = value
    if isinstance(result, list):
        return items
    if hasattr(result, "_fields"):
        return type(result)(*items)
    return type(result)(items)


def _in_place(
    fn: Callable[..., Any],
    states: tuple[StateParameter, ...],
    inplace: bool | int | str | tuple[int | str, ...],
) -> set[str]:
    if inplace is True:
        return {p.name for p in states}
    if inplace is False:
        return set()
    specs = inplace if isinstance(inplace, tuple) else (inplace,)
    chosen = set()
    for spec in specs:
        name = StateParameter.of(fn, spec).name
        if name not in {p.name for p in states}:
            raise ValueError(
                f"inplace={inplace!r} names {name!r}, which is not one of the states "
                f"({', '.join(p.name for p in states)}); list it in state= too."
            )
        chosen.add(name)
    return chosen


def _a_value_of(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return "an array"
    return f"a {type(value).__name__}"
