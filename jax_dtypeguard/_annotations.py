"""jaxtyping + beartype checks of a guarded function's annotations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def checker_for(fn: Callable[..., Any], state_name: str) -> Callable[..., list[Any]] | None:
    """A checker of `fn`'s annotations, or None when there is nothing to check."""
    return None
