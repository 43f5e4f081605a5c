"""Optax transformations whose `update` keeps `opt_state`'s types.

Optax is an optional dependency: it is imported only by this module.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax
import optax

from ._call_site import written_argument
from ._cast import cast_back
from ._compare import compare_leaves
from ._config import Configured, Mode, effective, validate_mode
from ._delivery import deliver
from ._errors import Mismatch, Report
from ._guard import Guard, Reporting
from ._plan import CallPlan, StateParameter, describe_location
from ._policy import Governance, Policy, as_policy, build_state
from ._signature import ARRAY_TYPES, LeafSignature

__all__ = ["invariant"]


def _as_transformation(tx: Any) -> optax.GradientTransformation:
    if isinstance(tx, optax.GradientTransformation):
        return tx
    if isinstance(tx, optax.MultiSteps):
        # Its `update` takes extra arguments, though `gradient_transformation()` says otherwise.
        return optax.GradientTransformationExtraArgs(tx.init, tx.update)  # pyright: ignore
    what, hint = f"{type(tx).__name__} {tx!r:.80}", ""
    if callable(tx) and hasattr(tx, "__qualname__"):
        what = f"{type(tx).__name__} {getattr(tx, '__module__', '?')}.{tx.__qualname__}"
        hint = " Did you pass the optimizer's factory? Call it first: invariant(optax.adam(1e-3))."
    raise TypeError(
        "invariant expects an optax.GradientTransformation or "
        f"optax.GradientTransformationExtraArgs (or optax.MultiSteps); got {what}.{hint}"
    )


def _builder_name(update: Any) -> str:
    """The function that built a transformation, from its `update`'s qualified name.

    `chain.<locals>.update_fn` -> `chain`; `MultiSteps.update` -> `MultiSteps`.
    """
    name = describe_location(update)[0]
    return name.split(".<locals>.", 1)[0] if ".<locals>." in name else name.rsplit(".", 1)[0]


def _is_left_out(leaf: Any) -> bool:
    return leaf is None or isinstance(leaf, optax.MaskedNode)


@dataclasses.dataclass
class _ParamsComparison:
    """A tree (updates, or the params a line search tries) compared with the params."""

    mismatches: list[Mismatch] = dataclasses.field(default_factory=list)
    uncastable: list[Mismatch] = dataclasses.field(default_factory=list)
    param_paths: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> param's
    # (index among the tree's leaves, the signature to cast it to), as `cast_back` takes them
    casts: list[tuple[int, LeafSignature]] = dataclasses.field(default_factory=list)

    def add(self, mismatch: Mismatch, param_path: str, castable: bool) -> None:
        self.mismatches.append(mismatch)
        self.param_paths[mismatch.path] = param_path
        if not castable:
            self.uncastable.append(mismatch)


def _compare_with_params(tree: Any, params: Any, root: str, weak_type: bool) -> _ParamsComparison:
    """Each leaf of `tree` against its param's shape and dtype, where the param is an array.

    `None` and `optax.MaskedNode` leaves (updates that `add_decayed_weights`
    or `optax.masked` leave out) and leaves whose param is a Python scalar or
    no array are not compared. A dtype change within a kind (float <-> float,
    int <-> int, complex <-> complex) is castable, to the param's type; a shape,
    sharding or kind change is not (`compare_leaves`, as for a state).
    """
    comparison = _ParamsComparison()
    entries, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_left_out)
    try:
        param_leaves = treedef.flatten_up_to(params)
    except (ValueError, TypeError):
        expected, got = jax.tree.structure(params), jax.tree.structure(tree)
        comparison.add(Mismatch(root, "structure", str(expected), str(got)), "params", False)
        return comparison
    index = -1  # among the leaves of `tree`, which holds no leaf where it leaves one out
    for (path, leaf), param in zip(entries, param_leaves):
        if _is_left_out(leaf):
            continue
        index += 1
        if not isinstance(param, ARRAY_TYPES) or not isinstance(leaf, ARRAY_TYPES):
            continue
        keypath = jax.tree_util.keystr(path)
        found, target = compare_leaves(root + keypath, param, leaf, weak_type)
        for mismatch in found:
            comparison.add(mismatch, "params" + keypath, target is not None)
        if target is not None:
            comparison.casts.append((index, target))
    return comparison


class _ParamsCheck:
    """The updates-vs-params half of `invariant`: its mode, and reports that name the fix.

    Not a `Guard`: it compares a tree (updates, or the params a line search
    tries) with another, the params, rather than a state with itself.
    """

    def __init__(self, mode: str | None, given: bool, name: str, location: str) -> None:
        self.mode = mode
        self.argument = "updates" if given else "mode"  # the argument that sets this mode
        self.name = name
        self.location = location

    def settings(self) -> tuple[str, bool]:
        """(mode, weak_type) now: weak_type is compared in strict mode only."""
        return effective(self.mode, False)

    def repair(
        self, tree: Any, params: Any, root: str, what: str, remedy: str, explain: Any = None
    ) -> Any:
        """`tree` in the params' dtypes (cast mode), or the report of how it differs.

        `what` completes the report's first line; `remedy` is the hint's other way out.
        """
        mode, weak_type = self.settings()
        if mode == "off":
            return tree
        comparison = _compare_with_params(tree, params, root, weak_type)
        if not comparison.mismatches:
            return tree
        reported = comparison.mismatches
        if mode == "cast":
            reported = comparison.uncastable
            if not reported:
                return cast_back(tree, comparison.casts)
        if explain is not None:
            reported = explain(reported)
        self.report(reported, comparison, mode, what, remedy)
        return tree

    def report(
        self,
        mismatches: list[Mismatch],
        comparison: _ParamsComparison,
        mode: str,
        what: str,
        remedy: str,
    ) -> None:
        report = Report(
            self.name,
            self.location,
            tuple(mismatches),
            mode,
            what=what,
            against=comparison.param_paths,
            hint=self.hint(mismatches, comparison, mode, remedy),
        )
        deliver(report)

    def hint(
        self, mismatches: list[Mismatch], comparison: _ParamsComparison, mode: str, remedy: str
    ) -> str:
        rule = (
            "an update keeps its param's shape, and a change of kind (int -> float) is never cast"
        )
        if mode == "cast":
            return f"Hint: casting cannot fix these: {rule}."
        if self.settings()[1]:  # strict mode
            fix = (
                "strict mode is on, so an update whose dtype differs from its param's fails "
                f'even where {self.argument}="cast" would cast it'
            )
        else:
            follows = ", which updates follows," if self.argument == "mode" else ""
            fix = (
                f'pass {self.argument}="cast" to invariant{follows} to cast to the params\' dtypes'
            )
        if any(m in comparison.uncastable for m in mismatches):
            fix += f" ({rule})"
        return f"Hint: {fix}, or {remedy}."


def _value_fn_at_params_types(value_fn: Any, params: Any, guard: _ParamsCheck) -> Any:
    """`value_fn`, called with params in `params`' dtypes (a line search promotes them)."""

    @functools.wraps(value_fn)
    def value_fn_at_params_types(trial: Any, *args: Any, **kwargs: Any) -> Any:
        trial = guard.repair(
            trial,
            params,
            "value_fn(params)",
            "called value_fn with params of other types than update's params",
            "make value_fn accept params of any float dtype",
        )
        return value_fn(trial, *args, **kwargs)

    return value_fn_at_params_types


def invariant(
    tx: Any,
    *,
    mode: Mode | None = "cast",
    updates: Mode | None = None,
    policy: Policy | dict[str, Any] | None = None,
) -> Any:
    """An Optax transformation whose `update` keeps the optimizer state's types.

    Each `update(updates, opt_state, params=None, **extra_args)` is guarded
    like a function decorated with `state_dtype_invariant`: the new
    `opt_state` is compared with the one given (structure, shape, dtype,
    weak_type), and, where `params` are given, each update with its param
    (shape and dtype, where the param is an array). A `value_fn` among the
    extra arguments (line searches) is called with params in the params'
    dtypes. So `optax.adamw(1e-3)` keeps bfloat16 state and updates under
    float32 grads, `optax.lbfgs()` keeps float16 or bfloat16 state under a
    float64 `value` and runs inside `jax.lax.while_loop`, and a jitted
    `update` compiles once. `jax_dtypeguard.strict()` turns every guard into
    `"check"`.

    **Arguments:**

    - `tx`: an `optax.GradientTransformation`,
      `optax.GradientTransformationExtraArgs` or `optax.MultiSteps`.
    - `mode`: what to do when `opt_state` drifts: `"cast"` (cast dtype and
      weak_type drift back; structure and shape drift still raise),
      `"check"`, `"warn"` or `"off"`; `None` uses `jax_dtypeguard.config.mode`.
    - `updates`: the same choice for updates whose dtype differs from their
      param's, and for the params a line search hands to `value_fn` (only
      when `params` are passed to `update`); `None` (the default) means the
      same as `mode`.
    - `policy`: a `jax_dtypeguard.Policy` (or its rules) over the paths
      `opt_state...`, `updates...` and `params...`: `init` builds the state
      in the policy's dtypes, `update` reports a state given in others (in
      every mode but `"off"`), checks (or, in cast mode, casts) the new
      state against it, and checks the incoming updates against their rules
      (cast mode casts them on entry). See [Dtype policies](policies.md).

    **Returns:**

    The same kind of transformation: `GradientTransformationExtraArgs` if
    `tx` takes extra arguments (or is a `MultiSteps`), else
    `GradientTransformation`. `init` is `tx.init` (followed by the policy,
    where one is given).

    **Raises:**

    `TypeError` if `tx` is not a gradient transformation. Its `update`
    raises `StateDtypeError`, naming the optimizer as written
    (`invariant(adamw)`) and the paths (`opt_state[0].mu`, `updates['w']`),
    on drift its modes do not repair.

    !!! Example
        ```python
        import jax.numpy as jnp
        import optax
        from jax_dtypeguard.optax import invariant

        tx = invariant(optax.adamw(1e-3))
        params = jnp.ones(3, jnp.bfloat16)
        state = tx.init(params)
        updates, new_state = tx.update(jnp.ones(3, jnp.float32), state, params)
        assert updates.dtype == new_state[0].mu.dtype == jnp.bfloat16
        ```
    """
    inner = _as_transformation(tx)
    if mode is not None:
        validate_mode(mode)
    if updates is not None:
        validate_mode(updates, "updates")
    caller = inspect.currentframe()
    written = written_argument(caller.f_back if caller is not None else None)
    del caller
    name = f"invariant({written[0] if written else _builder_name(inner.update)})"
    location = written[1] if written else describe_location(inner.update)[1]
    rules = as_policy(policy)
    governance = None
    init = inner.init
    if rules is not None:
        governance = Governance(
            rules,
            names=("updates", "opt_state", "params"),
            remedy=f"or let `{name}.init(params)` build it, which follows the policy",
        )
        init = functools.wraps(inner.init)(
            lambda params: build_state(rules, inner.init, params, root="opt_state")
        )
    state_guard = Guard(
        inner.update,
        CallPlan.single(StateParameter.argument("opt_state", 1, "state", None), out=1),
        settings=Configured(mode),
        reporting=Reporting(title=(name, location)),
        annotations=False,
        policy=governance,
    )
    params_guard = _ParamsCheck(
        updates if updates is not None else mode, updates is not None, name, location
    )
    updates_parameter = StateParameter.argument("updates", 2, "params", None)

    def guarded_update(grads: Any, state: Any, params: Any, extra_args: dict[str, Any]) -> Any:
        if params is None:
            return state_guard(grads, state, params, **extra_args)
        value_fn = extra_args.get("value_fn")
        if callable(value_fn) and params_guard.settings()[0] != "off":
            value_fn = _value_fn_at_params_types(value_fn, params, params_guard)
            extra_args = {**extra_args, "value_fn": value_fn}
        new_updates, new_state = state_guard(grads, state, params, **extra_args)

        def explain(mismatches: list[Mismatch]) -> list[Mismatch]:
            from ._provenance import explain

            args = (grads, state, params)
            return explain(inner.update, updates_parameter, 0, args, extra_args, mismatches)

        new_updates = params_guard.repair(
            new_updates,
            params,
            "updates",
            "returned updates whose types differ from the params'",
            "compute the grads in the params' dtypes",
            explain,
        )
        return new_updates, new_state

    if isinstance(inner, optax.GradientTransformationExtraArgs):

        def update_with_extra_args(
            updates: Any, state: Any, params: Any = None, **extra_args: Any
        ) -> tuple[Any, Any]:
            return guarded_update(updates, state, params, extra_args)

        update_with_extra_args.__qualname__ = name
        return optax.GradientTransformationExtraArgs(init, update_with_extra_args)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return guarded_update(updates, state, params, {})

    update.__qualname__ = name
    return optax.GradientTransformation(init, update)
