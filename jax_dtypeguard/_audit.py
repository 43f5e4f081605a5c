"""The audit behind `jax-dtypeguard audit`: columns, targets, running cases, results.

Targets are registered under the entry-point group `jax_dtypeguard.audit_targets`
(the built-in ones for Optax, `optax.contrib`, Optimistix and Diffrax too); each
names a function returning `Case`s. The libraries are imported only when their
target runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import _config
from ._audit_init import InitCheck, check_init
from ._audit_loops import loop_mismatches
from ._comparisons import partitioned_by
from ._compat import enable_x64
from ._config import Fixed
from ._errors import CASTABLE_KINDS, Mismatch, Origin
from ._guard import Guard
from ._guarded import guarded_callable
from ._plan import describe_location
from ._signature import needs_x64
from .testing import X64_SUFFIX, Case, CaseError, _split_static, _state_plan

ENTRY_POINT_GROUP = "jax_dtypeguard.audit_targets"
# The built-in targets, as their entry points read in setup.cfg. They are also used
# from a source tree whose installed metadata predates them.
BUILTIN_TARGETS = {
    "optax": "jax_dtypeguard._audit_optax:optax_target",
    "optax.contrib": "jax_dtypeguard._audit_optax:contrib_target",
    "optimistix": "jax_dtypeguard._audit_optimistix:optimistix_target",
    "diffrax": "jax_dtypeguard._audit_diffrax:diffrax_target",
}
DEFAULT_COLUMNS = ("float16", "bfloat16", "float32", "float32+x64", "float64")
JIT_STEPS = 3
INSTALL_HINT = "pip install 'jax_dtypeguard[all]'"


class UsageError(ValueError):
    """Bad usage of the audit: an unknown target or dtype, an import error."""


class NotApplicable(Exception):
    """Raised by a case's factory: the case does not apply to this column (the
    message says why); the cell reads `skipped`."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A case (or a whole target) that could not be built, and why, in words."""

    name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Subject:
    """A case with what the audit checks besides it: its `init`, the warnings
    raised while the target built it (they belong in its rows), and the
    library's own step function (`source`), named as the origin of a drift whose
    first operation cannot be found (a value from a constant of the library)."""

    case: Case
    init: InitCheck | None = None
    warnings: tuple[str, ...] = ()
    source: Callable[..., Any] | None = None  # the library's step, where no origin is found

    @property
    def name(self) -> str:
        return self.case.name


Item = Case | Subject | Skipped


@dataclasses.dataclass(frozen=True)
class Column:
    """One configuration of the sweep: a dtype, with x64 on or off."""

    dtype: str
    x64: bool

    @property
    def label(self) -> str:
        wide = needs_x64(jnp.dtype(self.dtype))
        return self.dtype + X64_SUFFIX if self.x64 and not wide else self.dtype


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


# --- columns ----------------------------------------------------------------


def check_dtype(name: str) -> str:
    """The canonical name of a numeric JAX dtype (`"f4"` -> `"float32"`), else `UsageError`."""
    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise UsageError(
            f"unknown dtype {name!r}; use JAX dtype names such as {','.join(DEFAULT_COLUMNS)}"
        )
    return dtype.name


def columns(names: Sequence[str], x64: bool = False) -> list[Column]:
    """The columns named `names` (`"float32+x64"`: float32 with x64 on); with
    `x64`, each 16/32-bit column also runs with x64 on, next to it."""
    found: list[Column] = []
    for name in names:
        plain = name[: -len(X64_SUFFIX)] if name.endswith(X64_SUFFIX) else name
        dtype = check_dtype(plain)
        wide = needs_x64(jnp.dtype(dtype))
        variants = [wide or name != plain]
        if x64 and not variants[0]:
            variants.append(True)
        for on in variants:
            column = Column(dtype, on)
            if column not in found:
                found.append(column)
    return found


# --- targets ----------------------------------------------------------------


def target_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Every registered target by name: the built-in ones first, then third parties'."""
    found = {
        name: importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP)
        for name, value in BUILTIN_TARGETS.items()
    }
    for entry_point in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        found.setdefault(entry_point.name, entry_point)
    return found


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
    one `Skipped` item saying so; an unknown name is a `UsageError`."""
    registered = target_entry_points()
    items: list[Item] = []
    libraries: list[str] = []
    for name in names or list(registered):
        library = _library(name)
        if library not in libraries and library != "jax_dtypeguard":
            libraries.append(library)
        if name in registered:
            items += _load_registered(name, registered[name], grads_dtype)
        elif ":" in name:
            items += load_target(name)
        else:
            known = ", ".join(registered)
            raise UsageError(
                f"unknown target {name!r}: use a registered target ({known}) or "
                "module:attribute naming your Cases"
            )
    return items, libraries


def _load_registered(
    name: str, entry_point: importlib.metadata.EntryPoint, grads_dtype: str | None
) -> list[Item]:
    library = _library(entry_point.value) if name not in BUILTIN_TARGETS else _library(name)
    try:
        make = entry_point.load()
    except ImportError as error:
        return [_missing(name, error)]
    kwargs = {}
    if grads_dtype is not None and "grads_dtype" in _parameters(make):
        kwargs["grads_dtype"] = grads_dtype
    try:
        made = make(**kwargs)
    except ImportError as error:
        return [_missing(name, error)]
    except Exception as error:
        raise UsageError(
            f"target {name!r} ({library}) could not list its cases: {first_line(error)}"
        ) from None
    return _items(f"target {name!r}", made)


def _missing(name: str, error: ImportError) -> Skipped:
    module = getattr(error, "name", None) or _library(name)
    return Skipped(name, f"{module} is not installed, so its target is skipped: {INSTALL_HINT}")


def _parameters(fn: Callable[..., Any]) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def load_target(spec: str) -> list[Item]:
    """The cases named by `module:attribute` (an iterable of `Case`, or a
    callable returning one); `UsageError` when they cannot be had."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"target {spec!r} is not of the form module:attribute (or a registered "
            f"target: {', '.join(target_entry_points())})"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
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
    if isinstance(value, (Case, Subject)):
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
        if not isinstance(item, (Case, Subject, Skipped)):
            raise UsageError(
                f"{what} holds {type(item).__name__} {item!r:.60}, "
                "not a jax_dtypeguard.testing.Case"
            )
    return items


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- running ----------------------------------------------------------------


def probe(case: Case, dtype: str = "float32") -> BaseException | None:
    """What running `case` once at `dtype` raised, for a target deciding whether
    its case fits the library (`None`: it runs, drifting or not). Warnings of the
    probe are dropped: the rows record their own."""
    with warnings.catch_warnings(), enable_x64(needs_x64(jnp.dtype(dtype))):
        warnings.simplefilter("ignore")
        try:
            case._run(dtype, weak_type=True)
        except CaseError as error:
            if loop_mismatches(error.__cause__) is None and _not_applicable(error) is None:
                return error.__cause__ or error
        except Exception as error:
            return error
    return None


def first_that_runs(
    candidates: Iterable[Subject], dtype: str = "float32"
) -> Subject | BaseException:
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
    found: Iterable[tuple[Any, ...] | Skipped], rows: Callable[..., list[Item]]
) -> list[Item]:
    """The rows of what a target found: `rows(*subject)` for each subject it could
    build, and the `Skipped` row of each it could not."""
    return [row for f in found for row in ([f] if isinstance(f, Skipped) else rows(*f))]


def fails_on_problem(name: str, error: BaseException) -> Skipped:
    """The row of a subject whose step fails on every problem a target tried."""
    return Skipped(
        name,
        f"its step fails on the audit's problem ({first_line(error)}); audit it with "
        "your own Case (module:attribute target)",
    )


def _traced_inputs(case: Case, parts: Sequence[Any], args: Sequence[Any]) -> tuple[Any, Any]:
    """The case's full call as (traced leaves, static part) for a jitted step."""
    positions = case.state_arg if isinstance(case.state_arg, tuple) else (case.state_arg,)
    call = list(args)
    for position, part in sorted(zip(positions, parts), key=lambda item: item[0]):
        call.insert(position, part)
    values, rebuild = _split_static((call, dict(case.kwargs or {})), case.traced)
    return values, _Static(rebuild, (call, dict(case.kwargs or {})), case.traced)


class _Static:
    """The static half of a call, a `jit` static argument: equal when its leaves are."""

    def __init__(self, rebuild: Callable[[list[Any]], Any], tree: Any, traced: Any) -> None:
        self.rebuild = rebuild
        leaves, self.treedef = jax.tree_util.tree_flatten(tree)
        self.leaves = tuple(leaf for leaf in leaves if not _traced_leaf(leaf, traced))

    def __hash__(self) -> int:
        return hash((self.treedef, len(self.leaves)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static) or other.treedef != self.treedef:
            return False
        return all(_same(a, b) for a, b in zip(self.leaves, other.leaves))


def _traced_leaf(leaf: Any, traced: Any) -> bool:
    values, _ = _split_static([leaf], traced)
    return bool(values)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:
        return False


def _jit_compiles(case: Case, dtype: str) -> int:
    """Compilations over `JIT_STEPS` jitted steps with real arrays: the traces of
    the step (each new signature of the state is traced, then compiled, once)."""
    state, args = case.inputs(dtype)
    several = isinstance(case.state_arg, tuple)
    parts = list(state) if several else [state]
    outs: tuple[Any, ...] = (
        (case.out if isinstance(case.out, tuple) else tuple(range(len(parts))))
        if several
        else (case.out,)
    )
    traces = [0]
    rebuild_out: list[Callable[[list[Any]], Any]] = []

    def step(values: list[Any], static: _Static) -> Any:
        traces[0] += 1
        positional, keywords = static.rebuild(values)
        result = case.fn(*positional, **keywords)
        new_parts = [result if index is None else result[index] for index in outs]
        # As eqx.filter_jit: the traced half comes back, the static half is kept aside.
        dynamic, rebuild = _split_static(new_parts, case.traced)
        rebuild_out[:] = [rebuild]
        return dynamic

    jitted = jax.jit(step, static_argnums=1)
    for _ in range(JIT_STEPS):
        values, static = _traced_inputs(case, parts, args)
        dynamic = jitted(values, static)
        parts = list(rebuild_out[0](list(dynamic)))
    return traces[0]


def _cast_left(case: Case, dtype: str, weak_type: bool) -> list[Mismatch]:
    """What remains after cast mode, for a case with dtype/weak_type drift."""
    guard = Guard(
        case.fn,
        _state_plan(case.fn, case.state_arg, case.out),
        comparison=partitioned_by(case.traced),
        settings=Fixed("cast", weak_type),
        annotations=False,
    )
    return dataclasses.replace(case, fn=guarded_callable(guard))._run(dtype, weak_type=weak_type)


def _not_applicable(error: BaseException | None) -> str | None:
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
    item: Case | Subject,
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
    subject = item if isinstance(item, Subject) else Subject(item)
    case = subject.case
    x64 = column.x64 or bool(grads_dtype and needs_x64(jnp.dtype(grads_dtype)))
    result = Result(case.name, column.dtype, "ok", x64=column.x64)
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
    result: Result, subject: Subject, dtype: str, weak_type: bool, jit: bool, cast: bool
) -> None:
    case = subject.case
    try:
        mismatches = case._run(dtype, weak_type=weak_type, label=result.column)
    except CaseError as error:
        skip = _not_applicable(error)
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
            result.compiles = _jit_compiles(case, dtype)
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
    sweep = [columns([c])[0] if isinstance(c, str) else c for c in sweep]
    total = len(items) * len(sweep)
    results = []
    done = 0
    for item in items:
        for column in sweep:
            if isinstance(item, Skipped):
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
