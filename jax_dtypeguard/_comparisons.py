"""How a guard compares a state out with the state in: one comparison per guard.

`EXACT` is the decorator's (every leaf's type, eager verdicts cached by leaf
signatures); `LoopRule` is what a `jax.lax` or Equinox loop or branch accepts;
`Partitioned` compares the traced half of an Equinox-partitioned state leaf
by leaf and the rest by value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ._carry_rules import Rule, carry_verdict
from ._compare import Verdict, compare_partitioned, compare_states


@dataclasses.dataclass(frozen=True)
class Exact:
    """Every leaf's structure, shape, dtype, weak_type and sharding, as DESIGN states them."""

    keyed = True  # verdicts may be cached by the leaves' signatures

    def verdict(self, state_in: Any, state_out: Any, root: str, weak_type: bool) -> Verdict:
        return compare_states(state_in, state_out, root, weak_type)


@dataclasses.dataclass(frozen=True)
class LoopRule:
    """What a loop or branch accepts (`_carry_rules.Rule`): a Python scalar that it
    converts for an array leaf is cast, not a change of structure."""

    rule: Rule = "lax"
    keyed = False

    def verdict(self, state_in: Any, state_out: Any, root: str, weak_type: bool) -> Verdict:
        return carry_verdict(state_in, state_out, root, self.rule, weak_type)


@dataclasses.dataclass(frozen=True)
class Partitioned:
    """The leaves `traced` selects (`eqx.is_array`) by type, the others by value."""

    traced: Callable[[Any], bool]
    keyed = False

    def verdict(self, state_in: Any, state_out: Any, root: str, weak_type: bool) -> Verdict:
        return compare_partitioned(state_in, state_out, root, weak_type, self.traced)


Comparison = Exact | LoopRule | Partitioned
EXACT = Exact()


def partitioned_by(traced: Callable[[Any], bool] | None) -> Comparison:
    """`Partitioned(traced)`, or `EXACT` where no predicate partitions the state."""
    return EXACT if traced is None else Partitioned(traced)
