"""The guard behind every guarded function: the decorator, `dg.lax`, `dg.optax`, testing.

One `Guard` per guarded function, configured by its fields (where the states
are, the mode, whether the configuration applies); `guarded_callable` builds
what the user (or JAX) calls.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any, cast

import jax

from . import _annotations, _config
from ._call_site import user_frame
from ._carry_rules import Rule, carry_verdict
from ._cast import cast_back
from ._compare import OK, Verdict, compare_partitioned, compare_states
from ._compat import Tracer, flatten_like, hide_from_tracebacks
from ._config import Mode
from ._errors import Mismatch, StateDtypeError, StateDtypeWarning, format_report
from ._plan import INPLACE, CallPlan, StateParameter, describe_location, replace_in, select
from ._signature import NotALeafError, array_keys, flax_nnx, leaf_keys, remember, state_keys

_tree = jax.tree_util
# Reports show the user's frames, not this package's: JAX filters these files out of the
# tracebacks it filters, and a guard's own report is raised afresh at the guarded call.
hide_from_tracebacks(os.path.join(os.path.dirname(os.path.abspath(__file__)), ""))


def _is_graph_node(value: Any) -> bool:
    nnx = flax_nnx()
    return nnx is not None and nnx.graph.is_graph_node(value)


def as_tree(value: Any) -> Any:
    """A state as a pytree: NNX graph nodes that JAX cannot flatten through `nnx.state`."""
    if _is_graph_node(value) and _tree.treedef_is_leaf(_tree.tree_structure(value)):
        return flax_nnx().state(value)
    return value


def write_back(target: Any, value: Any, name: str) -> None:
    """Updates the in-place state `target` to `value` (of the same structure)."""
    if _is_graph_node(target):
        nnx = flax_nnx()
        nnx.update(target, nnx.state(value) if _is_graph_node(value) else value)
    elif isinstance(target, dict):
        target.update(value)
    elif isinstance(target, list):
        target[:] = value
    else:
        raise TypeError(
            f"cast mode cannot write the cast values back into the in-place state '{name}', "
            f"a {type(target).__qualname__}: only Flax NNX objects, dicts and lists can be "
            'updated in place. Use mode="check", or return the new state (out=...).'
        )


def _returning(fn: Callable[..., Any], parameter: StateParameter) -> Callable[..., Any]:
    """`fn`, also returning the in-place state `parameter` as it is after the call."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        return result, as_tree(parameter.find(args, kwargs)[1])

    return call


def _array_keys_alike(
    leaves_in: list[Any], tree_in: Any, state_out: Any
) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """`(input keys, output keys)` where both states hold only arrays (or tracers) in one
    tree structure, `tree_in`; else None. Cheaper than flattening the output."""
    keys_in = array_keys(leaves_in)
    if keys_in is None:
        return None
    leaves_out = flatten_like(tree_in, state_out)
    keys_out = None if leaves_out is None else array_keys(leaves_out)
    return None if keys_out is None else (keys_in, keys_out)


class _Snapshot:
    """One state as a call received it: its leaves and tree structure, flattened once,
    and whether it is a Flax NNX graph node."""

    __slots__ = ("graph_node", "leaves", "treedef", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.graph_node = _is_graph_node(value)
        tree = as_tree(value) if self.graph_node else value
        self.leaves, self.treedef = _tree.tree_flatten(tree)

    @classmethod
    def flattened(cls, value: Any, leaves: list[Any], treedef: Any) -> _Snapshot:
        """The snapshot of a state that is no NNX graph node, already flattened."""
        snapshot = cls.__new__(cls)
        snapshot.value, snapshot.graph_node = value, False
        snapshot.leaves, snapshot.treedef = leaves, treedef
        return snapshot

    def tree(self) -> Any:
        return _tree.tree_unflatten(self.treedef, self.leaves)


class Guard:
    """Compares the states a function is given with the states it returns (or updates).

    **Fields:**

    - `plan`: where the states are (`CallPlan`).
    - `mode`, `weak_type`: as declared (`mode=None`: the configured mode).
    - `follows_config`: whether `config`, scopes and strict mode apply (not in
      the testing assertions, which check exactly what they are asked, nor in
      the loop hook, whose scope set its mode).
    - `strict`: for a guard that does not follow the configuration, whether
      strict mode set its mode (said in its reports).
    - `annotations`: whether to check `fn`'s jaxtyping annotations.
    - `hold_weakly`: keep only a weak reference to `fn` (cached loop bodies).
    - `rule`: compare as a loop or branch does (`_carry_rules.Rule`): a Python scalar
      that `jax.lax` accepts for an array leaf is cast, not a structure change.
    - `traced`: which leaves are traced, a predicate such as `eqx.is_array`; the
      others are compared by value (`compare_partitioned`). None: every array
      and Python scalar.
    - `title`: `(name, "file:line")` that reports give the function, where not
      its own (`invariant(adamw)`).
    - `notes`: `(args, kwargs, result) -> lines` that a report adds before its
      hint (the loop hook: where the loop was reached from).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        plan: CallPlan,
        *,
        mode: Mode | None = None,
        weak_type: bool = True,
        annotations: bool = True,
        follows_config: bool = True,
        strict: bool = False,
        hold_weakly: bool = False,
        rule: Rule | None = None,
        traced: Callable[[Any], bool] | None = None,
        title: tuple[str, str] | None = None,
        notes: Callable[[tuple[Any, ...], dict[str, Any], Any], list[str]] | None = None,
    ) -> None:
        self._fn: Callable[[], Any] = weakref.ref(fn) if hold_weakly else (lambda: fn)
        self._strong_fn = None if hold_weakly else fn  # the eager fast path reads it directly
        self.plan = plan
        self.mode = mode
        self.weak_type = weak_type
        self.follows_config = follows_config
        self._strict = strict
        self.title = title
        self.notes = notes
        self.rule: Rule | None = rule
        self.traced = traced
        out = plan.outs[0]
        compared_as_is = rule is None and traced is None
        returned_one = len(plan.states) == 1 and not isinstance(out, str) and compared_as_is
        self._one = (plan.states[0], out) if returned_one and not isinstance(out, str) else None
        self.annotations = _annotations.checker_for(fn, plan.names) if annotations else None
        self.verdicts: dict[Any, Verdict] = {}
        self.explained: dict[Any, list[Mismatch]] = {}

    @property
    def fn(self) -> Callable[..., Any]:
        fn = self._strong_fn if self._strong_fn is not None else self._fn()
        if fn is None:  # only reachable through a stale reference to the guard itself
            raise ReferenceError("the guarded function no longer exists")
        return fn

    def settings(self) -> tuple[str, bool]:
        """The (mode, weak_type) of this call: the configuration applied."""
        if not self.follows_config:
            return self.mode or "check", self.weak_type
        return _config.effective(self.mode, self.weak_type)

    def strict(self, mode: str) -> bool:
        """Whether strict mode made this call's check (read on report only)."""
        if not self.follows_config:
            return self._strict
        return mode == "check" and _config.config.strict

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        mode, weak_type = self.settings()
        fn = self.fn
        if mode == "off":
            return fn(*args, **kwargs)
        if self._one is not None:  # one returned state, compared as is: the usual step
            parameter, out = self._one
            found, state = parameter.find(args, kwargs)
            if found and not _is_graph_node(state):
                leaves_in, tree_in = _tree.tree_flatten(state)
                result = fn(*args, **kwargs)
                state_out = result if out is None else select(fn, result, out)
                keys = _array_keys_alike(leaves_in, tree_in, state_out)
                tree_out = tree_in
                if keys is None:
                    leaves_out, tree_out = _tree.tree_flatten(state_out)
                    try:
                        keys = state_keys(leaves_in, leaves_out)
                    except NotALeafError:
                        keys = None
                if keys is not None and self.annotations is None:
                    same_tree = tree_out is tree_in or tree_in == tree_out
                    if same_tree and keys[0] == keys[1]:
                        return result
                    try:
                        cached = self.verdicts.get(
                            (0, tree_in, None if same_tree else tree_out, keys, weak_type)
                        )
                    except TypeError:  # unhashable static data in a tree structure
                        cached = None
                    if cached is not None and not cached.mismatches:
                        return result  # a cached verdict with nothing to report or cast
                before = _Snapshot.flattened(state, leaves_in, tree_in)
                flat = (state_out, tree_out, keys)
                return self._finish(args, kwargs, mode, weak_type, [before], result, flat)
        snapshots = [self._snapshot(fn, p, args, kwargs) for p in self.plan.states]
        return self._finish(args, kwargs, mode, weak_type, snapshots, fn(*args, **kwargs))

    def _finish(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mode: str,
        weak_type: bool,
        snapshots: list[_Snapshot],
        result: Any,
        flat: tuple[Any, Any, Any] | None = None,
    ) -> Any:
        """Compares (and in cast mode repairs) each state after the call; reports the rest.

        `flat`: the one state's `(state out, its treedef, leaf keys)`, where known.
        """
        __tracebackhide__ = True
        fn = self.fn
        mismatches: list[Mismatch] = []
        for number, (parameter, out, before) in enumerate(
            zip(self.plan.states, self.plan.outs, snapshots)
        ):
            if flat is None:
                state_out = self._state_out(fn, parameter, out, before, result)
                verdict = self._verdict(number, parameter, before, state_out, weak_type)
            else:
                state_out, tree_out, keys = flat
                verdict = self._verdict_of(
                    number, parameter, before, state_out, tree_out, keys, weak_type
                )
            if mode != "cast":
                mismatches += verdict.mismatches
                continue
            mismatches += verdict.uncastable
            if verdict.castable and not verdict.uncastable:
                repaired = cast_back(state_out, verdict.castable)
                if out == INPLACE:
                    write_back(before.value, repaired, parameter.name)
                else:
                    result = replace_in(result, out, repaired)  # type: ignore[arg-type]
        if self.annotations is not None:
            mismatches += self.annotations(args, kwargs, result)
        if mismatches:
            self._report(mismatches, mode, args, kwargs, result)
        return result

    def _snapshot(
        self,
        fn: Callable[..., Any],
        parameter: StateParameter,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _Snapshot:
        __tracebackhide__ = True
        found, state = parameter.find(args, kwargs)
        if not found:
            fn(*args, **kwargs)  # raises Python's own error for the missing argument
            raise TypeError(
                f"{self.name} was called without its state argument '{parameter.name}'; "
                "pass it positionally or by keyword."
            )
        return _Snapshot(state)

    def _state_out(
        self,
        fn: Callable[..., Any],
        parameter: StateParameter,
        out: Any,
        before: _Snapshot,
        result: Any,
    ) -> Any:
        if out == INPLACE:
            return as_tree(before.value) if before.graph_node else before.value
        state_out = select(fn, result, out)
        if before.graph_node and not _is_graph_node(state_out):
            raise TypeError(
                f"{self.name}: the state '{parameter.name}' is a Flax NNX "
                f"{type(before.value).__qualname__}, updated in place, but the function "
                f"returned {type(state_out).__qualname__}. Guard it in place: "
                f"state_dtype_invariant(state={parameter.name!r}, inplace=True) "
                '(several: state=("model", "optimizer"), inplace=True).'
            )
        return state_out

    @property
    def name(self) -> str:
        return self.described[0]

    @functools.cached_property
    def described(self) -> tuple[str, str]:
        """`(name, "file:line")` that reports give the function."""
        return self.title or describe_location(self.fn)

    def _verdict(
        self,
        number: int,
        parameter: StateParameter,
        before: _Snapshot,
        state_out: Any,
        weak_type: bool,
    ) -> Verdict:
        if self.rule is not None:
            return carry_verdict(before.tree(), state_out, parameter.name, self.rule, weak_type)
        if self.traced is not None:
            return compare_partitioned(
                before.tree(), state_out, parameter.name, weak_type, self.traced
            )
        leaves_out, tree_out = _tree.tree_flatten(state_out)
        try:
            keys = state_keys(before.leaves, leaves_out)
        except NotALeafError:
            keys = None
        return self._verdict_of(number, parameter, before, state_out, tree_out, keys, weak_type)

    def _verdict_of(
        self,
        number: int,
        parameter: StateParameter,
        before: _Snapshot,
        state_out: Any,
        tree_out: Any,
        keys: tuple[Any, Any] | None,
        weak_type: bool,
    ) -> Verdict:
        """The verdict for a state whose output is flattened and keyed: cached when eager."""
        same_tree = tree_out is before.treedef or tree_out == before.treedef
        if keys is not None and same_tree and keys[0] == keys[1]:
            return OK
        # The output's tree structure is in the key only where it is another.
        cache_key = (number, before.treedef, None if same_tree else tree_out, keys, weak_type)
        if keys is not None:
            try:
                return self.verdicts[cache_key]
            except (KeyError, TypeError):
                pass
        try:
            verdict = compare_states(before.tree(), state_out, parameter.name, weak_type)
        except TypeError as error:
            raise TypeError(f"{self.name}: {error}") from None
        if keys is not None:
            remember(self.verdicts, cache_key, verdict)
        return verdict

    def _explain(
        self, mismatches: list[Mismatch], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[Mismatch]:
        """Adds origins; eager calls reuse them per (mismatches, argument signature)."""
        from ._provenance import explain

        leaves, treedef = _tree.tree_flatten((args, kwargs))
        key = None
        if not any(map(isinstance, leaves, itertools.repeat(Tracer))):  # an eager call
            try:
                key = (tuple(mismatches), treedef, leaf_keys(leaves))
                return self.explained[key]
            except KeyError:
                pass
            except (TypeError, NotALeafError):
                key = None
        explained = mismatches
        for parameter, out in zip(self.plan.states, self.plan.outs):
            if out == INPLACE:  # re-traced as a function that returns the state it updated
                explained = explain(
                    _returning(self.fn, parameter), parameter, 1, args, kwargs, explained
                )
            else:
                returned = cast(int | None, out)
                explained = explain(self.fn, parameter, returned, args, kwargs, explained)
        if key is not None:
            remember(self.explained, key, explained)
        return explained

    def _report(
        self,
        mismatches: list[Mismatch],
        mode: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
    ) -> None:
        __tracebackhide__ = True
        mismatches = self._explain(mismatches, args, kwargs)
        location = self.described[1]
        strict = self.strict(mode)
        message = format_report(self.name, location, self.plan.names, mismatches, mode, strict)
        if self.notes is not None:
            lines = message.split("\n")
            message = "\n".join(lines[:-1] + self.notes(args, kwargs, result) + lines[-1:])
        deliver(message, mismatches, self.name, mode, guard=self)


def deliver(
    message: str,
    mismatches: list[Mismatch],
    name: str,
    mode: str,
    guard: Guard | None = None,
) -> None:
    """A report: warned about in warn mode (once: not again while provenance re-traces),
    else raised as a `StateDtypeError` (that `guard` raised, if it is given).

    A warning points at the user's innermost frame.
    """
    __tracebackhide__ = True
    if mode == "warn":
        if not _config.retracing.get():
            frame, level = user_frame(sys._getframe(1))
            warnings.warn(StateDtypeWarning(message), stacklevel=level + 2 if frame else 2)
        return
    error = StateDtypeError(message, mismatches, name)
    if guard is not None:
        error._guard = guard  # type: ignore[attr-defined]
    raise error


def _from_here(error: StateDtypeError, guard: Guard) -> StateDtypeError:
    """`guard`'s own report without the frames inside the guard (raised by the caller);
    a report from a guard inside the function keeps its frames, which matter."""
    return error.with_traceback(None) if getattr(error, "_guard", None) is guard else error


def copy_names(wrapper: Any, fn: Any) -> None:
    """Gives a wrapper object `fn`'s module, name, qualified name and docstring."""
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        value = getattr(fn, attribute, None)
        if isinstance(value, str):
            setattr(wrapper, attribute, value)


class _WeaklyGuarded:
    """What JAX receives for a cached loop body: calls the guard, unwraps to the user's function.

    Holds the function only through the guard's weak reference, so a cache of
    these keeps nothing alive.
    """

    def __init__(self, guard: Guard, fn: Callable[..., Any]) -> None:
        self.__dtypeguard__ = guard
        copy_names(self, fn)

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return self.__dtypeguard__.fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return self.__dtypeguard__(*args, **kwargs)
        except StateDtypeError as error:
            raise _from_here(error, self.__dtypeguard__) from error.__cause__


def guarded_callable(guard: Guard) -> Callable[..., Any]:
    """The callable that runs `guard`: a `functools.wraps` wrapper of its function, or,
    for a guard that holds its function weakly, an object that unwraps to it."""
    fn = guard.fn
    if isinstance(guard._fn, weakref.ref):
        return _WeaklyGuarded(guard, fn)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return guard(*args, **kwargs)
        except StateDtypeError as error:
            raise _from_here(error, guard) from error.__cause__

    guarded.__dtypeguard__ = guard  # type: ignore[attr-defined]
    return guarded
