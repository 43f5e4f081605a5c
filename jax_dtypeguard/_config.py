"""Settings: global defaults (`config.update`, environment) and scoped overrides.

Scoped overrides (`strict()`, `mode(...)`) live in context variables, so
threads and asyncio tasks never see each other's scopes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Literal

Mode = Literal["check", "cast", "warn", "off"]
MODES: tuple[str, ...] = ("check", "cast", "warn", "off")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

_mode_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jax_dtypeguard_mode", default=None
)
_strict_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "jax_dtypeguard_strict", default=None
)


def validate_mode(value: object, what: str = "mode") -> str:
    """Returns `value` if it names a mode, else raises a clear error."""
    if not isinstance(value, str):
        raise TypeError(
            f"{what} must be one of {', '.join(map(repr, MODES))}; got "
            f"{type(value).__name__} {value!r}."
        )
    if value not in MODES:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, MODES))}; got {value!r}.")
    return value


def _validate_strict(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"strict must be True or False; got {type(value).__name__} {value!r}.")
    return value


def _mode_from_env() -> str:
    value = os.environ.get("JAX_DTYPEGUARD_MODE", "check").strip().lower() or "check"
    if value not in MODES:
        raise ValueError(
            f"Environment variable JAX_DTYPEGUARD_MODE={value!r} is not a mode; "
            f"allowed values: {', '.join(MODES)}."
        )
    return value


def _strict_from_env() -> bool:
    value = os.environ.get("JAX_DTYPEGUARD_STRICT", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"Environment variable JAX_DTYPEGUARD_STRICT={value!r} is not a boolean; "
        f"allowed values: {', '.join(v for v in _TRUE + _FALSE if v)} "
        "(or unset)."
    )


class Config:
    """Library-wide settings. Read them as attributes, change them with `update`.

    Attributes report the effective value, scoped context managers included.

    !!! Example
        ```python
        import jax_dtypeguard as dg

        dg.config.update(mode="warn")
        assert dg.config.mode == "warn"
        dg.config.update(mode="check")
        ```
    """

    def __init__(self) -> None:
        self._mode = _mode_from_env()
        self._strict = _strict_from_env()

    @property
    def mode(self) -> str:
        """The default mode of every guard declared without one."""
        override = _mode_override.get()
        return self._mode if override is None else override

    @property
    def strict(self) -> bool:
        """Whether every guard behaves as `mode="check", weak_type=True`."""
        override = _strict_override.get()
        return self._strict if override is None else override

    def update(self, *, mode: str | None = None, strict: bool | None = None) -> None:
        """Sets the global defaults (context managers still take precedence).

        **Arguments:**

        - `mode`: `"check"`, `"cast"`, `"warn"` or `"off"`.
        - `strict`: `True` or `False`.
        """
        if mode is not None:
            self._mode = validate_mode(mode)
        if strict is not None:
            self._strict = _validate_strict(strict)

    def __repr__(self) -> str:
        return f"Config(mode={self.mode!r}, strict={self.strict!r})"


config = Config()


@contextlib.contextmanager
def strict(enabled: bool = True) -> Iterator[None]:
    """Strict mode within the block: every guard checks, weak_type included.

    Declared `mode="off"` stays off. Read at trace time: a function that JAX
    has already compiled is not traced again, so it keeps its earlier verdict.

    !!! Example
        ```python
        import jax_dtypeguard as dg

        with dg.strict():
            assert dg.config.strict
        ```
    """
    token = _strict_override.set(_validate_strict(enabled))
    try:
        yield
    finally:
        _strict_override.reset(token)


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """Sets the default mode within the block (`"check"`, `"cast"`, `"warn"`, `"off"`).

    !!! Example
        ```python
        import jax_dtypeguard as dg

        with dg.mode("warn"):
            assert dg.config.mode == "warn"
        ```
    """
    token = _mode_override.set(validate_mode(name))
    try:
        yield
    finally:
        _mode_override.reset(token)


def effective(declared_mode: str | None, declared_weak_type: bool) -> tuple[str, bool]:
    """The (mode, weak_type) a guard uses now, strict mode and scopes applied."""
    resolved = config.mode if declared_mode is None else declared_mode
    if resolved == "off":
        return "off", declared_weak_type
    if config.strict:
        return "check", True
    return resolved, declared_weak_type
