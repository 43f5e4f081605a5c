"""What `explain_recompiles` found: the data, and how it reads (text for people, JSON for
tools)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import Mismatch, Origin, StateDtypeError
from ._version import __version__


@dataclasses.dataclass(frozen=True)
class Recompile:
    """One compile of a function after its first.

    **Attributes:**

    - `call_site`: the user's `file:line` of the call that compiled, or `None`.
    - `mismatches`: every argument leaf whose type differs from the closest
      earlier compile of the function (kinds `"structure"`, `"shape"`,
      `"dtype"`, `"weak_type"`, `"sharding"`, `"static"`); `origin` says where
      a leaf returned by an earlier jitted call departed from its input.
    - `note`: why it compiled when no argument changed type (a function
      object made anew, a changed tracing context), else `None`.
    - `earlier_origins`: `(path, Origin)` pairs: where a jitted call (an
      `init`) built the value the earlier compile saw at that path, weak or
      in the other dtype.
    """

    call_site: str | None
    mismatches: tuple[Mismatch, ...]
    note: str | None = None
    earlier_origins: tuple[tuple[str, Origin], ...] = ()


@dataclasses.dataclass(frozen=True)
class CompiledFunction:
    """One jitted function and its compiles within an `explain_recompiles` scope.

    **Attributes:**

    - `name`: the qualified name of the function the user jitted.
    - `location`: its `file:line`, or `None`.
    - `compiles`: how many times `jit` traced it (each trace is followed by a
      lowering and an XLA compile, or a persistent-cache load).
    - `calls`: how many times it was called, or `None`: a call that hits
      jit's C++ cache is never seen, so calls are not counted.
    - `seconds`: what its compiles cost (trace + lowering + XLA compile), from
      JAX's monitoring events; `None` where this JAX records none.
    - `recompiles`: a `Recompile` for each compile after the first.
    """

    name: str
    location: str | None
    compiles: int
    calls: int | None
    seconds: float | None
    recompiles: tuple[Recompile, ...]


class RecompileError(StateDtypeError):
    """A jitted function compiled more often than `max_compiles` allows.

    Raised at the call that compiles it once too often. `.mismatches` lists
    what changed since its closest earlier compile; `.function` names it.
    """


RecompileError.__module__ = "jax_dtypeguard"
Recompile.__module__ = "jax_dtypeguard"
CompiledFunction.__module__ = "jax_dtypeguard"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything a report shows, at one moment."""

    functions: tuple[CompiledFunction, ...]
    timed: bool  # JAX gave compile-time events
    untraced: tuple[int, float, tuple[str, ...]]  # compiles not traced by jit: count, s, names
    nested: tuple[str, ...]  # jitted functions retraced only inside an enclosing retrace
    max_compiles: int | None
    exceeded: bool
    jax_version: str
    # Eager operations compiled, JAX's own jitted helpers (jax.numpy's) included: count, seconds.
    eager: tuple[int, float] = (0, 0.0)


class RecompileReport:
    """The live report of an `explain_recompiles` scope (it grows while the scope runs).

    `str(report)` is the text for people; `report.to_json()` (or
    `report.to_dict()`) the data for tools; `report.functions` every jitted
    function seen, the most expensive compiles first; `report.exceeded`
    whether a `max_compiles` budget was exceeded.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    @property
    def functions(self) -> list[CompiledFunction]:
        """Every function compiled in the scope, ranked by what its compiles cost."""
        return list(self._snapshot().functions)

    @property
    def exceeded(self) -> bool:
        """Whether a function compiled more often than `max_compiles` allows."""
        return self._snapshot().exceeded

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what `to_json` writes)."""
        return _as_dict(self._snapshot())

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as one JSON document."""
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return render(self._snapshot())

    def __repr__(self) -> str:
        snapshot = self._snapshot()
        again = sum(1 for f in snapshot.functions if f.compiles > 1)
        return (
            f"<RecompileReport: {len(snapshot.functions)} functions compiled, "
            f"{again} more than once>"
        )


def _mismatch_dict(m: Mismatch) -> dict[str, Any]:
    return {
        "path": m.path,
        "kind": m.kind,
        "expected": m.expected,
        "got": m.got,
        "origin": None if m.origin is None else str(m.origin),
    }


def _as_dict(snapshot: Snapshot) -> dict[str, Any]:
    count, seconds, names = snapshot.untraced
    return {
        "jax_dtypeguard": __version__,
        "jax": snapshot.jax_version,
        "timed": snapshot.timed,
        "max_compiles": snapshot.max_compiles,
        "exceeded": snapshot.exceeded,
        "functions": [
            {
                "name": f.name,
                "location": f.location,
                "compiles": f.compiles,
                "calls": f.calls,
                "seconds": f.seconds,
                "recompiles": [
                    {
                        "call_site": r.call_site,
                        "note": r.note,
                        "mismatches": [_mismatch_dict(m) for m in r.mismatches],
                        "earlier_origins": {path: str(o) for path, o in r.earlier_origins},
                    }
                    for r in f.recompiles
                ],
            }
            for f in snapshot.functions
        ],
        "eager_compiles": {"count": snapshot.eager[0], "seconds": snapshot.eager[1]},
        "untraced_compiles": {"count": count, "seconds": seconds, "names": list(names)},
        "nested_retraced": list(snapshot.nested),
    }


def _seconds(value: float | None) -> str:
    return "time unknown" if value is None else f"{value:.2f} s"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def mismatch_lines(mismatches: Sequence[Mismatch], indent: str) -> list[str]:
    """One line per mismatch, `path: expected -> got  (origin)  [kind]`."""
    paths = [m.path for m in mismatches]
    lines = []
    for m in mismatches:
        line = f"{indent}{m}"
        if paths.count(m.path) > 1 or m.kind in ("structure", "sharding", "static"):
            line += f"  [{m.kind}]"
        lines.append(line)
    return lines


def _built(origin: Origin, paths: list[str]) -> str:
    """Where a jitted call (an `init`) built the earlier values of `paths`."""
    many = len(paths) > 1
    subject = f"the earlier value{'s' if many else ''} of {', '.join(paths)}"
    if origin.primitive == "a constant":
        where = f" ({origin.file}:{origin.line})" if origin.file else ""
        return f"{subject}: constant{'s' if many else ''} that {origin.function}{where} returned"
    return f"{subject}: built in a jitted call ({origin})"


def recompile_hint(recompile: Recompile) -> str:
    """One line on how to compile once, for what changed."""
    kinds = {m.kind for m in recompile.mismatches}
    parts = []
    if kinds & {"dtype", "weak_type"}:
        parts.append(
            "give each argument leaf the same dtype and weak_type at every call (an array, "
            "`jnp.asarray(x, dtype)`, for a Python scalar; a step that keeps its state's types: "
            '`dg.state_dtype_invariant(mode="cast")`, `dg.optax.invariant` for Optax)'
        )
    if "static" in kinds:
        parts.append("keep static arguments constant, or pass the value as an array")
    if "shape" in kinds:
        parts.append("keep shapes fixed (pad or bucket them)")
    if "structure" in kinds:
        parts.append("pass the same tree (containers, keys, None where None was)")
    if "sharding" in kinds:
        parts.append("reshard back with `jax.sharding.reshard`")
    if not parts:
        parts.append("jit the function once and reuse it")
    return f"Hint: {'; '.join(parts)}."


def describe_recompile(recompile: Recompile, number: int, indent: str = "  ") -> list[str]:
    """The lines that explain one recompile (the `number`-th compile of its function)."""
    where = f" at {recompile.call_site}" if recompile.call_site else ""
    if recompile.mismatches:
        head = f"{indent}{_ordinal(number)} compile{where}: differs from the closest earlier one in"
        lines = [head, *mismatch_lines(recompile.mismatches, indent + "  ")]
        by_origin: dict[Origin, list[str]] = {}
        for path, origin in recompile.earlier_origins:
            by_origin.setdefault(origin, []).append(path)
        for origin, paths in by_origin.items():
            lines.append(f"{indent}  {_built(origin, paths)}")
        return lines
    return [f"{indent}{_ordinal(number)} compile{where}: {recompile.note or 'no argument changed'}"]


def render(snapshot: Snapshot) -> str:
    """The report's text."""
    functions = snapshot.functions
    again = [f for f in functions if f.compiles > 1]
    once = [f for f in functions if f.compiles == 1]
    total = sum(f.compiles for f in functions)
    lines = []
    header = "jax_dtypeguard.explain_recompiles: "
    if not functions:
        header += "nothing compiled"
    elif not again:
        header += f"no function compiled more than once ({total} compiles)"
    else:
        extra = sum(f.compiles - 1 for f in again)
        header += (
            f"{len(again)} function{'s' if len(again) != 1 else ''} compiled more than once "
            f"({extra} extra compile{'s' if extra != 1 else ''})"
        )
        if snapshot.timed:
            cost = sum(f.seconds or 0.0 for f in again)
            header += f", {cost:.2f} s compiling them"
    if snapshot.max_compiles is not None:
        header += f"; budget max_compiles={snapshot.max_compiles}"
        header += " EXCEEDED" if snapshot.exceeded else ""
    lines.append(header)
    for f in again:
        lines.append("")
        where = f" ({f.location})" if f.location else ""
        calls = "" if f.calls is None else f", {f.calls} calls"
        cost = f", {_seconds(f.seconds)}" if snapshot.timed else ""
        lines.append(f"{f.name}{where}: {f.compiles} compiles{calls}{cost}")
        for number, recompile in enumerate(f.recompiles, start=2):
            lines.extend(describe_recompile(recompile, number))
    if once or snapshot.eager[0] or snapshot.untraced[0] or snapshot.nested:
        lines.append("")
    if once:
        cost = ""
        if snapshot.timed:
            cost = f" ({sum(f.seconds or 0.0 for f in once):.2f} s)"
        lines.append(f"{len(once)} function{'s' if len(once) != 1 else ''} compiled once{cost}.")
    compiles, seconds = snapshot.eager
    if compiles:
        cost = f", {seconds:.2f} s" if snapshot.timed else ""
        lines.append(
            f"Eager JAX calls (operations, and JAX's own jitted functions such as jax.numpy's): "
            f"{compiles} compile{'s' if compiles != 1 else ''}{cost}."
        )
    count, seconds, names = snapshot.untraced
    if count:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        lines.append(
            f"{count} compile{'s' if count != 1 else ''} without a trace by jit in this scope "
            f"({seconds:.2f} s: {shown}): eager operations, or functions traced before the "
            "scope began (counted, not explained)."
        )
    if snapshot.nested:
        shown = ", ".join(snapshot.nested[:6]) + (", ..." if len(snapshot.nested) > 6 else "")
        lines.append(
            f"Not shown: {len(snapshot.nested)} jitted function"
            f"{'s' if len(snapshot.nested) != 1 else ''} called inside them, traced again "
            f"only because an enclosing function was ({shown})."
        )
    if functions and not snapshot.timed:
        lines.append(
            f"JAX {snapshot.jax_version} records no compile-time events: seconds are unknown."
        )
    return "\n".join(lines)
