"""Lineage over a jaxpr: which state input leaves each value depends on.

Provenance prefers the equations the drifting input leaf flows into; this
module computes that flow forward, once per jaxpr (nested jaxprs of `jit`,
`cond`, `while`, `scan` and custom derivatives included, loop carries at
their fixpoint), and the frames a backward search walks in.
"""

from __future__ import annotations

import time
from typing import Any

from ._compat import (
    CALL_JAXPR_PARAMS,
    cond_branches,
    is_literal,
    loop_layout,
    open_jaxpr,
)


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


class OutOfTime(Exception):
    """The walks of one report took longer than their time limit."""


class Frame:
    """One jaxpr being walked, and how its inputs connect to the enclosing one."""

    __slots__ = (
        "blocked",
        "consts",
        "eqn",
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
        index: tuple[dict[Any, tuple[Any, int]], dict[Any, int], frozenset[Any]],
        eqn: Any = None,
    ) -> None:
        self.eqn = eqn  # the equation of `parent` whose jaxpr this is
        self.jaxpr = jaxpr
        self.parent = parent
        self.inputs = inputs
        self.blocked = blocked
        self.masks = masks
        self.producer, self.invars, self.consts = index

    def mask(self, atom: Any) -> int:
        return 0 if is_literal(atom) else self.masks.get(atom, 0)


class Lineage:
    """Which state input leaves each value of a jaxpr depends on, as bit masks.

    Indexes, masks and frames are built once per jaxpr and shared by the
    walks of every drifting leaf.
    """

    def __init__(self, jaxpr: Any, state_invars: dict[str, int], seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds
        self.steps = 0
        self.indexes: dict[int, Any] = {}
        self.forwards: dict[tuple[int, tuple[int, ...]], Any] = {}
        self.frames: dict[tuple[int, ...], Frame] = {}
        self.bits = {invar: 1 << n for n, invar in enumerate(sorted(set(state_invars.values())))}
        in_masks = tuple(self.bits.get(i, 0) for i in range(len(jaxpr.invars)))
        masks = self.forward(jaxpr, in_masks)[0]
        self.root = Frame(jaxpr, None, [], frozenset(), masks, self.index(jaxpr))

    def tick(self) -> None:
        self.steps += 1
        if not self.steps & 255 and time.perf_counter() > self.deadline:
            raise OutOfTime

    def index(self, jaxpr: Any) -> Any:
        """Producers, input positions and constants of a jaxpr (built once per jaxpr)."""
        found = self.indexes.get(id(jaxpr))
        if found is None:
            producer = {}
            for eqn in jaxpr.eqns:
                for k, var in enumerate(eqn.outvars):
                    producer[var] = (eqn, k)
            invars = {var: i for i, var in enumerate(jaxpr.invars)}
            found = (producer, invars, frozenset(jaxpr.constvars))
            self.indexes[id(jaxpr)] = found
            self.indexes[-id(jaxpr)] = jaxpr  # keeps the id valid
        return found

    def forward(
        self, jaxpr: Any, in_masks: tuple[int, ...]
    ) -> tuple[dict[Any, int], tuple[int, ...]]:
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
            self.tick()
            for var, m in zip(eqn.outvars, self.forward_eqn(eqn, ins)):
                if m:
                    masks[var] = m
        outs = tuple(0 if is_literal(v) else get(v, 0) for v in jaxpr.outvars)
        self.forwards[key] = found = (masks, outs)
        self.indexes[-id(jaxpr)] = jaxpr
        return found

    def forward_eqn(self, eqn: Any, ins: tuple[int, ...]) -> tuple[int, ...]:
        name = eqn.primitive.name
        if name == "cond":
            outs = [0] * len(eqn.outvars)
            for branch in cond_branches(eqn):
                branch_outs = self.forward(branch, ins[1:])[1]
                outs = [a | b for a, b in zip(outs, branch_outs)]
            return tuple(outs)
        if name in ("while", "scan"):
            body, body_ins, carry = self.loop_body(eqn, ins)
            outs = self.forward(body, body_ins)[1]
            if name == "while":
                return tuple(body_ins[carry.start :])
            return tuple(body_ins[carry]) + outs[carry.stop - carry.start :]
        sub = call_jaxpr(eqn)
        if sub is not None:
            return self.forward(sub, ins)[1]
        combined = 0
        for m in ins:
            combined |= m
        return (combined,) * len(eqn.outvars)

    def loop_body(self, eqn: Any, ins: tuple[int, ...]) -> tuple[Any, tuple[int, ...], slice]:
        """A loop's body, the masks of its inputs (carries at their fixpoint), its carry slice."""
        layout = loop_layout(eqn)
        body = layout.body
        body_ins = list(ins[layout.skip :])
        carry = slice(layout.consts, layout.consts + layout.carries)
        for _ in range(8):
            outs = self.forward(body, tuple(body_ins))[1]
            joined = [a | b for a, b in zip(body_ins[carry], outs)]
            if joined == body_ins[carry]:
                break
            body_ins[carry] = joined
        return body, tuple(body_ins), carry

    def frame(
        self, parent: Frame, eqn: Any, jaxpr: Any, inputs: list[Any], blocked: frozenset[int]
    ) -> Frame:
        key = (id(parent), id(eqn), id(jaxpr), hash(blocked))
        found = self.frames.get(key)
        if found is None:
            ins = tuple(parent.mask(v) for v in eqn.invars)
            if eqn.primitive.name in ("while", "scan"):
                body_ins = self.loop_body(eqn, ins)[1]
            elif eqn.primitive.name == "cond":
                body_ins = ins[1:]
            else:
                body_ins = ins
            masks = self.forward(jaxpr, body_ins)[0]
            found = Frame(jaxpr, parent, inputs, blocked, masks, self.index(jaxpr), eqn)
            self.frames[key] = found
        return found
