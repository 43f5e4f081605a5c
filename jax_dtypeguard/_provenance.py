"""Where did a dtype or weak_type drift come from? (computed only on report)

When a drift is about to be reported, the function is traced once more, into
a jaxpr, on abstract versions of its array arguments. For each drifting leaf
the walk starts at the jaxpr output that holds it and goes back toward the
inputs, to the first equation whose result departs from the input leaf's
type. Equations that the input leaf flows into (its *lineage*) are preferred:
the reader wants the line where their state changed type, and which other
argument made it change. Nested jaxprs (`jit`, `cond` branches, `while` and
`scan` bodies, `custom_jvp`/`custom_vjp` calls, `checkpoint`) are walked as
if inlined.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import _compat, _config
from ._call_site import code_directories
from ._compat import cond_branches, is_literal, loop_layout
from ._errors import Mismatch, Origin, short_path
from ._lineage import Frame, Lineage, OutOfTime, call_jaxpr
from ._plan import StateParameter, argument_names
from ._signature import LeafSignature, category, is_static

_tree = jax.tree_util
_KINDS = frozenset({"dtype", "weak_type"})
# Seconds the walks of one report may take (tracing excluded); past it, no origin.
_TIME_LIMIT = 2.0
_ARRAY_TYPES = (jax.Array, _compat.Tracer, np.ndarray, np.generic)


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
    walker = _Search(traced.jaxpr.jaxpr, lineage, _TIME_LIMIT)
    explained = []
    for m in mismatches:
        origin = traced.origin(walker, m.path[len(root) :], m.kind) if m in wanted else None
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
                array = isinstance(leaf, _ARRAY_TYPES)
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

    def choose(self, reached: list[int], path: str, only: bool) -> int | None:
        """The argument to name: the one at the drifting leaf's own keypath (`updates['w']`
        for `opt_state['w']`), else the first reached; for a replaced leaf, else the only one.
        """
        for position in reached:
            label = self.labels[position]
            if path and label.endswith(path) and not label[: -len(path)].endswith(("[", ".")):
                return position
        if only:
            return reached[0] if len(reached) == 1 else None
        return reached[0] if reached else None

    def origin(self, walker: _Search, path: str, kind: str) -> Origin | None:
        """Where the leaf at `path` (below the state's name) first left its input type."""
        output = self.outputs.get(path)
        signature = self.state_signatures.get(path)
        if output is None or signature is None:
            return None
        invar = self.state_invars.get(path)
        departs = _departs_from(signature.dtype, signature.weak_type, kind)
        found = walker.locate(walker.root, walker.root.jaxpr.outvars[output], departs, invar)
        if found is None:
            return None
        reached = [a for a in walker.arguments(found) if a != invar]
        argument = self.choose(reached, path, only=found.replaced)
        # A jaxpr traced inside `jit` records frames up to the jit only: then the
        # enclosing equations say where.
        location, eqn, frame = None, found.eqn, found.frame
        while location is None and eqn is not None and frame is not None:
            location = user_location(eqn)
            eqn, frame = frame.eqn, frame.parent
        file, line, function = location or (None, None, None)
        label = None if argument is None else self.labels[argument]
        return Origin(found.eqn.primitive.name, file, line, function, label)


@functools.cache
def is_user_file(path: str) -> bool:
    """Not JAX's, not this package's, not the stdlib's (packages installed under it are)."""
    if path.startswith("<frozen"):
        return False
    internal, stdlib, installed = code_directories()
    path = os.path.abspath(path)
    if path.startswith(internal):
        return False
    return not path.startswith(stdlib) or path.startswith(installed)


def user_location(eqn: Any) -> tuple[str, int, str] | None:
    """The innermost frame of the user's (or a library's) code that made `eqn`."""

    for file, line, function in _compat.source_frames(eqn.source_info):
        if is_user_file(file):
            return short_path(file), line, function
    return None


# --------------------------------------------------------------------------------------------
# Walking the jaxpr


def _departs_from(dtype: np.dtype, weak_type: bool, kind: str) -> Callable[[Any], bool]:
    if kind == "dtype":
        return lambda aval: getattr(aval, "dtype", dtype) != dtype
    return lambda aval: (
        getattr(aval, "dtype", dtype) != dtype
        or bool(getattr(aval, "weak_type", weak_type)) != weak_type
    )


@dataclasses.dataclass(frozen=True)
class _Found:
    """An equation that introduced the drift; `argument` or `blame` say what came in."""

    eqn: Any
    frame: Frame
    argument: int | None = None  # a top-level jaxpr input
    blame: tuple[Any, ...] = ()  # (frame, atoms): other operands to trace back to an argument
    replaced: bool = False  # the output leaf does not depend on the input leaf


@dataclasses.dataclass(frozen=True)
class _Walk:
    """One backward walk: what departs from the input leaf's type, the leaf's lineage
    bit (0: none), and what to look at next (the last pushed first)."""

    departs: Callable[[Any], bool]
    bit: int
    stack: list[Any]


class _Search(Lineage):
    """Backward walks from drifting outputs to where they left the input leaf's type."""

    # -- the backward walk ----------------------------------------------------------------------

    def locate(
        self,
        frame: Frame,
        atom: Any,
        departs: Callable[[Any], bool],
        invar: int | None,
        consumer: tuple[Any, Frame] | None = None,
    ) -> _Found | None:
        """The equation that introduced the departure of `atom` (depth first, lineage first)."""
        bit = self.bits.get(invar, 0) if invar is not None else 0
        stack: list[Any] = [(frame, atom, consumer)]
        walk = _Walk(departs, bit, stack)
        seen: set[tuple[int, Any]] = set()
        while stack:
            item = stack.pop()
            if isinstance(item, _Found):
                return item
            frame, atom, consumer = item
            self.tick()
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
                self.expand(walk, frame, *produced, atom, consumer)
        return None

    def expand(self, walk: _Walk, frame: Frame, eqn: Any, k: int, atom: Any, consumer: Any) -> None:
        """Pushes what to look at next for output `k` of `eqn` (last pushed is looked at first)."""
        name = eqn.primitive.name
        if name == "cond":
            for jaxpr in reversed(cond_branches(eqn)):
                inner = jaxpr.outvars[k]
                if walk.departs(inner.aval):
                    sub = self.frame(frame, eqn, jaxpr, eqn.invars[1:], frozenset())
                    walk.stack.append((sub, inner, consumer))
            return
        if name in ("while", "scan"):
            layout = loop_layout(eqn)
            body, inputs = layout.body, eqn.invars[layout.skip :]
            consts, carries = layout.consts, layout.carries
            blocked = frozenset()
            inner = body.outvars[k]
            walk_body = walk.departs(inner.aval)
            if k < carries:
                # The carry came in drifted, unless the body changed it (only a weak type
                # can change around a loop): then the drift is in the body.
                walk.stack.append((frame, inputs[consts + k], consumer))
                blocked = frozenset(range(consts, consts + carries))
                walk_body = walk_body and not walk.departs(body.invars[consts + k].aval)
            if walk_body:
                walk.stack.append((self.frame(frame, eqn, body, inputs, blocked), inner, consumer))
            return
        sub = call_jaxpr(eqn)
        if sub is not None:
            inner = sub.outvars[k]
            walk.stack.append(
                (self.frame(frame, eqn, sub, eqn.invars, frozenset()), inner, consumer)
            )
            return
        self.expand_plain(walk, frame, eqn, atom)

    def expand_plain(self, walk: _Walk, frame: Frame, eqn: Any, atom: Any) -> None:
        out_dtype = atom.aval.dtype
        conversion = eqn.primitive.name == "convert_element_type"
        candidates: list[Any] = []
        for x in eqn.invars:
            aval = getattr(x, "aval", None)
            dtype = getattr(aval, "dtype", None)
            if dtype is None or not walk.departs(aval):
                continue
            if (category(dtype) != category(out_dtype)) if conversion else dtype != out_dtype:
                continue
            if not candidates or all(x is not c for c in candidates):
                candidates.append(x)
        if not candidates:
            walk.stack.append(_Found(eqn, frame))
            return
        if len(candidates) > 1:
            # A weak operand does not decide a promotion; values before constants (a value
            # may lead back to an argument); JAX's implicit promotion converts each operand
            # on the line that mixed them: such a conversion is not where the drift began.
            strong = [x for x in candidates if not getattr(x.aval, "weak_type", False)]
            candidates = sorted(strong or candidates, key=lambda x: self.constant(frame, x))
            # Newer JAX records Python-scalar literals as strong: a literal alone only
            # explains the conversion of a weak operand.
            values = sum(1 for x in candidates if not is_literal(x))
            promoted = [
                x
                for x in candidates
                if self.converted(frame, x) and (values > 1 or self.converted(frame, x, weak=True))
            ]
        else:
            promoted = []
        if walk.bit and not frame.mask(atom) & walk.bit:
            # The input leaf does not reach this value: the function replaced the leaf, and
            # this is the equation that wrote the value returned in its place.
            walk.stack.append(_Found(eqn, frame, blame=(frame, *candidates), replaced=True))
            return
        if walk.bit:
            others = tuple(x for x in candidates if not frame.mask(x) & walk.bit)
            walk.stack.append(_Found(eqn, frame, blame=(frame, *others) if others else ()))
            for x in reversed(candidates):
                if frame.mask(x) & walk.bit and all(x is not p for p in promoted):
                    walk.stack.append((frame, x, (eqn, frame)))
            return
        followed = [x for x in candidates if all(x is not p for p in promoted)]
        if not followed:
            walk.stack.append(_Found(eqn, frame, blame=(frame, *candidates)))
            return
        for x in reversed(followed):
            walk.stack.append((frame, x, (eqn, frame)))

    @staticmethod
    def constant(frame: Frame, atom: Any) -> bool:
        return is_literal(atom) or atom in frame.consts

    @staticmethod
    def converted(frame: Frame, atom: Any, weak: bool = False) -> bool:
        """Whether `atom` is a `convert_element_type` result (of a weak operand: `weak`)."""
        produced = None if is_literal(atom) else frame.producer.get(atom)
        if produced is None or produced[0].primitive.name != "convert_element_type":
            return False
        return not weak or bool(getattr(produced[0].invars[0].aval, "weak_type", False))

    def arguments(self, found: _Found) -> list[int]:
        """The top-level inputs the drift came from, in the order the walk reaches them."""
        if found.argument is not None:
            return [found.argument]
        if not found.blame:
            return []
        frame, *atoms = found.blame
        reached: list[int] = []
        for atom in atoms:
            produced = None if is_literal(atom) else frame.producer.get(atom)
            if produced is not None and produced[0].primitive.name == "convert_element_type":
                atom = produced[0].invars[0]  # look through JAX's promotion of the operand
            dtype = getattr(getattr(atom, "aval", None), "dtype", None)
            if dtype is None:
                continue
            same = lambda aval, dtype=dtype: getattr(aval, "dtype", None) == dtype  # noqa: E731
            for position in self.reach(frame, atom, same):
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
            self.tick()
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
            inner = self.inner(frame, eqn, k)
            if inner is not None:
                stack.extend(inner)
                continue
            stack.extend((frame, x) for x in reversed(eqn.invars) if same(getattr(x, "aval", None)))
        return reached

    def inner(self, frame: Frame, eqn: Any, k: int) -> list[tuple[Frame, Any]] | None:
        """Where output `k` of a call, branch or loop equation comes from; None for others."""
        walk = _Walk(lambda aval: True, 0, [])
        self.expand(walk, frame, eqn, k, eqn.outvars[k], None)
        if eqn.primitive.name not in ("cond", "while", "scan") and call_jaxpr(eqn) is None:
            return None
        return [(item[0], item[1]) for item in walk.stack if isinstance(item, tuple)]
