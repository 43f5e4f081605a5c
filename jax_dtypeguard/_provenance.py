"""Where did a dtype or weak_type drift come from? (computed only on report)

When a drift is about to be reported, the function is traced once more, into
a jaxpr, on abstract versions of its array arguments. For each drifting leaf
the walk starts at the jaxpr output that holds it and goes back toward the
inputs, to the first equation whose result departs from the input leaf's
type. Equations that the input leaf flows into (its *lineage*) are preferred:
the reader wants the line where their state changed type, and which other
argument made it change. Nested jaxprs (`jit`, `cond` branches, `while` and
`scan` bodies, `custom_jvp`/`custom_vjp` calls, `checkpoint`) are walked as
if inlined. The rules that decide which equation is blamed, and which argument
named, are `_blame`'s; which values the input leaf flows into, `_lineage`'s.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax

from . import _compat, _config
from ._blame import argument_to_name, before_promotion, blame, departs_from
from ._call_site import equation_location
from ._compat import is_literal
from ._errors import Mismatch, Origin
from ._lineage import Deadline, Frame, Lineage, OutOfTime, output_sources
from ._plan import StateParameter, argument_names
from ._signature import ARRAY_TYPES, LeafSignature, is_static

_tree = jax.tree_util
_KINDS = frozenset({"dtype", "weak_type"})
# Seconds the walks of one report may take (tracing excluded); past it, no origin.
_TIME_LIMIT = 2.0


def explain(
    fn: Callable[..., Any],
    parameter: StateParameter,
    out: int | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    mismatches: list[Mismatch],
) -> list[Mismatch]:
    """`mismatches` with `origin` filled in where it can be found.

    Never raises: a function that fails when traced again, or a walk past its
    time limit, leaves the mismatches as they were. Anything else is a bug or a
    JAX change (`tests/test_compat.py` pins the JAX access): it is warned about,
    and the report still goes out.
    """
    if not any(m.kind in _KINDS for m in mismatches):
        return mismatches
    try:
        traced = _Traced.of(fn, parameter, out, tuple(args), dict(kwargs))
        return mismatches if traced is None else _origins(traced, parameter.name, mismatches)
    except OutOfTime:
        return mismatches
    except Exception as error:  # a missing origin must never hide the report itself
        warnings.warn(
            f"jax_dtypeguard could not look for where the drift began ({type(error).__name__}: "
            f"{error}); the report has no origins. Please report this, with JAX "
            f"{jax.__version__}.",
            RuntimeWarning,
            stacklevel=2,
        )
        return mismatches


def _origins(traced: _Traced, root: str, mismatches: list[Mismatch]) -> list[Mismatch]:
    """`mismatches`, each dtype or weak_type drift of the state `root` with its origin."""
    wanted = [m for m in mismatches if m.kind in _KINDS and m.path.startswith(root)]
    paths = {m.path[len(root) :] for m in wanted}
    # Lineage bits only for the drifting leaves: one bit per state leaf would make
    # every mask as wide as the state, quadratic memory on wide states.
    lineage = {p: i for p, i in traced.state_invars.items() if p in paths}
    search = _OriginSearch(traced.jaxpr.jaxpr, lineage, _TIME_LIMIT)
    explained = []
    for m in mismatches:
        origin = traced.origin(search, m.path[len(root) :], m.kind) if m in wanted else None
        explained.append(m if origin is None else dataclasses.replace(m, origin=origin))
    return explained


# --------------------------------------------------------------------------------------------
# Tracing the function again, on abstract arguments


def _abstract(leaf: Any) -> Any:
    if isinstance(leaf, _compat.Tracer):
        aval: Any = leaf.aval
        return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)
    return leaf


def _without_static(tree: Any) -> Any:
    """`tree` with its static leaves (functions, strings, objects) as `None`: not outputs
    of a jaxpr, and the keypaths of the other leaves stay as they were."""
    return _tree.tree_map(lambda leaf: None if is_static(leaf) else leaf, tree)


@dataclasses.dataclass
class _Traced:
    """The function's jaxpr and where the state's leaves are among its inputs and outputs."""

    jaxpr: Any  # ClosedJaxpr
    labels: list[str]  # per jaxpr input: the argument (and keypath) it stands for
    state_invars: dict[str, int]  # path below the state's name -> jaxpr input index
    state_signatures: dict[str, LeafSignature]  # path below the state's name -> input type
    outputs: dict[str, int]  # path below the state's name -> jaxpr output index

    @classmethod
    def of(
        cls,
        fn: Callable[..., Any],
        parameter: StateParameter,
        out: int | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _Traced | None:
        found, state = parameter.find(args, kwargs)
        if not found:
            return None
        # The traced leaves of the state: static ones (functions, objects) are constants.
        state_entries = [
            (_tree.keystr(p), leaf)
            for p, leaf in _tree.tree_flatten_with_path(state)[0]
            if not is_static(leaf)
        ]
        state_paths = [path for path, _ in state_entries]
        state_leaves = [leaf for _, leaf in state_entries]
        slots = parameter.slots(args, kwargs)
        if not slots and parameter.keyword is not None:  # the state is the parameter's default
            kwargs = {**kwargs, parameter.keyword: state}
            slots = (parameter.keyword,)
        names = argument_names(fn, len(args))
        slot_items = [(str(i), names[i], a) for i, a in enumerate(args)]
        slot_items += [(k, k, v) for k, v in kwargs.items()]
        flat = []  # per slot: (treedef, leaves, labels)
        for slot, name, value in slot_items:
            entries, treedef = _tree.tree_flatten_with_path(value)
            leaves = [leaf for _, leaf in entries]
            labels = [name + _tree.keystr(path) for path, _ in entries]
            is_state = slot in slots
            flat.append((treedef, leaves, labels, is_state))

        for keep_arrays_dynamic in (True, False):
            try:
                traced = cls._trace(fn, out, slot_items, flat, keep_arrays_dynamic)
            except Exception:  # the user's function: it may fail on abstract arguments
                continue
            jaxpr, labels, state_invar_list, outputs = traced
            if slots and len(state_invar_list) != len(state_paths):
                state_invar_list = []
            return cls(
                jaxpr,
                labels,
                dict(zip(state_paths, state_invar_list)),
                {p: LeafSignature.of(leaf) for p, leaf in zip(state_paths, state_leaves)},
                outputs,
            )
        return None

    @staticmethod
    def _trace(
        fn: Callable[..., Any],
        out: int | None,
        slot_items: list[tuple[str, str, Any]],
        flat: list[tuple[Any, list[Any], list[str], bool]],
        arrays_dynamic: bool,
    ) -> tuple[Any, list[str], list[int], dict[str, int]]:
        dynamic_values, labels, state_invars = [], [], []
        where = []  # (slot index, leaf index) of each dynamic value
        for s, (_, leaves, leaf_labels, is_state) in enumerate(flat):
            for i, leaf in enumerate(leaves):
                array = isinstance(leaf, ARRAY_TYPES)
                if is_state:
                    if not (array or isinstance(leaf, (bool, int, float, complex))):
                        continue
                    state_invars.append(len(dynamic_values))
                elif not (array and (arrays_dynamic or isinstance(leaf, _compat.Tracer))):
                    continue
                where.append((s, i))
                dynamic_values.append(_abstract(leaf))
                labels.append(leaf_labels[i])
        positional = sum(1 for slot, _, _ in slot_items if slot.isdigit())

        def flat_fn(*dynamic: Any) -> Any:
            leaves = [list(f[1]) for f in flat]
            for (s, i), value in zip(where, dynamic):
                leaves[s][i] = value
            values = [_tree.tree_unflatten(f[0], ls) for f, ls in zip(flat, leaves)]
            keywords = {
                slot: v for (slot, _, _), v in zip(slot_items[positional:], values[positional:])
            }
            if arrays_dynamic:
                return _without_static(fn(*values[:positional], **keywords))
            # Concrete arguments stay concrete, for Python control flow on them.
            with jax.ensure_compile_time_eval():
                return _without_static(fn(*values[:positional], **keywords))

        token = _config.retracing.set(True)
        try:
            closed, shape = jax.make_jaxpr(flat_fn, return_shape=True)(*dynamic_values)
        finally:
            _config.retracing.reset(token)
        offset = 0
        state_out = shape
        if out is not None:
            index = out % len(shape)
            offset = sum(len(_tree.tree_leaves(x)) for x in list(shape)[:index])
            state_out = shape[index]
        entries = _tree.tree_flatten_with_path(state_out)[0]
        outputs = {_tree.keystr(path): offset + j for j, (path, _) in enumerate(entries)}
        return closed, labels, state_invars, outputs

    def origin(self, search: _OriginSearch, path: str, kind: str) -> Origin | None:
        """Where the leaf at `path` (below the state's name) first left its input type."""
        output = self.outputs.get(path)
        signature = self.state_signatures.get(path)
        if output is None or signature is None:
            return None
        invar = self.state_invars.get(path)
        departs = departs_from(signature.dtype, signature.weak_type, kind)
        found = search.locate(search.lineage.root.jaxpr.outvars[output], departs, invar)
        if found is None:
            return None
        reached = [a for a in search.arguments(found) if a != invar]
        argument = argument_to_name(self.labels, reached, path, replaced=found.replaced)
        file, line, function = _location(found) or (None, None, None)
        label = None if argument is None else self.labels[argument]
        return Origin(found.eqn.primitive.name, file, line, function, label)


def _location(found: _Found) -> tuple[str, int, str] | None:
    """The user's (or a library's) line of the equation `found`. A jaxpr traced inside
    `jit` records frames up to the jit only: then the enclosing equations say where."""
    eqn, frame = found.eqn, found.frame
    while eqn is not None and frame is not None:
        location = equation_location(eqn)
        if location is not None:
            return location
        eqn, frame = frame.eqn, frame.parent
    return None


# --------------------------------------------------------------------------------------------
# Walking the jaxpr


@dataclasses.dataclass(frozen=True)
class _Found:
    """An equation that introduced the drift; `argument` or `blamed` say what came in."""

    eqn: Any
    frame: Frame
    argument: int | None = None  # a top-level jaxpr input
    blamed: tuple[Any, ...] = ()  # operands (in `frame`) to trace back to arguments
    replaced: bool = False  # the output leaf does not depend on the input leaf


@dataclasses.dataclass(frozen=True)
class _BackwardWalk:
    """One walk from a drifting output back toward the inputs: what departs from the
    input leaf's type, the leaf's lineage bit (0: none), and what to look at next (the
    last pushed first)."""

    departs: Callable[[Any], bool]
    bit: int
    stack: list[Any]


class _OriginSearch:
    """Backward walks from drifting outputs to where they left the input leaf's type.

    The jaxpr's `Lineage` (which input leaves each value depends on) is built
    once and shared by the walks of every drifting leaf, as is their deadline.
    """

    def __init__(self, jaxpr: Any, state_invars: dict[str, int], seconds: float) -> None:
        self.deadline = Deadline(seconds)
        self.lineage = Lineage(jaxpr, state_invars, self.deadline)

    def locate(self, atom: Any, departs: Callable[[Any], bool], invar: int | None) -> _Found | None:
        """The equation that introduced the departure of the top-level output `atom`
        (depth first, the input leaf `invar`'s lineage first)."""
        stack: list[Any] = [(self.lineage.root, atom, None)]
        walk = _BackwardWalk(departs, self.lineage.bit(invar), stack)
        seen: set[tuple[int, Any]] = set()
        while stack:
            item = stack.pop()
            if isinstance(item, _Found):
                return item
            frame, atom, consumer = item
            self.deadline.tick()
            if is_literal(atom) or atom in frame.consts:
                if consumer is not None:
                    return _Found(*consumer)
                continue
            key = (id(frame), atom)
            if key in seen:
                continue
            seen.add(key)
            position = frame.invars.get(atom)
            if position is not None:
                if frame.parent is None:
                    if consumer is not None:
                        return _Found(*consumer, argument=position)
                elif position not in frame.blocked:
                    stack.append((frame.parent, frame.inputs[position], consumer))
                continue
            produced = frame.producer.get(atom)
            if produced is not None:
                eqn, k = produced
                self.expand(walk, frame, eqn, k, atom, consumer)
        return None

    def expand(
        self, walk: _BackwardWalk, frame: Frame, eqn: Any, k: int, atom: Any, consumer: Any
    ) -> None:
        """Pushes what to look at next for output `k` (`atom`) of `eqn`."""
        nested = self.into_nested(frame, eqn, k, walk.departs)
        if nested is not None:
            walk.stack.extend((inner_frame, inner, consumer) for inner_frame, inner in nested)
            return
        bit = walk.bit
        from_leaf = (lambda x: bool(frame.mask(x) & bit)) if bit else None
        verdict = blame(eqn, atom, walk.departs, frame.index, from_leaf)
        if verdict.here:
            found = _Found(eqn, frame, blamed=verdict.blamed, replaced=verdict.replaced)
            walk.stack.append(found)
        for x in reversed(verdict.follow):
            walk.stack.append((frame, x, (eqn, frame)))

    def into_nested(
        self, frame: Frame, eqn: Any, k: int, departs: Callable[[Any], bool]
    ) -> list[tuple[Frame, Any]] | None:
        """Where output `k` of a call, `cond` or loop equation comes from, as `(frame, atom)`
        to look at (the last first): the nested jaxprs whose output departs; None for
        other equations."""
        sources = output_sources(eqn, k)
        if not sources:
            return None
        steps: list[tuple[Frame, Any]] = []
        for source in reversed(sources):
            nested, blocked = source.nested, frozenset()
            enter = departs(source.outvar.aval)
            if source.carry is not None:
                # The carry came in drifted, unless the body changed it (only a weak type
                # can change around a loop): then the drift is in the body.
                steps.append((frame, eqn.invars[nested.first + source.carry]))
                blocked = frozenset(nested.carries)
                enter = enter and not departs(nested.jaxpr.invars[source.carry].aval)
            if enter:
                steps.append((self.lineage.frame(frame, eqn, nested, blocked), source.outvar))
        return steps

    def arguments(self, found: _Found) -> list[int]:
        """The top-level inputs the drift came from, in the order the walk reaches them."""
        if found.argument is not None:
            return [found.argument]
        reached: list[int] = []
        for atom in found.blamed:
            atom = before_promotion(atom, found.frame.index)
            dtype = getattr(getattr(atom, "aval", None), "dtype", None)
            if dtype is None:
                continue
            same = lambda aval, dtype=dtype: getattr(aval, "dtype", None) == dtype  # noqa: E731
            for position in self.reach(found.frame, atom, same):
                if position not in reached:
                    reached.append(position)
        return reached

    def reach(self, frame: Frame, atom: Any, same: Callable[[Any], bool]) -> list[int]:
        """Every top-level input that `atom` depends on through values for which `same` holds."""
        reached: list[int] = []
        stack: list[tuple[Frame, Any]] = [(frame, atom)]
        seen: set[tuple[int, Any]] = set()
        while stack:
            frame, atom = stack.pop()
            self.deadline.tick()
            if is_literal(atom) or atom in frame.consts or (id(frame), atom) in seen:
                continue
            seen.add((id(frame), atom))
            position = frame.invars.get(atom)
            if position is not None:
                if frame.parent is None:
                    reached.append(position)
                elif position not in frame.blocked:
                    stack.append((frame.parent, frame.inputs[position]))
                continue
            produced = frame.producer.get(atom)
            if produced is None:
                continue
            eqn, k = produced
            nested = self.into_nested(frame, eqn, k, _always)
            if nested is not None:
                stack.extend(nested)
                continue
            stack.extend((frame, x) for x in reversed(eqn.invars) if same(getattr(x, "aval", None)))
        return reached


def _always(aval: Any) -> bool:
    return True


def output_origin(
    jaxpr: Any, output: int, expected: LeafSignature, kind: str, invar: int | None = None
) -> Origin | None:
    """Where output `output` of a `ClosedJaxpr` first departs from the type `expected`
    (dtype, or dtype and weak_type for `kind="weak_type"`): the equation and its user line.

    For a value a jitted function returned that a later call passed back in
    another type than before (the recompile explainer). `invar`: the jaxpr input
    the value stands in for (the same leaf of the state it was given), whose
    equations are preferred, as in reports. `None` where it cannot be found in
    time, or the output does not depart.
    """
    try:
        lineage = {"": invar} if invar is not None else {}
        search = _OriginSearch(jaxpr.jaxpr, lineage, _TIME_LIMIT)
        departs = departs_from(expected.dtype, expected.weak_type, kind)
        outvar = search.lineage.root.jaxpr.outvars[output]
        if not departs(getattr(outvar, "aval", None)):
            return None
        found = search.locate(outvar, departs, invar)
    except (OutOfTime, IndexError):
        return None
    if found is None:
        return None
    file, line, function = _location(found) or (None, None, None)
    return Origin(found.eqn.primitive.name, file, line, function)
