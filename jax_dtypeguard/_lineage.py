"""Lineage over a jaxpr: which state input leaves each value depends on.

Provenance prefers the equations the drifting input leaf flows into; this
module computes that flow forward, once per jaxpr (nested jaxprs of `jit`,
`cond`, `while`, `scan` and custom derivatives included, loop carries at
their fixpoint), and the frames a backward search walks in. How a call,
`cond` or loop equation's operands and outputs map onto its nested jaxprs is
said once, by `nested_jaxprs` and `output_sources`, for both directions.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ._compat import (
    CALL_JAXPR_PARAMS,
    cond_branches,
    is_literal,
    loop_layout,
    open_jaxpr,
)

_LOOPS = ("while", "scan")
# Passes over a loop body to reach the fixpoint of its carries' lineage.
_FIXPOINT_PASSES = 8


class OutOfTime(Exception):
    """The walks of one report took longer than their time limit."""


class Deadline:
    """The time limit the walks of one report share (checked every 256 steps)."""

    __slots__ = ("at", "steps")

    def __init__(self, seconds: float) -> None:
        self.at = time.perf_counter() + seconds
        self.steps = 0

    def tick(self) -> None:
        """Counts one step; raises `OutOfTime` past the limit."""
        self.steps += 1
        if not self.steps & 255 and time.perf_counter() > self.at:
            raise OutOfTime


# --------------------------------------------------------------------------------------------
# Nested jaxprs: how a call, `cond` or loop equation's operands and outputs map onto them


def call_jaxpr(eqn: Any) -> Any:
    """The jaxpr of a call-like equation whose inputs and outputs map one to one."""
    params = eqn.params
    if not params:
        return None
    for name in CALL_JAXPR_PARAMS:
        if name not in params:
            continue
        jaxpr = open_jaxpr(params[name])
        if (
            jaxpr is not None
            and len(jaxpr.invars) == len(eqn.invars)
            and len(jaxpr.outvars) == len(eqn.outvars)
        ):
            return jaxpr
    return None


@dataclasses.dataclass(frozen=True)
class Nested:
    """A jaxpr nested in an equation, and which of the equation's operands feed it.

    Its inputs are the equation's operands from `first` on. A loop body's
    inputs at `carries` go around the loop: its first `len(carries)` outputs
    come back to them, and are the loop's first outputs.
    """

    jaxpr: Any  # open Jaxpr
    first: int
    carries: range = range(0)


def nested_jaxprs(eqn: Any) -> list[Nested]:
    """The jaxprs of a `cond` (its branches), `while` or `scan` (its body) or call-like
    equation (`jit`, `custom_jvp_call`, `checkpoint`, ...); none for other equations."""
    name = eqn.primitive.name
    if name == "cond":
        return [Nested(branch, 1) for branch in cond_branches(eqn)]
    if name in _LOOPS:
        layout = loop_layout(eqn)
        carries = range(layout.consts, layout.consts + layout.carries)
        return [Nested(layout.body, layout.skip, carries)]
    jaxpr = call_jaxpr(eqn)
    return [] if jaxpr is None else [Nested(jaxpr, 0)]


@dataclasses.dataclass(frozen=True)
class OutputSource:
    """Where an equation's output comes from, in one nested jaxpr: that jaxpr's output
    `outvar`, and for a loop's carry also the body input `carry` it goes around in (its
    value before the loop is the equation's operand `nested.first + carry`)."""

    nested: Nested
    outvar: Any
    carry: int | None = None


def output_sources(eqn: Any, k: int) -> list[OutputSource]:
    """Where output `k` of a call, `cond` or loop equation comes from: one source per
    nested jaxpr (each branch of a `cond`); none for other equations.

    **Arguments:** `eqn`, a jaxpr equation; `k`, the index of one of its outputs.
    """
    sources = []
    for nested in nested_jaxprs(eqn):
        carry = nested.carries[k] if k < len(nested.carries) else None
        sources.append(OutputSource(nested, nested.jaxpr.outvars[k], carry))
    return sources


# --------------------------------------------------------------------------------------------
# Frames and the lineage masks


@dataclasses.dataclass(frozen=True)
class JaxprIndex:
    """What made each value of a jaxpr: `producer[var] = (eqn, k)` (its output `k`),
    `invars[var]` = input position, and its constants."""

    producer: dict[Any, tuple[Any, int]]
    invars: dict[Any, int]
    consts: frozenset[Any]

    @classmethod
    def of(cls, jaxpr: Any) -> JaxprIndex:
        producer = {}
        for eqn in jaxpr.eqns:
            for k, var in enumerate(eqn.outvars):
                producer[var] = (eqn, k)
        invars = {var: i for i, var in enumerate(jaxpr.invars)}
        return cls(producer, invars, frozenset(jaxpr.constvars))

    def is_constant(self, atom: Any) -> bool:
        """A literal, or one of the jaxpr's constants."""
        return is_literal(atom) or atom in self.consts

    def made_by(self, atom: Any) -> Any:
        """The equation whose output `atom` is; None for inputs, constants and literals."""
        produced = None if is_literal(atom) else self.producer.get(atom)
        return None if produced is None else produced[0]


class Frame:
    """One jaxpr being walked, and how its inputs connect to the enclosing one."""

    __slots__ = (
        "blocked",
        "consts",
        "eqn",
        "index",
        "inputs",
        "invars",
        "jaxpr",
        "masks",
        "parent",
        "producer",
    )

    def __init__(
        self,
        jaxpr: Any,
        parent: Frame | None,
        inputs: list[Any],
        blocked: frozenset[int],
        masks: dict[Any, int],
        index: JaxprIndex,
        eqn: Any = None,
    ) -> None:
        self.eqn = eqn  # the equation of `parent` whose jaxpr this is
        self.jaxpr = jaxpr
        self.parent = parent
        self.inputs = inputs  # the atoms of `parent` that its inputs are
        self.blocked = blocked  # inputs not followed out (a loop's carries, walked outside)
        self.masks = masks
        self.index = index
        self.producer, self.invars, self.consts = index.producer, index.invars, index.consts

    def mask(self, atom: Any) -> int:
        return 0 if is_literal(atom) else self.masks.get(atom, 0)


class Lineage:
    """Which state input leaves each value of a jaxpr depends on, as bit masks.

    Indexes, masks and frames are built once per jaxpr and shared by the
    walks of every drifting leaf.
    """

    def __init__(self, jaxpr: Any, state_invars: dict[str, int], deadline: Deadline) -> None:
        self.deadline = deadline
        self.indexes: dict[int, tuple[JaxprIndex, Any]] = {}  # the jaxpr keeps the id valid
        self.forwards: dict[tuple[int, tuple[int, ...]], Any] = {}
        self.kept: dict[int, Any] = {}  # the jaxprs of `forwards`, so that their ids stay valid
        self.frames: dict[tuple[int, ...], Frame] = {}
        self.bits = {invar: 1 << n for n, invar in enumerate(sorted(set(state_invars.values())))}
        in_masks = tuple(self.bits.get(i, 0) for i in range(len(jaxpr.invars)))
        masks = self.forward(jaxpr, in_masks)[0]
        self.root = Frame(jaxpr, None, [], frozenset(), masks, self.index(jaxpr))

    def bit(self, invar: int | None) -> int:
        """The lineage bit of the top-level input `invar` (0: none)."""
        return 0 if invar is None else self.bits.get(invar, 0)

    def index(self, jaxpr: Any) -> JaxprIndex:
        """The `JaxprIndex` of a jaxpr (built once per jaxpr)."""
        found = self.indexes.get(id(jaxpr))
        if found is None:
            found = self.indexes[id(jaxpr)] = (JaxprIndex.of(jaxpr), jaxpr)
        return found[0]

    def forward(
        self, jaxpr: Any, in_masks: tuple[int, ...]
    ) -> tuple[dict[Any, int], tuple[int, ...]]:
        """The masks of a jaxpr's values and of its outputs, given its inputs' masks."""
        key = (id(jaxpr), in_masks)
        found = self.forwards.get(key)
        if found is not None:
            return found
        masks = {var: m for var, m in zip(jaxpr.invars, in_masks) if m}
        get = masks.get
        for eqn in jaxpr.eqns:
            ins = tuple(0 if is_literal(v) else get(v, 0) for v in eqn.invars)
            if not any(ins):
                continue
            self.deadline.tick()
            for var, m in zip(eqn.outvars, self.forward_eqn(eqn, ins)):
                if m:
                    masks[var] = m
        outs = tuple(0 if is_literal(v) else get(v, 0) for v in jaxpr.outvars)
        self.forwards[key] = found = (masks, outs)
        self.kept[id(jaxpr)] = jaxpr
        return found

    def forward_eqn(self, eqn: Any, ins: tuple[int, ...]) -> tuple[int, ...]:
        """The masks of an equation's outputs, given its operands' masks."""
        if not nested_jaxprs(eqn):
            combined = 0
            for m in ins:
                combined |= m
            return (combined,) * len(eqn.outvars)
        outs = []
        inputs: dict[int, tuple[int, ...]] = {}  # per nested jaxpr: its inputs' masks
        for k in range(len(eqn.outvars)):
            mask = 0
            for source in output_sources(eqn, k):
                inside = inputs.get(id(source.nested.jaxpr))
                if inside is None:
                    inside = inputs[id(source.nested.jaxpr)] = self.nested_masks(source.nested, ins)
                masks = self.forward(source.nested.jaxpr, inside)[0]
                mask |= 0 if is_literal(source.outvar) else masks.get(source.outvar, 0)
                if source.carry is not None:
                    mask |= inside[source.carry]
            outs.append(mask)
        return tuple(outs)

    def nested_masks(self, nested: Nested, ins: tuple[int, ...]) -> tuple[int, ...]:
        """The masks of a nested jaxpr's inputs, given the equation's operands' masks
        (a loop's carries at their fixpoint)."""
        inside = list(ins[nested.first :])
        carries = slice(nested.carries.start, nested.carries.stop)
        if nested.carries:
            for _ in range(_FIXPOINT_PASSES):
                outs = self.forward(nested.jaxpr, tuple(inside))[1]
                joined = [a | b for a, b in zip(inside[carries], outs)]
                if joined == inside[carries]:
                    break
                inside[carries] = joined
        return tuple(inside)

    def frame(self, parent: Frame, eqn: Any, nested: Nested, blocked: frozenset[int]) -> Frame:
        """The frame of a jaxpr nested in `eqn` of `parent` (built once)."""
        key = (id(parent), id(eqn), id(nested.jaxpr), hash(blocked))
        found = self.frames.get(key)
        if found is None:
            ins = tuple(parent.mask(v) for v in eqn.invars)
            masks = self.forward(nested.jaxpr, self.nested_masks(nested, ins))[0]
            inputs = eqn.invars[nested.first :]
            index = self.index(nested.jaxpr)
            found = Frame(nested.jaxpr, parent, inputs, blocked, masks, index, eqn)
            self.frames[key] = found
        return found
