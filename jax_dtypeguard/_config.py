"""Settings: global defaults (`config.update`, environment) and scoped overrides.

Scoped overrides (`strict()`, `mode(...)`) live in context variables, so
threads and asyncio tasks never see each other's scopes. This module imports
nothing from JAX: the pytest plugin uses it without starting JAX.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import os
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, TypeVar

Mode = Literal["check", "cast", "warn", "off"]
MODES: tuple[str, ...] = ("check", "cast", "warn", "off")

MODE_VARIABLE = "JAX_DTYPEGUARD_MODE"
STRICT_VARIABLE = "JAX_DTYPEGUARD_STRICT"
LOOPS_VARIABLE = "JAX_DTYPEGUARD_LOOPS"
LOOP_MODES: tuple[str, ...] = ("check", "cast", "warn")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_T = TypeVar("_T")

_mode_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jax_dtypeguard_mode", default=None
)
_strict_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "jax_dtypeguard_strict", default=None
)


def _allowed_modes() -> str:
    return ", ".join(map(repr, MODES))


def validate_mode(value: object, what: str = "mode") -> str:
    """Returns `value` if it names a mode, else raises a clear error."""
    if not isinstance(value, str):
        raise TypeError(
            f"{what} must be one of {_allowed_modes()}; got {type(value).__name__} {value!r}."
        )
    if value not in MODES:
        raise ValueError(f"{what} must be one of {_allowed_modes()}; got {value!r}.")
    return value


def _validate_strict(value: object, what: str = "strict") -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False; got {type(value).__name__} {value!r}.")
    return value


def _mode_from_env() -> str:
    raw = os.environ.get(MODE_VARIABLE)
    if raw is None or not raw.strip():
        return "check"
    value = raw.strip().lower()
    if value not in MODES:
        raise ValueError(
            f"Environment variable {MODE_VARIABLE}={raw!r} is not a jax_dtypeguard mode; "
            f"allowed values: {', '.join(MODES)} (or unset for the default, check)."
        )
    return value


def _strict_from_env() -> bool:
    raw = os.environ.get(STRICT_VARIABLE)
    if raw is None or not raw.strip():
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"Environment variable {STRICT_VARIABLE}={raw!r} is not a boolean; allowed values: "
        f"{', '.join(_TRUE)} to turn strict mode on, {', '.join(_FALSE)} (or unset) "
        "to leave it off."
    )


class LoopSettings(NamedTuple):
    """What `guard_loops` does in a scope: its mode and whether weak_type alone is drift."""

    mode: str
    weak_type: bool


def _validate_loops(value: object) -> str:
    if not isinstance(value, str) or value not in (*LOOP_MODES, "off"):
        raise ValueError(
            f"loops must be one of {', '.join(repr(m) for m in (*LOOP_MODES, 'off'))}; "
            f"got {value!r}."
        )
    return value


def _loops_from_env() -> LoopSettings | None:
    raw = os.environ.get(LOOPS_VARIABLE)
    if raw is None or not raw.strip() or raw.strip().lower() == "off":
        return None
    value = raw.strip().lower()
    if value not in LOOP_MODES:
        raise ValueError(
            f"Environment variable {LOOPS_VARIABLE}={raw!r} is not a guard_loops mode; "
            f"allowed values: {', '.join(LOOP_MODES)}, or off (or unset) to leave "
            "the loops of the program unguarded."
        )
    return LoopSettings(value, False)


class Config:
    """Library-wide settings. Read them as attributes, change them with `update`.

    `mode`, `strict` and `loops` report the effective value, scoped context
    managers (`jax_dtypeguard.mode`, `jax_dtypeguard.strict`,
    `jax_dtypeguard.guard_loops`) included. Their global defaults come from the
    environment variables `JAX_DTYPEGUARD_MODE`, `JAX_DTYPEGUARD_STRICT` and
    `JAX_DTYPEGUARD_LOOPS`, read when `jax_dtypeguard` is imported.

    !!! Example
        ```python
        import jax_dtypeguard as dg

        dg.config.update(mode="warn")
        assert dg.config.mode == "warn"
        dg.config.update(mode="check")
        ```
    """

    __slots__ = ("_loops", "_mode", "_strict")

    def __init__(self) -> None:
        object.__setattr__(self, "_mode", _mode_from_env())
        object.__setattr__(self, "_strict", _strict_from_env())
        object.__setattr__(self, "_loops", _loops_from_env())

    @property
    def mode(self) -> str:
        """The mode of every guard declared without one: `"check"` unless configured."""
        override = _mode_override.get()
        return self._mode if override is None else override

    @property
    def strict(self) -> bool:
        """Whether every guard behaves as `mode="check", weak_type=True` (except `"off"`)."""
        override = _strict_override.get()
        return self._strict if override is None else override

    @property
    def loops(self) -> str:
        """What `guard_loops` does to every loop of the program here: `"off"` unless
        configured, or a scope (`with guard_loops(...)`) says otherwise."""
        settings = loops_override.get() or self._loops
        return "off" if settings is None else settings.mode

    @property
    def loops_default(self) -> LoopSettings | None:
        """The program-wide loop setting, scopes aside (None: off)."""
        return self._loops

    def update(
        self,
        *args: Any,
        mode: str | None = None,
        strict: bool | None = None,
        loops: str | None = None,
    ) -> None:
        """Sets the global defaults; the context managers still take precedence in their scope.

        Also accepts JAX's positional form, `update("mode", "cast")`.

        **Arguments:**

        - `mode`: `"check"`, `"cast"`, `"warn"` or `"off"`.
        - `strict`: `True` or `False`.
        - `loops`: `"check"`, `"cast"`, `"warn"` or `"off"`: guard every loop and
          branch of the program as `guard_loops(mode=...)` does in a scope.

        **Raises:**

        `TypeError` / `ValueError` for an unknown setting or value; nothing is
        changed then.

        !!! Example
            ```python
            import jax_dtypeguard as dg

            dg.config.update(strict=True)
            assert dg.config.strict
            dg.config.update(strict=False)
            ```
        """
        if args:
            if len(args) != 2 or mode is not None or strict is not None or loops is not None:
                raise TypeError(
                    "config.update takes keyword arguments (update(mode='cast', strict=True)) "
                    f"or one (name, value) pair; got {args!r}."
                )
            name, value = args
            if name == "mode":
                mode = validate_mode(value)
            elif name == "strict":
                strict = _validate_strict(value)
            elif name == "loops":
                loops = _validate_loops(value)
            else:
                raise ValueError(
                    f"jax_dtypeguard has no setting {name!r}; the settings are 'mode', "
                    "'strict' and 'loops'."
                )
        new_mode = self._mode if mode is None else validate_mode(mode)
        new_strict = self._strict if strict is None else _validate_strict(strict)
        new_loops = self._loops
        if loops is not None:
            loops = _validate_loops(loops)
            new_loops = None if loops == "off" else LoopSettings(loops, False)
        object.__setattr__(self, "_mode", new_mode)
        object.__setattr__(self, "_strict", new_strict)
        object.__setattr__(self, "_loops", new_loops)
        if loops is not None:  # the hook sits above this module: imported when first needed
            importlib.import_module(f"{__package__}._loop_hook").follow_config()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"jax_dtypeguard.config.{name} cannot be assigned; use "
            f"jax_dtypeguard.config.update({name}=...) or a scope such as "
            "`with jax_dtypeguard.strict():`."
        )

    def __repr__(self) -> str:
        return f"Config(mode={self.mode!r}, strict={self.strict!r}, loops={self.loops!r})"


config = Config()


@contextlib.contextmanager
def _scoped(variable: contextvars.ContextVar[_T | None], value: _T) -> Iterator[None]:
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def strict(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Strict mode within the block (or the decorated function).

    Every guard then behaves as `mode="check", weak_type=True`, whatever it
    was declared with; `mode="off"` stays off. `strict(False)` turns it off
    within the block. Settings are read when JAX traces a function (or on an
    eager call): a function JAX has already compiled is not traced again,
    so it keeps the verdict of its first trace.

    **Arguments:**

    - `enabled`: `True` (default) or `False`.

    **Returns:**

    A context manager, also usable as a decorator.

    **Raises:**

    `TypeError` if `enabled` is not a bool.

    !!! Example
        ```python
        import jax_dtypeguard as dg

        with dg.strict():
            assert dg.config.strict
        assert not dg.config.strict
        ```
    """
    return _scoped(_strict_override, _validate_strict(enabled, "strict(enabled)"))


def mode(name: str) -> contextlib.AbstractContextManager[None]:
    """The default mode within the block (or the decorated function).

    Guards declared with an explicit `mode` keep theirs; strict mode still
    takes precedence.

    **Arguments:**

    - `name`: `"check"`, `"cast"`, `"warn"` or `"off"`.

    **Returns:**

    A context manager, also usable as a decorator.

    **Raises:**

    `TypeError` / `ValueError` for anything but a mode name.

    !!! Example
        ```python
        import jax_dtypeguard as dg

        with dg.mode("warn"):
            assert dg.config.mode == "warn"
        ```
    """
    return _scoped(_mode_override, validate_mode(name))


def effective(declared_mode: str | None, declared_weak_type: bool) -> tuple[str, bool]:
    """The (mode, weak_type) a guard uses now, strict mode and scopes applied.

    `"off"`, declared or configured, stays off; otherwise strict mode means
    `("check", True)`.
    """
    resolved = config.mode if declared_mode is None else declared_mode
    if resolved == "off":
        return "off", declared_weak_type
    if config.strict:
        return "check", True
    return resolved, declared_weak_type


@dataclasses.dataclass(frozen=True)
class Configured:
    """A guard's settings source that follows the configuration: its declared mode and
    weak_type, with `config`, scopes and strict mode applied at each call."""

    mode: str | None = None
    weak_type: bool = True

    def now(self) -> tuple[str, bool]:
        """The (mode, weak_type) of this call."""
        return effective(self.mode, self.weak_type)

    def strict(self, mode: str) -> bool:
        """Whether strict mode made this call's check (read on report only)."""
        return mode == "check" and config.strict


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A guard's settings source that ignores the configuration (the testing assertions
    check what they are asked; the loop hook's scope chose its mode); `strict` says
    whether strict mode chose it, for the reports."""

    mode: str = "check"
    weak_type: bool = True
    made_strict: bool = False

    def now(self) -> tuple[str, bool]:
        return self.mode, self.weak_type

    def strict(self, mode: str) -> bool:
        return self.made_strict


Settings = Configured | Fixed


# Scopes (`guard_loops`, the pytest option and marker) over the program-wide default
# (`config.loops`): a context variable, so threads and asyncio tasks outside a scope
# never see it.
loops_override: contextvars.ContextVar[LoopSettings | None] = contextvars.ContextVar(
    "jax_dtypeguard_loops", default=None
)


def loop_settings() -> LoopSettings | None:
    """What `guard_loops` does here and now (strict mode applied), or None when it is off."""
    settings = loops_override.get() or config.loops_default
    if settings is None or settings.mode == "off":
        return None
    if settings.mode != "check" and config.strict:
        return LoopSettings("check", settings.weak_type)
    return settings


# Set while a report re-traces a step (provenance): guards inside it stay silent,
# since their warnings were already given by the first trace.
retracing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jax_dtypeguard_retracing", default=False
)
