"""Finding and loading the audit's targets: the entry points of the group
`jax_dtypeguard.audit_targets` (the built-in ones for Optax, `optax.contrib`,
Optimistix and Diffrax among them, in setup.cfg), and `module:attribute`.

Each target names a function returning `Case`s (or `AuditSubject`s and
`SkippedCase`s); a library is imported only when its target runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..testing import AuditSubject, Case, SkippedCase

ENTRY_POINT_GROUP = "jax_dtypeguard.audit_targets"
INSTALL_HINT = "pip install 'jax_dtypeguard[all]'"
PACKAGE = __name__.split(".")[0]

Item = Case | AuditSubject | SkippedCase


class UsageError(ValueError):
    """Bad usage of the audit: an unknown target or dtype, an import error."""


def first_line(error: BaseException) -> str:
    """`error` in one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def target_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Every registered target (the built-in ones included) by name, in name order."""
    registered = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {e.name: e for e in sorted(registered, key=lambda e: e.name)}


def _library(name: str) -> str:
    """The top-level module a target audits (`optax.contrib` -> `optax`)."""
    return name.split(":")[0].split(".")[0]


def library_versions(libraries: Iterable[str]) -> dict[str, str]:
    """Versions of JAX, jaxlib and every audited library that is installed."""
    versions = {}
    for name in ["jax", "jaxlib", *libraries]:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            version = getattr(module, "__version__", None)
            if isinstance(version, str):
                versions[name] = version
    return versions


def load_targets(
    names: Sequence[str], grads_dtype: str | None = None
) -> tuple[list[Item], list[str]]:
    """The items of the targets `names` (all registered targets if empty), and
    the libraries they audit. A registered target whose library is missing is
    one `SkippedCase` saying so; an unknown name is a `UsageError`."""
    registered = target_entry_points()
    items: list[Item] = []
    libraries: list[str] = []
    for name in names or list(registered):
        library = _library(name)
        if library not in libraries and library != PACKAGE:
            libraries.append(library)
        if name in registered:
            items += load_registered(name, registered[name], grads_dtype)
        elif ":" in name:
            items += load_target(name)
        else:
            known = ", ".join(registered)
            raise UsageError(
                f"unknown target {name!r}: use a registered target ({known}) or "
                "module:attribute naming your Cases"
            )
    return items, libraries


def load_registered(
    name: str, entry_point: importlib.metadata.EntryPoint, grads_dtype: str | None
) -> list[Item]:
    """The items of the registered target `name` (its library missing: one `SkippedCase`)."""
    built_in = entry_point.value.startswith(PACKAGE + ".")
    library = _library(name) if built_in else _library(entry_point.value)
    try:
        make = entry_point.load()
    except ImportError as error:
        return [_missing(name, entry_point, error)]
    kwargs = {}
    if grads_dtype is not None and "grads_dtype" in _parameters(make):
        kwargs["grads_dtype"] = grads_dtype
    try:
        made = make(**kwargs)
    except ImportError as error:
        return [_missing(name, entry_point, error)]
    except Exception as error:
        raise UsageError(
            f"target {name!r} ({library}) could not list its cases: {first_line(error)}"
        ) from None
    return _items(f"target {name!r}", made)


def _missing(
    name: str, entry_point: importlib.metadata.EntryPoint, error: ImportError
) -> SkippedCase:
    module = getattr(error, "name", None) or _library(name)
    if module.split(".")[0] == PACKAGE:
        raise UsageError(
            f"target {name!r} is registered as {entry_point.value}, which this "
            f"{PACKAGE} does not have: its installed metadata is older than its code; "
            "reinstall it (pip install -e . in a source checkout)"
        ) from None
    return SkippedCase(name, f"{module} is not installed, so its target is skipped: {INSTALL_HINT}")


def _parameters(fn: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def load_target(spec: str) -> list[Item]:
    """The cases named by `module:attribute` (an iterable of `Case`, or a callable
    returning one), the module imported from `sys.path`; `UsageError` when they
    cannot be had."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"target {spec!r} is not of the form module:attribute (or a registered "
            f"target: {', '.join(target_entry_points())})"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UsageError(
            f"cannot import {module_name!r} for target {spec!r}: {type(error).__name__}: {error}"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise UsageError(
                f"target {spec!r}: {module_name} has no attribute {attribute!r}"
            ) from None
    if callable(value) and not isinstance(value, Case):
        try:
            value = value()
        except Exception as error:
            raise UsageError(
                f"target {spec!r}: calling it raised {type(error).__name__}: {error}"
            ) from None
    return _items(f"target {spec!r}", value)


def _items(what: str, value: Any) -> list[Item]:
    if isinstance(value, (Case, AuditSubject)):
        value = [value]
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        items = list(value)
    except TypeError:
        raise UsageError(
            f"{what} is a {type(value).__name__}, not an iterable of jax_dtypeguard.testing.Case"
        ) from None
    for item in items:
        if not isinstance(item, (Case, AuditSubject, SkippedCase)):
            raise UsageError(
                f"{what} holds {type(item).__name__} {item!r:.60}, "
                "not a jax_dtypeguard.testing.Case"
            )
    return items
