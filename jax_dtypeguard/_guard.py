"""The guard behind every guarded function: the decorator, `dg.lax`, `dg.optax`, testing.

A `Guard` is built from values: where the states are (a `CallPlan`), how a
state out is compared with the state in (a comparison from `_comparisons`),
where its mode comes from (a settings source from `_config`), and how its
reports read (`Reporting`). `_guarded.guarded_callable` builds what the user
(or JAX) calls.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import weakref
from collections.abc import Callable
from typing import Any, cast

import jax

from . import _annotations
from ._caches import Cache
from ._cast import cast_back
from ._compare import OK, Verdict
from ._comparisons import EXACT, Comparison
from ._compat import Tracer, flatten_like, hide_from_tracebacks
from ._config import Configured, Settings
from ._delivery import deliver
from ._errors import Mismatch, Report
from ._nnx import as_tree, is_graph_node, returning, write_back
from ._plan import INPLACE, CallPlan, StateParameter, describe_location, replace_in, select
from ._signature import NotALeafError, array_keys, leaf_keys, state_keys

_tree = jax.tree_util
# Reports show the user's frames, not this package's: JAX filters these files out of the
# tracebacks it filters, and a guard's own report is raised afresh at the guarded call.
hide_from_tracebacks(os.path.join(os.path.dirname(os.path.abspath(__file__)), ""))


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


def verdict_key(
    number: int, tree_in: Any, tree_out: Any, keys: Any, weak_type: bool
) -> tuple[Any, ...]:
    """The key of a cached eager verdict: the state's number, both tree structures (the
    output's only where it is another) and leaf keys, and whether weak_type counts."""
    same_tree = tree_out is tree_in or tree_out == tree_in
    return (number, tree_in, None if same_tree else tree_out, keys, weak_type)


@dataclasses.dataclass(frozen=True)
class Reporting:
    """How a guard's reports read, where not as the decorator's: the `(name, "file:line")`
    they give the function (`invariant(adamw)`), and `notes(args, kwargs, result)`, lines
    before the hint (the loop hook: where the loop was reached from)."""

    title: tuple[str, str] | None = None
    notes: Callable[[tuple[Any, ...], dict[str, Any], Any], list[str]] | None = None


_CONFIGURED = Configured()
_AS_DECLARED = Reporting()


class _Snapshot:
    """One state as a call received it: its leaves and tree structure, flattened once,
    and whether it is a Flax NNX graph node."""

    __slots__ = ("graph_node", "leaves", "treedef", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.graph_node = is_graph_node(value)
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
    - `comparison`: how a state out is compared with the state in (`EXACT`, a
      loop's `LoopRule`, a `Partitioned` state).
    - `settings`: where its mode and weak_type come from (`Configured`, which
      follows `config`, scopes and strict mode; or `Fixed`).
    - `reporting`: how its reports read, where not as the decorator's.
    - `annotations`: whether to check `fn`'s jaxtyping annotations.
    - `hold_weakly`: keep only a weak reference to `fn` (cached loop bodies).
    - `policy`: a dtype policy applied to the function (`_policy.Governance`), or
      None: `policy.enter(guard, mode, args, kwargs)` checks (or casts) the
      arguments before the call and returns those to call with;
      `policy.review(name, state_out, verdict)` judges each new state's governed
      leaves after it.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        plan: CallPlan,
        *,
        comparison: Comparison = EXACT,
        settings: Settings = _CONFIGURED,
        reporting: Reporting = _AS_DECLARED,
        annotations: bool = True,
        hold_weakly: bool = False,
        policy: Any = None,
    ) -> None:
        self._fn: Callable[[], Any] = weakref.ref(fn) if hold_weakly else (lambda: fn)
        self._strong_fn = None if hold_weakly else fn  # the eager fast path reads it directly
        self.holds_weakly = hold_weakly
        self.plan = plan
        self.comparison = comparison
        self.settings = settings
        self.reporting = reporting
        self.policy = policy
        out = plan.outs[0]
        returned_one = len(plan.states) == 1 and not isinstance(out, str)
        keyed = returned_one and comparison.keyed and policy is None
        self._one = (plan.states[0], out) if keyed and not isinstance(out, str) else None
        self.annotations = _annotations.checker_for(fn, plan.names) if annotations else None
        self.verdicts = Cache()  # eager signatures -> Verdict
        self.explained = Cache()  # (signatures, mismatches) -> mismatches with origins

    @property
    def fn(self) -> Callable[..., Any]:
        fn = self._strong_fn if self._strong_fn is not None else self._fn()
        if fn is None:  # only reachable through a stale reference to the guard itself
            raise ReferenceError("the guarded function no longer exists")
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        mode, weak_type = self.settings.now()
        fn = self.fn
        if mode == "off":
            return fn(*args, **kwargs)
        if self.policy is not None:
            args, kwargs = self.policy.enter(self, mode, args, kwargs)
        if self._one is not None:  # one returned state, compared as is: the usual step
            parameter, out = self._one
            found, state = parameter.find(args, kwargs)
            if found and not is_graph_node(state):
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
                    key = verdict_key(0, tree_in, tree_out, keys, weak_type)
                    if key[2] is None and keys[0] == keys[1]:
                        return result
                    try:
                        cached = self.verdicts.get(key)
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
            if self.policy is not None:
                verdict = self.policy.review(parameter.name, state_out, verdict)
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
        if before.graph_node and not is_graph_node(state_out):
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
        return self.reporting.title or describe_location(self.fn)

    def _verdict(
        self,
        number: int,
        parameter: StateParameter,
        before: _Snapshot,
        state_out: Any,
        weak_type: bool,
    ) -> Verdict:
        if not self.comparison.keyed:
            return self.comparison.verdict(before.tree(), state_out, parameter.name, weak_type)
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
        key = verdict_key(number, before.treedef, tree_out, keys, weak_type)
        if keys is not None and key[2] is None and keys[0] == keys[1]:
            return OK
        if keys is not None:
            try:
                return self.verdicts[key]
            except (KeyError, TypeError):
                pass
        try:
            verdict = self.comparison.verdict(before.tree(), state_out, parameter.name, weak_type)
        except TypeError as error:
            raise TypeError(f"{self.name}: {error}") from None
        if keys is not None:
            self.verdicts.remember(key, verdict)
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
                    returning(self.fn, parameter), parameter, 1, args, kwargs, explained
                )
            else:
                returned = cast(int | None, out)
                explained = explain(self.fn, parameter, returned, args, kwargs, explained)
        if key is not None:
            self.explained.remember(key, explained)
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
        notes = self.reporting.notes
        report = Report(
            self.name,
            self.described[1],
            tuple(self._explain(mismatches, args, kwargs)),
            mode,
            strict=self.settings.strict(mode),
            states=tuple(self.plan.names),
            notes=tuple(notes(args, kwargs, result)) if notes is not None else (),
        )
        deliver(report, raised_by=self)
