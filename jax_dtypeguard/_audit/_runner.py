"""Running the audit: every case in every column, each run's result.

A column is a dtype with x64 on or off (`jax_dtypeguard._columns`); x64 is
forced off in a column that does not have it on.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax.numpy as jnp

from .. import _config
from .._columns import Column, columns_named, dtype_name
from .._comparisons import partitioned_by
from .._compat import enable_x64
from .._config import Fixed
from .._errors import CASTABLE_KINDS, Mismatch, Origin
from .._guard import Guard
from .._guarded import guarded_callable
from .._plan import CallPlan, describe_location
from .._signature import needs_x64
from ..testing import AuditSubject, Case, CaseError, NotApplicable, SkippedCase
from ._init import check_init
from ._jit import JIT_STEPS, jit_compiles
from ._library_errors import loop_mismatches
from ._targets import Item, UsageError, first_line


@dataclasses.dataclass
class Result:
    """One case in one column.

    `compiles` is the number of compilations (traces) over `JIT_STEPS`
    jitted steps (`None` unless asked for); `cast_left` the mismatches that
    cast mode left (`None` unless cast mode was verified); `warnings` what
    the case warned while it ran.
    """

    name: str
    dtype: str
    status: str  # "ok" | "drift" | "skipped" | "error"
    reason: str | None = None
    mismatches: list[Mismatch] = dataclasses.field(default_factory=list)
    compiles: int | None = None
    cast_left: list[Mismatch] | None = None
    x64: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def column(self) -> str:
        return Column(self.dtype, self.x64).label


def check_dtype(name: str) -> str:
    """The canonical name of a numeric JAX dtype (`"f4"` -> `"float32"`), else `UsageError`."""
    try:
        return dtype_name(name)
    except ValueError as error:
        raise UsageError(str(error)) from None


def columns(names: Sequence[str], x64: bool = False) -> list[Column]:
    """The columns named `names` (`"float32+x64"`: float32 with x64 on); with
    `x64`, each 16/32-bit column also runs with x64 on, next to it."""
    try:
        return columns_named(names, x64=x64)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _cast_left(case: Case, dtype: str, weak_type: bool) -> list[Mismatch]:
    """What remains after cast mode, for a case with dtype/weak_type drift."""
    guard = Guard(
        case.fn,
        CallPlan.at_positions(case.fn, case.state_arg, case.out),
        comparison=partitioned_by(case.traced),
        settings=Fixed("cast", weak_type),
        annotations=False,
    )
    return dataclasses.replace(case, fn=guarded_callable(guard)).run(dtype, weak_type=weak_type)


def skip_reason(error: BaseException | None) -> str | None:
    """Why the cell is skipped: a factory said the case does not apply, or the
    library said the configuration is not implemented (an LU in float16)."""
    while error is not None:
        if isinstance(error, NotApplicable):
            return str(error)
        if isinstance(error, NotImplementedError):
            return f"not supported in this configuration by the library: {first_line(error)}"
        error = error.__cause__
    return None


def run_case(
    item: Case | AuditSubject,
    column: Column | str,
    *,
    weak_type: bool = True,
    jit: bool = False,
    cast: bool = False,
    grads_dtype: str | None = None,
) -> Result:
    """Audits one case in one column (a `Column`, or a name such as `"float32+x64"`).

    `grads_dtype`: the dtype of the other arguments, when it differs from the
    column's (mixed precision); x64 is on if either is a 64-bit type. Warnings
    the case raises are recorded in the result, not shown.
    """
    if isinstance(column, str):
        column = columns([column])[0]
    subject = item if isinstance(item, AuditSubject) else AuditSubject(item)
    x64 = column.x64 or bool(grads_dtype and needs_x64(jnp.dtype(grads_dtype)))
    result = Result(subject.name, column.dtype, "ok", x64=column.x64)
    result.warnings = list(subject.warnings)
    with warnings.catch_warnings(record=True) as caught, _config.strict(False):
        warnings.simplefilter("always")
        with enable_x64(x64):
            _run_into(result, subject, column.dtype, weak_type, jit, cast)
    for warning in caught:
        if warning.category.__module__.startswith("beartype"):
            continue  # about annotation hints the annotation check read, not the case
        text = f"{warning.category.__name__}: {str(warning.message).strip().splitlines()[0]}"
        if text not in result.warnings:
            result.warnings.append(text)
    return result


def _run_into(
    result: Result, subject: AuditSubject, dtype: str, weak_type: bool, jit: bool, cast: bool
) -> None:
    case = subject.case
    try:
        # The column's label: x64 is in force already, as the column (and grads_dtype) set it.
        mismatches = case.run(result.column, weak_type=weak_type)
    except CaseError as error:
        skip = skip_reason(error)
        if skip is not None:
            result.status, result.reason = "skipped", skip
            return
        in_loop = loop_mismatches(error.__cause__)
        if in_loop is None:
            result.status, result.reason = "error", str(error)
            return
        mismatches, note = in_loop
        result.reason = note
    if subject.init is not None:
        try:
            mismatches = check_init(subject.init, dtype, mismatches)
        except Exception as error:
            result.warnings.append(f"the init check could not run: {first_line(error)}")
    result.mismatches = [_with_source(m, subject.source) for m in mismatches]
    result.status = "drift" if mismatches else "ok"
    notes = [result.reason] if result.reason else []
    if jit:
        try:
            result.compiles = jit_compiles(case, dtype)
        except Exception as error:
            result.status = "error"
            notes.append(f"the jitted step raised {first_line(error)}")
        else:
            if result.compiles > 1:
                result.status = "drift"
                notes.insert(0, f"compiled {result.compiles} times in {JIT_STEPS} jitted steps")
    if cast and any(m.kind in CASTABLE_KINDS for m in mismatches) and result.reason:
        notes.append(
            "cast mode not tried: the drift is inside the library's own loop, out of a step "
            'guard\'s reach; dg.guard_loops(mode="check") names it in your program'
        )
    elif cast and any(m.kind in CASTABLE_KINDS for m in mismatches):
        try:
            result.cast_left = _cast_left(case, dtype, weak_type)
        except CaseError as error:
            result.cast_left = []
            notes.append(f"cast mode run raised: {error}")
        else:
            notes.append(_cast_note(result.cast_left))
    result.reason = "; ".join(notes) or None


def _with_source(mismatch: Mismatch, source: Callable[..., Any] | None) -> Mismatch:
    """`mismatch`, its origin the library's step where none was found."""
    if mismatch.origin is not None or source is None or mismatch.kind not in CASTABLE_KINDS:
        return mismatch
    function, location = describe_location(source)
    file, _, line = location.rpartition(":")
    origin = Origin("return", file, int(line) if line.isdigit() else None, function)
    return dataclasses.replace(mismatch, origin=origin)


def _cast_note(left: list[Mismatch]) -> str:
    if not left:
        return "cast mode repairs every drift"
    kinds = sorted({m.kind for m in left})
    if any(m.kind in CASTABLE_KINDS for m in left):
        return f"cast mode leaves {len(left)} drift(s) ({', '.join(kinds)})"
    return f"cast mode cannot repair {', '.join(kinds)} drift, so it casts nothing"


def audit(
    items: Sequence[Item],
    sweep: Sequence[Column | str],
    *,
    weak_type: bool = True,
    jit: bool = False,
    cast: bool = False,
    grads_dtype: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Result]:
    """Runs every case in every column; `progress(done, total, label)` after each."""
    plan = [columns([c])[0] if isinstance(c, str) else c for c in sweep]
    total = len(items) * len(plan)
    results = []
    done = 0
    for item in items:
        for column in plan:
            if isinstance(item, SkippedCase):
                results.append(
                    Result(item.name, column.dtype, "skipped", item.reason, x64=column.x64)
                )
            else:
                results.append(
                    run_case(
                        item,
                        column,
                        weak_type=weak_type,
                        jit=jit,
                        cast=cast,
                        grads_dtype=grads_dtype,
                    )
                )
            done += 1
            if progress is not None:
                progress(done, total, f"{item.name} {column.label}")
    return results


def failed(results: Iterable[Result]) -> bool:
    """Whether any result drifted or errored (the audit's exit status 1)."""
    return any(r.status in ("drift", "error") for r in results)
