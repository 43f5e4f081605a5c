"""How a report reaches the user: raised as a `StateDtypeError`, or warned about."""

from __future__ import annotations

import sys
import warnings
from typing import Any

from . import _config
from ._call_site import user_frame
from ._errors import Report, StateDtypeError, StateDtypeWarning


def deliver(*reports: Report, raised_by: Any = None, trailer: str | None = None) -> None:
    """Reports drift: warned about in warn mode (once: not again while provenance
    re-traces), else raised as one `StateDtypeError` (marked as `raised_by`'s own).

    Several reports (the branches of one `cond`) make one message; `trailer`
    ends it. A warning points at the user's innermost frame.
    """
    __tracebackhide__ = True
    message = "\n".join([*map(str, reports), *([trailer] if trailer else [])])
    first = reports[0]
    if first.mode == "warn":
        if not _config.retracing.get():
            frame, level = user_frame(sys._getframe(1))
            warnings.warn(StateDtypeWarning(message), stacklevel=level + 2 if frame else 2)
        return
    mismatches = [m for report in reports for m in report.mismatches]
    error = StateDtypeError(message, mismatches, first.function)
    error._raised_by = raised_by  # type: ignore[attr-defined]
    raise error


def raised_by(error: StateDtypeError) -> Any:
    """The guard that raised `error` itself (None for a report from elsewhere)."""
    return getattr(error, "_raised_by", None)
