"""What the built-in targets share: trying a subject on the problems a target
knows, and the rows of what it found."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .._columns import Column
from .._compat import enable_x64
from ..testing import AuditSubject, Case, CaseError, SkippedCase
from ._library_errors import loop_mismatches
from ._runner import skip_reason
from ._targets import Item, first_line


def probe(case: Case, dtype: str = "float32") -> BaseException | None:
    """What running `case` once at `dtype` raised, for a target deciding whether
    its case fits the library (`None`: it runs, drifting or not). Warnings of the
    probe are dropped: the rows record their own."""
    with warnings.catch_warnings(), enable_x64(Column.named(dtype).x64):
        warnings.simplefilter("ignore")
        try:
            case.run(dtype, weak_type=True)
        except CaseError as error:
            if loop_mismatches(error.__cause__) is None and skip_reason(error) is None:
                return error.__cause__ or error
        except Exception as error:
            return error
    return None


def first_that_runs(
    candidates: Iterable[AuditSubject], dtype: str = "float32"
) -> AuditSubject | BaseException:
    """The first candidate whose case runs once at `dtype` (drifting or not), else what the
    first one raised: a target trying its subject on several problems."""
    failure: BaseException | None = None
    for candidate in candidates:
        error = probe(candidate.case, dtype)
        if error is None:
            return candidate
        failure = failure or error
    if failure is None:
        raise ValueError("first_that_runs needs at least one candidate")
    return failure


def rows_of(
    found: Iterable[tuple[Any, ...] | SkippedCase], rows: Callable[..., list[Item]]
) -> list[Item]:
    """The rows of what a target found: `rows(*subject)` for each subject it could
    build, and the `SkippedCase` of each it could not."""
    return [row for f in found for row in ([f] if isinstance(f, SkippedCase) else rows(*f))]


def fails_on_problem(name: str, error: BaseException) -> SkippedCase:
    """The row of a subject whose step fails on every problem a target tried."""
    return SkippedCase(
        name,
        f"its step fails on the audit's problem ({first_line(error)}); audit it with "
        "your own Case (module:attribute target)",
    )
