"""What a drift report is made of, and how it reads."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ._caches import memoized
from ._signature import category

Kind = Literal["structure", "shape", "dtype", "weak_type", "sharding", "annotation", "static"]
Side = Literal["input", "output"]
CASTABLE_KINDS = frozenset({"dtype", "weak_type"})


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a dtype or weak_type drift was introduced.

    **Attributes:**

    - `primitive`: the JAX primitive whose result first departs from the
      input leaf's type (`add`, `convert_element_type`, ...).
    - `file`, `line`, `function`: the user source location JAX recorded for it.
    - `argument`: the name of the function argument the drifting value came
      from, when it came from one other than the state.
    """

    primitive: str
    file: str | None = None
    line: int | None = None
    function: str | None = None
    argument: str | None = None

    def __str__(self) -> str:
        text = f"first at {self.primitive}"
        if self.file is not None:
            text += f", {self.file}:{self.line}"
            if self.function:
                text += f" in {self.function}"
        if self.argument is not None:
            quote = '"' if "'" in self.argument else "'"
            text += f", from argument {quote}{self.argument}{quote}"
        return text


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One way in which one leaf of a state drifted.

    **Attributes:**

    - `path`: the leaf's JAX keypath, rooted at the state's name
      (`opt_state[0].mu`).
    - `kind`: `"structure"`, `"shape"`, `"dtype"`, `"weak_type"`,
      `"sharding"`, `"annotation"`, or `"static"` (a static argument of a
      jitted function that changed value, in `explain_recompiles` reports).
    - `expected`: the input state's type at that path (or the annotation).
    - `got`: the output's type at that path (or what was found).
    - `origin`: where a dtype/weak_type drift was introduced, or `None`.
    - `expected_type`, `got_type`: the two leaf types behind `expected` and
      `got` (shape, dtype, weak_type, sharding), where both are arrays or
      Python scalars; else `None`.
    - `castable`: whether cast mode repairs it.
    - `rule`: for a leaf that breaks a dtype policy, the rule's pattern
      (`expected` is then the policy's type); else `None`.
    - `side`: for a policy, whether the leaf was given (`"input"`) or returned
      (`"output"`); else `None`.
    """

    path: str
    kind: Kind
    expected: str
    got: str
    origin: Origin | None = None
    expected_type: Any = dataclasses.field(default=None, compare=False, repr=False)
    got_type: Any = dataclasses.field(default=None, compare=False, repr=False)
    castable: bool = dataclasses.field(default=False, compare=False, repr=False)
    rule: str | None = None
    side: Side | None = None

    def __str__(self) -> str:
        if self.rule is None:
            text = f"{self.path}: {self.expected} -> {self.got}"
        else:
            quote = '"' if "'" in self.rule else "'"
            text = f"{self.path}: {self.expected} (policy {quote}{self.rule}{quote}) -> {self.got}"
            if self.side is not None:
                text += f" on {self.side}"
        if self.origin is not None:
            text += f"  ({self.origin})"
        return text


class StateDtypeError(TypeError):
    """A state's structure, shape, dtype or weak_type changed through a step.

    `.mismatches` lists every drifting leaf; `.function` names the step.
    """

    def __init__(self, message: str, mismatches: Sequence[Mismatch] = (), function: str = ""):
        super().__init__(message)
        self.mismatches: list[Mismatch] = list(mismatches)
        self.function = function


class StateDtypeWarning(UserWarning):
    """Warn mode's report of a drifting state (same text as the error)."""


StateDtypeError.__module__ = "jax_dtypeguard"
StateDtypeWarning.__module__ = "jax_dtypeguard"
Mismatch.__module__ = "jax_dtypeguard"
Origin.__module__ = "jax_dtypeguard"


_NUMERIC_KINDS = frozenset({"bool", "bool_", "integer", "floating", "complexfloating"})


def _changes_kind(m: Mismatch) -> bool:
    """A dtype drift from one numeric kind to another (int -> float), which no cast undoes."""
    if m.kind != "dtype" or m.expected_type is None or m.got_type is None:
        return False
    kinds = category(m.expected_type.dtype), category(m.got_type.dtype)
    return kinds[0] != kinds[1] and set(kinds) <= _NUMERIC_KINDS


def _kind_change_loss(m: Mismatch) -> str:
    """What casting back across kinds would do to the values."""
    expected, got = category(m.expected_type.dtype), category(m.got_type.dtype)
    if got == "complexfloating":
        return "casting back would drop the imaginary part"
    if got == "floating" and expected in ("integer", "bool", "bool_"):
        return f"casting back to {m.expected_type.dtype} would truncate the fractions"
    if got in ("bool", "bool_"):
        return f"a bool cast back to {m.expected_type.dtype} is 0 or 1, not the value"
    return f"the step already lost what {m.expected_type.dtype} held"


def _array_for_scalar(m: Mismatch) -> bool:
    a, b = m.expected_type, m.got_type
    return (
        m.kind == "structure"
        and m.castable
        and a is not None
        and b is not None
        and a.python_scalar is not None
        and b.python_scalar is None
    )


def _scalar_for_array(m: Mismatch) -> bool:
    a, b = m.expected_type, m.got_type
    return (
        m.kind == "structure"
        and a is not None
        and b is not None
        and a.python_scalar is None
        and b.python_scalar is not None
    )


def _hint(mismatches: Sequence[Mismatch], mode: str, strict: bool) -> str:
    kinds = {m.kind for m in mismatches}
    kind_changes = [m for m in mismatches if _changes_kind(m)]
    changed_kind = {m.path for m in kind_changes}
    castable = any(m.kind in CASTABLE_KINDS and m.path not in changed_kind for m in mismatches)
    parts = []
    if kind_changes:
        m = kind_changes[0]
        parts.append(
            f"{m.path} changed kind ({m.expected_type.dtype} -> {m.got_type.dtype}), which "
            f"no cast undoes: {_kind_change_loss(m)}; give the leaf the kind the step "
            "computes in its initial state, or convert explicitly in the step"
        )
    scalars = [m for m in mismatches if _array_for_scalar(m)]
    if scalars and mode != "cast":
        parts.append(
            f"{scalars[0].path} is a Python scalar that came back as an array: start the "
            'state with an array (`jnp.asarray(value)`), or use mode="cast", which turns '
            "it into the weak array `jit` makes of the scalar"
        )
    if castable and strict:
        parts.append(
            "strict mode is on, so dtype/weak_type drift fails even where "
            'mode="cast" would repair it: keep the step\'s arithmetic in the '
            "state's dtype (e.g. `x.astype(state.dtype)`)"
        )
    elif castable and mode == "cast":
        parts.append(
            "keep each leaf's dtype (typed PRNG keys and float0 leaves cannot be cast, "
            "nor a leaf whose shape or sharding also changed)"
        )
    elif castable:
        parts.append(
            'use mode="cast" to cast dtype/weak_type drift back to the '
            "input state's types, or keep the step's arithmetic in the state's "
            "dtype (e.g. `x.astype(state.dtype)`)"
        )
    structural = [m for m in mismatches if m.kind == "structure"]
    if any(not (_scalar_for_array(m) or _array_for_scalar(m)) for m in structural):
        parts.append(
            "return the same tree as the input state (same containers and keys, "
            "a leaf wherever the input has one: no `None` for `0`, no array for a "
            "Python scalar, the same static fields)"
        )
    if any(_scalar_for_array(m) for m in mismatches):
        parts.append(
            "return an array where the input state holds one, not a Python scalar "
            "(`jnp.asarray(value, dtype)`)"
        )
    if "shape" in kinds:
        parts.append("keep each leaf's shape")
    if "sharding" in kinds:
        parts.append("reshard the leaf back with `jax.sharding.reshard`")
    if "annotation" in kinds:
        parts.append("pass and return values that match the function's annotations")
    prefix = "casting cannot fix these: " if mode == "cast" else ""
    return f"Hint: {prefix}{'; '.join(parts)}."


def count_of(mismatches: Sequence[Mismatch]) -> str:
    """`1 mismatch`, `3 mismatches`: the count a report's header gives."""
    return f"{len(mismatches)} mismatch{'es' if len(mismatches) != 1 else ''}"


@dataclasses.dataclass(frozen=True)
class Report:
    """A drift report as data; `str(report)` is the one rendering of it.

    **Attributes:**

    - `function`, `location`: the guarded function's name and `file:line`.
    - `mismatches`: what drifted, in order.
    - `mode`, `strict`: the settings the call ran under (they choose the hint).
    - `states`: the state names the header quotes.
    - `role`: what the function is to its caller, before its name (`branch 1`).
    - `what`: the header's verb phrase where it is not "changed the type of
      its state ..." (`returned updates whose types differ from the params'`).
    - `against`: for a tree compared with another tree, each mismatch path's
      counterpart there: a line then reads `path: got but other is expected`.
    - `notes`: lines before the hint (where a loop was reached from).
    - `hint`: the hint, where the caller knows a better one than the default.
    """

    function: str
    location: str
    mismatches: tuple[Mismatch, ...]
    mode: str
    strict: bool = False
    states: tuple[str, ...] = ()
    role: str = ""
    what: str | None = None
    against: Mapping[str, str] | None = None
    notes: tuple[str, ...] = ()
    hint: str | None = None

    def header(self) -> str:
        count = count_of(self.mismatches)
        what = self.what
        if what is None and all(m.kind == "annotation" for m in self.mismatches):
            what = "does not match its annotations"
        elif what is None:
            quoted = ", ".join(f"'{n}'" for n in self.states)
            noun = "state" if len(self.states) == 1 else "states"
            what = f"changed the type of its {noun} {quoted}"
        role = f"{self.role} " if self.role else ""
        return f"{role}{self.function} ({self.location}) {what} ({count}):"

    def line(self, mismatch: Mismatch) -> str:
        if self.against is not None:
            other = self.against[mismatch.path]
            text = f"  {mismatch.path}: {mismatch.got} but {other} is {mismatch.expected}"
            return text + (f"  ({mismatch.origin})" if mismatch.origin is not None else "")
        text = f"  {mismatch}"
        repeated = sum(m.path == mismatch.path for m in self.mismatches) > 1
        if repeated or mismatch.kind in ("structure", "annotation", "sharding"):
            text += f"  [{mismatch.kind}]"
        return text

    def __str__(self) -> str:
        hint = (
            self.hint if self.hint is not None else _hint(self.mismatches, self.mode, self.strict)
        )
        lines = [self.header(), *map(self.line, self.mismatches), *self.notes, hint]
        return "\n".join(lines)


def short_path(path: str) -> str:
    """A source path as a reader wants it: package-relative or cwd-relative."""
    return _short_path(path, os.getcwd())


@memoized
def _short_path(path: str, cwd: str) -> str:
    marker = "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    try:
        relative = os.path.relpath(path, cwd)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
