"""The columns of a dtype sweep, for `testing` and the audit: a dtype, with x64 on or off.

`"float32+x64"` names a float32 state with x64 on (what a program gets after
`jax.config.update("jax_enable_x64", True)`); x64 is on in every 64-bit
column. JAX is imported on first use, so that the command line's `--help`
reads `DEFAULT_COLUMNS` without starting it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

X64_SUFFIX = "+x64"
DEFAULT_COLUMNS = ("float16", "bfloat16", "float32", "float32" + X64_SUFFIX, "float64")


def dtype_name(dtype: Any) -> str:
    """The canonical name of a numeric dtype given by name or as a dtype (`"f4"` ->
    `"float32"`); `ValueError` for anything else."""
    import jax.numpy as jnp

    try:
        resolved = jnp.dtype(getattr(jnp, dtype, dtype) if isinstance(dtype, str) else dtype)
    except (TypeError, ValueError):
        resolved = None
    if resolved is None or not (
        jnp.issubdtype(resolved, jnp.number) or jnp.issubdtype(resolved, jnp.bool_)
    ):
        raise ValueError(
            f"unknown dtype {dtype!r}; use a dtype name such as {', '.join(DEFAULT_COLUMNS)}."
        )
    return resolved.name


def _needs_x64(dtype: str) -> bool:
    from ._signature import needs_x64

    return needs_x64(dtype)


@dataclasses.dataclass(frozen=True)
class Column:
    """One configuration of a sweep: a dtype name, and whether x64 is on in it."""

    dtype: str
    x64: bool

    @classmethod
    def named(cls, name: Any) -> Column:
        """The column `name` names: a dtype name (or a dtype), or a `"+x64"`
        configuration; `ValueError` for an unknown dtype."""
        forced = isinstance(name, str) and name.endswith(X64_SUFFIX)
        dtype = dtype_name(name[: -len(X64_SUFFIX)] if forced else name)
        return cls(dtype, forced or _needs_x64(dtype))

    @property
    def label(self) -> str:
        """Its name: the dtype's, with `"+x64"` where x64 is on for a 16/32-bit dtype."""
        return self.dtype + X64_SUFFIX if self.x64 and not _needs_x64(self.dtype) else self.dtype


def columns_named(names: Iterable[Any], *, x64: bool = False) -> list[Column]:
    """The columns `names` names, each once, in order; with `x64`, each 16/32-bit
    column also runs with x64 on, next to it. `ValueError` for an unknown dtype."""
    found: list[Column] = []
    for name in names:
        column = Column.named(name)
        for variant in (column, Column(column.dtype, True)) if x64 else (column,):
            if variant not in found:
                found.append(variant)
    return found
