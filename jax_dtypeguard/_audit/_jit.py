"""The audit's `--jit`: a case's step jitted for a few steps on real arrays, its
compiles counted by `explain_recompiles` (traces by jit, not C++ cache entries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from .. import explain_recompiles
from .._signature import split_traced
from ..testing import Case

JIT_STEPS = 3


def _traced_inputs(case: Case, parts: Sequence[Any], args: Sequence[Any]) -> tuple[Any, Any]:
    """The case's full call as (traced leaves, static part) for a jitted step."""
    positions = case.state_arg if isinstance(case.state_arg, tuple) else (case.state_arg,)
    call = list(args)
    for position, part in sorted(zip(positions, parts), key=lambda item: item[0]):
        call.insert(position, part)
    values, rebuild = split_traced((call, dict(case.kwargs or {})), case.traced)
    return values, StaticHalf(rebuild, (call, dict(case.kwargs or {})), case.traced)


class StaticHalf:
    """The static half of a call, a `jit` static argument: equal when its leaves are."""

    def __init__(self, rebuild: Callable[[list[Any]], Any], tree: Any, traced: Any) -> None:
        self.rebuild = rebuild
        leaves, self.treedef = jax.tree_util.tree_flatten(tree)
        self.leaves = tuple(leaf for leaf in leaves if not _traced_leaf(leaf, traced))

    def __hash__(self) -> int:
        return hash((self.treedef, len(self.leaves)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticHalf) or other.treedef != self.treedef:
            return False
        return all(_same(a, b) for a, b in zip(self.leaves, other.leaves))


def _traced_leaf(leaf: Any, traced: Any) -> bool:
    values, _ = split_traced([leaf], traced)
    return bool(values)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


def jit_compiles(case: Case, dtype: str) -> int:
    """Compiles over `JIT_STEPS` jitted steps with real arrays, as `explain_recompiles`
    counts them: the traces of the step by jit (each new signature of the state is
    traced, then compiled, once)."""
    state, args = case.inputs(dtype)
    several = isinstance(case.state_arg, tuple)
    parts = list(state) if several else [state]
    outs: tuple[Any, ...] = (
        (case.out if isinstance(case.out, tuple) else tuple(range(len(parts))))
        if several
        else (case.out,)
    )
    rebuild_out: list[Callable[[list[Any]], Any]] = []

    def step(values: list[Any], static: StaticHalf) -> Any:
        positional, keywords = static.rebuild(values)
        result = case.fn(*positional, **keywords)
        new_parts = [result if index is None else result[index] for index in outs]
        # As eqx.filter_jit: the traced half comes back, the static half is kept aside.
        dynamic, rebuild = split_traced(new_parts, case.traced)
        rebuild_out[:] = [rebuild]
        return dynamic

    jitted = jax.jit(step, static_argnums=1)
    with explain_recompiles(quiet=True) as report:
        for _ in range(JIT_STEPS):
            values, static = _traced_inputs(case, parts, args)
            dynamic = jitted(values, static)
            parts = list(rebuild_out[0](list(dynamic)))
    return sum(f.compiles for f in report.functions if f.name == step.__qualname__)
