"""Where did a dtype or weak_type drift come from? (computed only on report)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def explain(
    fn: Callable[..., Any],
    parameter: Any,
    out: int | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    mismatches: list[Any],
) -> list[Any]:
    """`mismatches` with `origin` filled in where it can be found."""
    return mismatches
