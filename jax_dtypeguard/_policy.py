"""Dtype policies: which floating dtype each leaf of a state (or argument) should have.

`Policy` is the public value (rules, `cast`, `check`); the path patterns are
in `_patterns.py`. `Governance` is what a guard holds when it is given a
policy: it checks (or casts) the arguments before the call and reviews each
new state after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._caches import Cache
from ._cast import cast_back
from ._compare import Verdict
from ._delivery import deliver
from ._errors import CASTABLE_KINDS, Mismatch, Report
from ._nnx import as_tree, is_graph_node
from ._patterns import Pattern, path_segments, root_segments
from ._plan import argument_names
from ._signature import LeafSignature, NotALeafError

_tree = jax.tree_util

__all__ = ["Governance", "Policy", "PolicyRule", "as_policy"]


@dataclasses.dataclass(frozen=True)
class PolicyRule:
    """One rule of a `Policy`: leaves whose path matches `pattern` have `dtype`."""

    pattern: Pattern
    dtype: np.dtype

    @property
    def text(self) -> str:
        return self.pattern.text

    def target(self) -> np.dtype:
        """The dtype this rule asks for now (`float64` is `float32` while x64 is off)."""
        return np.dtype(jax.dtypes.canonicalize_dtype(self.dtype))


def _floating_dtype(pattern: str, value: Any) -> np.dtype:
    try:
        dtype = np.dtype(jax.numpy.dtype(value))
    except (TypeError, ValueError):
        raise ValueError(
            f"Policy rule {pattern!r}: {value!r} is not a dtype; give a floating dtype "
            'by name or value ("bfloat16", jnp.float32).'
        ) from None
    if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        raise ValueError(
            f"Policy rule {pattern!r}: {dtype} is not a floating dtype. A policy governs "
            "floating leaves only (float16, bfloat16, float32, float64, ...); integer, "
            "bool and complex leaves keep their types through the invariant."
        )
    return dtype


class Policy:
    """The dtypes that the floating leaves of a state (or of other arguments) should have.

    Rules map a path pattern to a floating dtype. Patterns match the paths
    that reports print, segment by segment (`opt_state[0].mu['w']` is
    `opt_state`, `0`, `mu`, `w`): `*` matches one segment, `**` any number
    (none included), `*` and `?` also work inside a segment (`layer_*`), and
    a pattern that starts with `re:` is a regular expression matched
    (fullmatch) against the segments joined by `/`. Rules are tried in the
    order written; the first that matches a leaf wins. Only floating leaves
    are governed.

    **Arguments:**

    - `rules`: a mapping, or a list of `(pattern, dtype)` pairs; a dtype is a
      name (`"bfloat16"`) or a dtype (`jnp.float32`).

    **Raises:**

    `ValueError` for a malformed pattern or a dtype that is not floating;
    `TypeError` for rules of another form.

    !!! Example
        ```python
        import jax.numpy as jnp
        import jax_dtypeguard as dg

        policy = dg.Policy({"opt_state.**.nu.**": "float32", "params.**": "bfloat16"})
        state = {"mu": jnp.zeros(3, jnp.bfloat16), "nu": jnp.zeros(3, jnp.bfloat16)}
        state = policy.cast(state, root="opt_state")
        assert state["nu"].dtype == jnp.float32 and state["mu"].dtype == jnp.bfloat16
        ```
    """

    def __init__(self, rules: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        if isinstance(rules, Policy):
            self.rules: tuple[PolicyRule, ...] = rules.rules
        else:
            self.rules = tuple(
                PolicyRule(Pattern.parse(pattern), _floating_dtype(pattern, dtype))
                for pattern, dtype in _pairs(rules)
            )
        self._layouts = Cache(256)

    def __repr__(self) -> str:
        inner = ", ".join(f"{rule.text!r}: {rule.dtype.name!r}" for rule in self.rules)
        return f"Policy({{{inner}}})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.rules == other.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def rule_for(self, segments: Sequence[str]) -> PolicyRule | None:
        """The first rule whose pattern matches a leaf's path segments, or None."""
        for rule in self.rules:
            if rule.pattern.matches(segments):
                return rule
        return None

    def layout(self, tree: Any, root: str) -> tuple[list[Any], Layout]:
        """`tree`'s leaves, and which of them the rules govern (cached per tree structure)."""
        leaves, treedef = _tree.tree_flatten(tree)
        key = (root, treedef)
        try:
            return leaves, self._layouts[key]
        except (KeyError, TypeError):
            pass
        layout = Layout.of(self, tree, root)
        self._layouts.remember(key, layout)
        return leaves, layout

    def check(self, tree: Any, *, root: str) -> list[Mismatch]:
        """The governed leaves of `tree` (paths start with `root`) that break the policy.

        Rules that match no leaf of `tree` are ignored. Works on arrays,
        tracers and `jax.ShapeDtypeStruct`s.

        **Returns:**

        One `Mismatch` (kind `"dtype"`, with its `rule`) per leaf whose dtype is
        not its rule's, or that is weak.
        """
        leaves, layout = self.layout(as_tree(tree), _check_root(root))
        return [m for _, m, _ in layout.breaches(leaves, side=None)]

    def cast(self, tree: Any, *, root: str) -> Any:
        """`tree` with each governed leaf cast to its rule's dtype (strong): one conversion
        per leaf that breaks the policy, none for the others.

        Rules that match no leaf of `tree` are ignored, so a policy written for
        a whole step casts its `opt_state` alone. Works eagerly and traced.
        """
        tree_in = as_tree(tree)
        leaves, layout = self.layout(tree_in, _check_root(root))
        casts = [(index, target) for index, _, target in layout.breaches(leaves, side=None)]
        return cast_back(tree_in, casts)


def _check_root(root: object) -> str:
    if not isinstance(root, str) or not root:
        raise TypeError(
            f'root must be the name the tree\'s paths start with (root="opt_state"); got {root!r}.'
        )
    return root


def _pairs(rules: Any) -> list[tuple[str, Any]]:
    pairs = list(rules.items()) if isinstance(rules, Mapping) else None
    if pairs is None and not isinstance(rules, (str, bytes)):
        try:
            pairs = [tuple(pair) for pair in rules]
        except TypeError:
            pairs = None
    if pairs is None or not all(len(p) == 2 and isinstance(p[0], str) for p in pairs):
        raise TypeError(
            "Policy takes a mapping from path patterns to floating dtypes, or a list of "
            f'(pattern, dtype) pairs, e.g. Policy({{"params.**": "bfloat16"}}); got {rules!r:.80}.'
        )
    return pairs  # type: ignore[return-value]


def as_policy(value: Any) -> Policy | None:
    """`policy=` as a `Policy`: a `Policy`, its rules (a mapping or pairs), or None."""
    if value is None or isinstance(value, Policy):
        return value
    return Policy(value)


def _is_floating(signature: LeafSignature) -> bool:
    return signature.python_scalar in (None, "float") and jax.numpy.issubdtype(
        signature.dtype, jax.numpy.floating
    )


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which leaves of one tree structure the rules govern.

    `governed`: `(leaf index, rule, path)` per leaf that a rule matches;
    `shadowed`: per rule that matches a leaf another rule governs, the first such rule.
    """

    governed: tuple[tuple[int, PolicyRule, str], ...]
    paths: frozenset[str] = frozenset()  # of the governed leaves
    shadowed: Mapping[PolicyRule, PolicyRule] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, policy: Policy, tree: Any, root: str) -> Layout:
        prefix = root_segments(root)
        governed, shadowed = [], {}
        for index, (keypath, _) in enumerate(_tree.tree_flatten_with_path(tree)[0]):
            segments = prefix + path_segments(keypath)
            first = None
            for rule in policy.rules:
                if rule.pattern.matches(segments):
                    if first is None:
                        first = rule
                    else:
                        shadowed.setdefault(rule, first)
            if first is not None:
                governed.append((index, first, root + _tree.keystr(keypath)))
        paths = frozenset(path for _, _, path in governed)
        return cls(tuple(governed), paths, shadowed)

    def breaches(
        self, leaves: Sequence[Any], side: str | None
    ) -> list[tuple[int, Mismatch, LeafSignature]]:
        """`(leaf index, mismatch, the leaf's type under the policy)` per governed floating
        leaf whose type is not its rule's (dtype, strong)."""
        found = []
        targets: dict[int, np.dtype] = {}  # each rule's dtype, read once per call, by id
        for index, rule, path in self.governed:
            target = targets.get(id(rule))
            if target is None:
                target = targets[id(rule)] = rule.target()
            leaf = leaves[index]
            aval = getattr(leaf, "aval", None)  # arrays and tracers: the usual case
            if aval is not None and aval.dtype == target and not aval.weak_type:
                continue
            try:
                got = LeafSignature.of(leaf)
            except NotALeafError:
                continue
            if not _is_floating(got):
                continue
            wanted = got._replace(dtype=target, weak_type=False, python_scalar=None)
            if got == wanted:
                continue
            mismatch = Mismatch(
                path,
                "dtype",
                str(wanted),
                str(got),
                expected_type=wanted,
                got_type=got,
                castable=True,
                rule=rule.text,
                side=side,  # type: ignore[arg-type]
            )
            found.append((index, mismatch, wanted))
        return found


# --------------------------------------------------------------------------------------------
# What a guard holds: the policy applied to one function's arguments and states


@dataclasses.dataclass
class _Argument:
    name: str
    value: Any
    slot: str | None  # "0", "key": where it is among the call's arguments; None: a default
    state: bool
    graph_node: bool = False  # a Flax NNX object, updated in place


class Governance:
    """A `Policy` applied to a guarded function: what the guard calls before and after it.

    - `enter(guard, mode, args, kwargs)`: before the call. Checks every
      governed argument; an input state that breaks the policy is reported
      in every mode (casting it would compile the step again); other
      arguments are cast in cast mode. Returns the arguments to call with.
    - `review(name, state_out, verdict)`: after the call, for each state.
      Returns `verdict` with the state's governed leaves judged against the
      policy instead of against the input (to which they are equal when the
      input holds the policy).

    **Fields:** `policy`; `names`, the names of the positional arguments
    where they are not the function's parameters' (`invariant`'s `update`);
    `remedy`, the fix a report of a broken input state names besides
    `policy.cast` (Optax: `invariant`'s `init`).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        names: Sequence[str] | None = None,
        remedy: str | None = None,
    ) -> None:
        self.policy = policy
        self.names = tuple(names) if names is not None else None
        self.remedy = remedy
        self._validated = False
        self._graph_nodes: set[str] = set()

    def _arguments(
        self, guard: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[_Argument]:
        arguments: list[_Argument] = []
        taken: set[str] = set()
        for parameter in guard.plan.states:
            found, value = parameter.find(args, kwargs)
            if not found:
                continue
            slots = parameter.slots(args, kwargs)
            taken.update(slots)
            slot = slots[0] if len(slots) == 1 and not parameter.operands else None
            graph_node = is_graph_node(value)
            arguments.append(_Argument(parameter.name, as_tree(value), slot, True, graph_node))
        names = (
            list(self.names or ()) + argument_names(guard.fn, len(args))[len(self.names or ()) :]
        )
        for position, value in enumerate(args):
            if str(position) not in taken:
                arguments.append(_Argument(names[position], as_tree(value), str(position), False))
        for key, value in kwargs.items():
            if key not in taken:
                arguments.append(_Argument(key, as_tree(value), key, False))
        return arguments

    def _validate(self, guard: Any, arguments: list[_Argument]) -> None:
        """Every rule must govern a leaf: one that matches none is a typo, one whose every
        leaf an earlier rule governs is written after a more general rule."""
        layouts = [self.policy.layout(a.value, a.name)[1] for a in arguments]
        governing = {rule for layout in layouts for _, rule, _ in layout.governed}
        for rule in self.policy.rules:
            if rule in governing:
                continue
            earlier = next((lay.shadowed[rule] for lay in layouts if rule in lay.shadowed), None)
            if earlier is not None:
                raise ValueError(
                    f"{guard.name}: the policy rule {rule.text!r} governs no leaf: each leaf "
                    f"it matches is governed by the earlier rule {earlier.text!r} (the first "
                    "rule that matches wins). Write the specific rule before the general "
                    "one, or drop it."
                )
            names = ", ".join(a.name for a in arguments) or "none"
            raise ValueError(
                f"{guard.name}: the policy rule {rule.text!r} matches no leaf of the "
                f"function's arguments ({names}). Paths start with the argument's name "
                "(opt_state.**.nu.**); check the rule for a typo, or drop it."
            )
        self._validated = True

    def enter(
        self, guard: Any, mode: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments to call the function with, after checking them against the policy."""
        __tracebackhide__ = True
        arguments = self._arguments(guard, args, kwargs)
        if not self._validated:
            self._validate(guard, arguments)
        self._graph_nodes = {a.name for a in arguments if a.graph_node}
        state_breaches: list[Mismatch] = []
        other_breaches: list[Mismatch] = []
        casts: dict[str, Any] = {}
        for argument in arguments:
            leaves, layout = self.policy.layout(argument.value, argument.name)
            breaches = layout.breaches(leaves, side="input")
            if not breaches:
                continue
            if argument.state:
                state_breaches += [m for _, m, _ in breaches]
                continue
            other_breaches += [m for _, m, _ in breaches]
            if mode == "cast" and argument.slot is not None:
                targets = [(index, target) for index, _, target in breaches]
                casts[argument.slot] = cast_back(argument.value, targets)
        if state_breaches or (other_breaches and mode != "cast"):
            reported = state_breaches + (other_breaches if mode != "cast" else [])
            # A broken input state is raised in every mode: warn mode too.
            report_mode = "warn" if mode == "warn" and not state_breaches else "check"
            self._deliver(guard, reported, report_mode, mode)
        if not casts:
            return args, kwargs
        args = tuple(casts.get(str(i), value) for i, value in enumerate(args))
        kwargs = {key: casts.get(key, value) for key, value in kwargs.items()}
        return args, kwargs

    def _deliver(self, guard: Any, mismatches: list[Mismatch], report_mode: str, mode: str) -> None:
        __tracebackhide__ = True
        name, location = guard.described
        states = [m for m in mismatches if _is_state_path(m.path, guard.plan.names)]
        fix = _input_fix(states, mismatches, guard.plan.names, self._graph_nodes, self.remedy)
        report = Report(
            name,
            location,
            tuple(mismatches),
            report_mode,
            strict=guard.settings.strict(mode),
            states=tuple(guard.plan.names),
            what="was given arguments that break its dtype policy",
            hint=f"Hint: {fix}.",
        )
        deliver(report, raised_by=guard)

    def review(self, name: str, state_out: Any, verdict: Verdict) -> Verdict:
        """`verdict` with the governed leaves of `state_out` judged against the policy."""
        leaves, layout = self.policy.layout(state_out, name)
        if not layout.governed:
            return verdict
        breaches = layout.breaches(leaves, side="output")
        superseded = {
            m for m in verdict.mismatches if m.kind in CASTABLE_KINDS and m.path in layout.paths
        }
        if not breaches and not superseded:
            return verdict
        policy_mismatches = tuple(m for _, m, _ in breaches)
        kept = tuple(m for m in verdict.mismatches if m not in superseded)
        uncastable = tuple(m for m in verdict.uncastable if m not in superseded)
        # A leaf that also changed shape (or kind) keeps its uncastable report.
        blocked = {m.path for m in uncastable}
        castable = {index: target for index, target in verdict.castable}
        for index, mismatch, target in breaches:
            if mismatch.path in blocked:
                castable.pop(index, None)
            else:
                castable[index] = target
        return Verdict(kept + policy_mismatches, tuple(sorted(castable.items())), uncastable)


def _is_state_path(path: str, names: Sequence[str]) -> bool:
    return any(path == n or path.startswith((n + ".", n + "[")) for n in names)


def _input_fix(
    states: list[Mismatch],
    mismatches: list[Mismatch],
    names: Sequence[str],
    graph_nodes: set[str],
    remedy: str | None,
) -> str:
    parts = []
    if states:
        root = next(n for n in names if _is_state_path(states[0].path, [n]))
        cast = f"policy.cast({root}, root={root!r})"
        if root in graph_nodes:
            cast = f"nnx.update({root}, policy.cast(nnx.state({root}), root={root!r}))"
        text = (
            "a state must hold the policy before the call (casting it here would compile "
            f"the step again): build it with `{cast}`"
        )
        if remedy:
            text += f", {remedy}"
        parts.append(text)
    if len(states) < len(mismatches):
        parts.append(
            "cast the other arguments before the call (`policy.cast(tree, root=name)`), "
            'or use mode="cast", which casts them on entry'
        )
    return "; ".join(parts)


def build_state(policy: Policy, init: Callable[[Any], Any], params: Any, *, root: str) -> Any:
    """`init(params)` with its governed leaves in the policy's dtypes.

    Where the policy widens a leaf (a bfloat16 `nu` made float32), the leaf's
    value comes from `init` run on params widened to the policy's widest
    dtype, so that a value `init` derives in the params' dtype is not rounded
    first (Optax's `inject_hyperparams` stores `b2=0.999` in it: `1.0` in
    bfloat16).
    """
    tree = as_tree(init(params))
    leaves, treedef = _tree.tree_flatten(tree)
    _, layout = policy.layout(tree, root)
    breaches = layout.breaches(leaves, side=None)
    if not breaches:
        return tree
    widest = max((target.dtype for _, _, target in breaches), key=lambda d: d.itemsize)
    widened = _widened(params, widest)
    if widened is not None:
        wide_leaves, wide_treedef = _tree.tree_flatten(as_tree(init(widened)))
        if wide_treedef == treedef:
            for index, _, target in breaches:
                if getattr(wide_leaves[index], "shape", None) == target.shape:
                    leaves[index] = wide_leaves[index]
            tree = _tree.tree_unflatten(treedef, leaves)
    return policy.cast(tree, root=root)


def _widened(params: Any, dtype: np.dtype) -> Any:
    """`params` with floating array leaves narrower than `dtype` cast to it; None if none is."""
    changed = False

    def widen(leaf: Any) -> Any:
        nonlocal changed
        try:
            signature = LeafSignature.of(leaf)
        except NotALeafError:
            return leaf
        if (
            signature.python_scalar is None
            and jax.numpy.issubdtype(signature.dtype, jax.numpy.floating)
            and signature.dtype.itemsize < dtype.itemsize
        ):
            changed = True
            return jax.numpy.asarray(leaf, dtype)
        return leaf

    widened = _tree.tree_map(widen, params)
    return widened if changed else None
