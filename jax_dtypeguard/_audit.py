"""The audit behind `jax-dtypeguard audit`: sweeps `Case`s over dtypes.

The default target is every optimizer Optax exports, discovered from Optax
itself. `optax` is imported only here, and only when that target is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _config
from ._compat import jit_cache_size
from ._errors import CASTABLE_KINDS, Mismatch
from ._guard import Guard, guarded_callable
from ._plan import CallPlan, StateParameter
from .testing import Case, CaseError, _split_static, x64_for

OPTAX_TARGET = "optax"
JIT_STEPS = 3


class UsageError(ValueError):
    """Bad usage of the audit: an unknown target or dtype, an import error."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A case that could not be built, and why."""

    name: str
    reason: str


@dataclasses.dataclass
class Result:
    """One case at one dtype.

    `compiles` is the number of compilations over `JIT_STEPS` jitted steps
    (`None` unless asked for); `cast_left` the mismatches that cast mode left
    (`None` unless cast mode was verified).
    """

    name: str
    dtype: str
    status: str  # "ok" | "drift" | "skipped" | "error"
    reason: str | None = None
    mismatches: list[Mismatch] = dataclasses.field(default_factory=list)
    compiles: int | None = None
    cast_left: list[Mismatch] | None = None


# --- dtypes -----------------------------------------------------------------


def check_dtype(name: str) -> str:
    """The canonical name of a numeric JAX dtype (`"f4"` -> `"float32"`), else `UsageError`."""
    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise UsageError(
            f"unknown dtype {name!r}; use JAX dtype names such as float16,bfloat16,float32,float64"
        )
    return dtype.name


# --- user targets ---------------------------------------------------------


def load_target(spec: str) -> list[Case | Skipped]:
    """The cases named by `module:attribute` (an iterable of `Case`, or a
    callable returning one); `UsageError` when they cannot be had."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(
            f"target {spec!r} is not of the form module:attribute (or '{OPTAX_TARGET}')"
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
    if isinstance(value, Case):
        value = [value]
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        items = list(value)
    except TypeError:
        raise UsageError(
            f"target {spec!r} is a {type(value).__name__}, not an iterable of "
            "jax_dtypeguard.testing.Case"
        ) from None
    for item in items:
        if not isinstance(item, (Case, Skipped)):
            raise UsageError(
                f"target {spec!r} holds {type(item).__name__} {item!r:.60}, "
                "not a jax_dtypeguard.testing.Case"
            )
    return items


# --- the Optax target -----------------------------------------------------

# A small params pytree: a matrix, a vector and a scalar.
_SHAPES = {"matrix": (4, 3), "vector": (3,), "scalar": ()}
_MASK = {"matrix": False, "scalar": True, "vector": False}


def _tree(dtype: str, scale: float) -> dict[str, jax.Array]:
    return {
        name: jnp.full(shape, scale * (i + 1), dtype)
        for i, (name, shape) in enumerate(_SHAPES.items())
    }


def _squared_norm(tree: Any) -> Any:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def _argument_values(optax: Any) -> dict[str, Callable[[], Any]]:
    """Sensible values for the constructor parameters that have no default."""

    def inner() -> Any:
        return optax.adam(1e-3)

    return {
        "learning_rate": lambda: 1e-3,
        "step_size": lambda: 0.1,
        "step_size_fn": lambda: optax.exponential_decay(1e-3, 100, 0.9),
        "decay": lambda: 0.9,
        "clipping": lambda: 0.1,
        "eta": lambda: 0.01,
        "gamma": lambda: 0.55,
        "max_delta": lambda: 1.0,
        "threshold": lambda: 1.0,
        "max_norm": lambda: 1.0,
        "max_consecutive_errors": lambda: 3,
        "every_k_schedule": lambda: 2,
        "sync_period": lambda: 2,
        "slow_step_size": lambda: 0.5,
        "max_backtracking_steps": lambda: 15,
        "max_linesearch_steps": lambda: 15,
        "should_transform_fn": lambda: lambda step: step % 2 == 0,
        "mask": lambda: dict(_MASK),
        "freeze_mask": lambda: dict(_MASK),
        "transforms": lambda: {"adam": inner(), "sgd": optax.sgd(1e-2)},
        "param_labels": lambda: {"matrix": "adam", "scalar": "sgd", "vector": "sgd"},
        "measure": lambda: _squared_norm,
        "measures": lambda: {"norm": _squared_norm},
        "measure_name": lambda: "norm",
        "f": lambda: lambda updates, params: jax.tree.map(lambda g: 0.5 * g, updates),
        "inner": inner,
        "opt": inner,
        "optimizer": inner,
        "fast_optimizer": inner,
        "tx": inner,
        "inner_factory": lambda: optax.adam,
    }


def _describe(value: Any, optax: Any) -> str | None:
    """How a wrapped transformation or factory is named in a case's name."""
    if isinstance(value, optax.GradientTransformation):
        return "adam"
    if value is optax.adam:
        return "adam"
    if isinstance(value, dict) and any(
        isinstance(v, optax.GradientTransformation) for v in value.values()
    ):
        return ", ".join(map(str, value))
    return None


def _construct(
    name: str, constructor: Callable[..., Any], optax: Any, values: dict[str, Callable[[], Any]]
) -> tuple[Any, str]:
    """Builds one transformation; returns it and its display name."""
    signature = inspect.signature(constructor)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    shown: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            if args or kwargs:
                continue
            parts = [optax.clip_by_global_norm(1.0), optax.adam(1e-3)]
            if name == "named_chain":
                args.extend([("clip", parts[0]), ("adam", parts[1])])
            else:
                args.extend(parts)
            shown.append("clip_by_global_norm, adam")
            continue
        if parameter.default is not parameter.empty:
            continue
        if parameter.name not in values:
            raise LookupError(f"needs argument {parameter.name!r}, which the audit cannot guess")
        value = values[parameter.name]()
        description = _describe(value, optax)
        if description:
            shown.append(description)
        if parameter.kind is parameter.KEYWORD_ONLY:
            kwargs[parameter.name] = value
        else:
            args.append(value)
    built = constructor(*args, **kwargs)
    if not isinstance(built, optax.GradientTransformation) and hasattr(
        built, "gradient_transformation"
    ):
        built = built.gradient_transformation()
    elif not isinstance(built, optax.GradientTransformation) and callable(built):
        # A factory of transformations (`inject_hyperparams(optax.adam)`).
        built = _construct(name, built, optax, values)[0]
    display = f"{name}({', '.join(shown)})" if shown else name
    return built, display


def _returns_transformation(constructor: Any) -> bool:
    try:
        annotation = inspect.signature(constructor).return_annotation
    except (TypeError, ValueError):
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "GradientTransformation" in text


def _candidates(optax: Any) -> list[tuple[str, Any, bool]]:
    """Optax's public functions and classes that may build a transformation.

    Each comes with whether it certainly does (its return annotation says so,
    or it is a class with a `gradient_transformation` method, `MultiSteps`);
    the others are tried, and kept if they return one.
    """
    found = []
    for name in sorted(dir(optax), key=str.lower):
        if name.startswith("_"):
            continue
        value = getattr(optax, name)
        if inspect.isclass(value):
            if callable(getattr(value, "gradient_transformation", None)):
                found.append((name, value, True))
        elif inspect.isfunction(value):
            if _returns_transformation(value):
                found.append((name, value, True))
            elif inspect.signature(value).return_annotation is inspect.Signature.empty:
                found.append((name, value, False))
    return found


def _linesearch_value(params: Any, dtype: Any) -> Any:
    leaves = jax.tree.leaves(params)
    return 0.5 * sum(jnp.sum(jnp.square(leaf.astype(dtype))) for leaf in leaves)


def _optax_case(tx: Any, name: str, optax: Any, grads_dtype: str | None) -> Case:
    extra = isinstance(tx, optax.GradientTransformationExtraArgs)

    def grads_of(dtype: str) -> Any:
        return _tree(grads_dtype or dtype, 0.1)

    def value_fn(params: Any) -> jax.Array:
        return _linesearch_value(params, grads_dtype or jax.tree.leaves(params)[0].dtype)

    if extra:

        def update_extra(updates: Any, opt_state: Any, params: Any, value: Any, grad: Any) -> Any:
            return tx.update(updates, opt_state, params, value=value, grad=grad, value_fn=value_fn)

        def make_args(dtype: str) -> tuple[Any, ...]:
            params = _tree(dtype, 1.0)
            grads = grads_of(dtype)
            return grads, params, _linesearch_value(params, grads_dtype or dtype), grads

        update: Callable[..., Any] = update_extra
    else:

        def update_plain(updates: Any, opt_state: Any, params: Any) -> Any:
            return tx.update(updates, opt_state, params)

        def make_args(dtype: str) -> tuple[Any, ...]:
            return grads_of(dtype), _tree(dtype, 1.0)

        update = update_plain

    update.__name__ = "update"
    update.__qualname__ = f"{name}.update"
    return Case(name, update, lambda dtype: tx.init(_tree(dtype, 1.0)), make_args, 1, 1)


def optax_cases(grads_dtype: str | None = None) -> list[Case | Skipped]:
    """A `Case` for every optimizer Optax exports (its `update`, with the
    params as state-holding argument), or `Skipped` where it cannot be built.

    Each runs on params `{"matrix": (4, 3), "vector": (3,), "scalar": ()}`
    in the swept dtype, with gradients in `grads_dtype` (default: the same),
    and, for transformations taking extra arguments, `value`, `grad` and
    `value_fn` (as line searches need).
    """
    try:
        import optax
    except ImportError as error:
        raise UsageError(
            f"the default target needs optax ({error}); pip install 'jax_dtypeguard[optax]'"
        ) from None
    with _quiet():
        return _optax_items(optax, grads_dtype)


def _optax_items(optax: Any, grads_dtype: str | None) -> list[Case | Skipped]:
    values = _argument_values(optax)
    items: list[Case | Skipped] = []
    for name, constructor, certain in _candidates(optax):
        try:
            tx, display = _construct(name, constructor, optax, values)
        except Exception as error:
            if certain:
                items.append(Skipped(name, f"cannot be built: {_first_line(error)}"))
            continue
        if not isinstance(tx, optax.GradientTransformation):
            continue  # not an optimizer after all
        case = _optax_case(tx, display, optax, grads_dtype)
        try:
            _probe(case)
        except Exception as error:
            items.append(Skipped(display, f"fails on the audit's inputs: {_first_line(error)}"))
            continue
        items.append(case)
    return items


def _probe(case: Case) -> None:
    """Traces one float32 step of `case` abstractly; raises what it raises."""

    def step() -> Any:
        args = list(case.make_args("float32"))
        args.insert(case.state_arg, case.make_state("float32"))
        return case.fn(*args, **dict(case.kwargs or {}))

    jax.eval_shape(step)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the libraries' warnings and log lines while cases run."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- running --------------------------------------------------------------


def _jit_compiles(case: Case, dtype: str) -> tuple[int, str | None]:
    """Compilations over `JIT_STEPS` jitted steps with real arrays."""
    state = case.make_state(dtype)
    args = list(case.make_args(dtype))
    kwargs = dict(case.kwargs or {})
    # Python scalars stay constants, as they would in a user's jitted loop.
    inputs, rebuild = _split_static((args, kwargs), (jax.Array, np.ndarray, np.generic))

    def step(state: Any, values: list[Any]) -> Any:
        positional, keywords = rebuild(values)
        positional.insert(case.state_arg, state)
        result = case.fn(*positional, **keywords)
        return result if case.out is None else result[case.out]

    jitted = jax.jit(step)
    for index in range(JIT_STEPS):
        try:
            state = jitted(state, inputs)
        except Exception as error:
            return jit_cache_size(jitted), f"jitted step {index + 1} raised {_first_line(error)}"
    return jit_cache_size(jitted), None


def _check(case: Case, dtype: str, weak_type: bool, x64: str | None) -> list[Mismatch]:
    """`case.run(dtype)`, or, where `x64` names a 64-bit dtype that the case's
    arguments hold (mixed precision), the same check with x64 on."""
    return case._run(dtype, weak_type=weak_type, widest=x64 or dtype)


def _cast_left(case: Case, dtype: str, weak_type: bool, x64: str | None) -> list[Mismatch]:
    """What remains after cast mode, for a case with dtype/weak_type drift."""
    plan = CallPlan.single(StateParameter.at(case.fn, case.state_arg, "state"), case.out)
    guard = Guard(case.fn, plan, mode="cast", weak_type=weak_type, annotations=False)
    cast_fn = guarded_callable(guard)
    return _check(dataclasses.replace(case, fn=cast_fn), dtype, weak_type, x64)


def _is_64bit(name: str) -> bool:
    dtype = jnp.dtype(name)
    return dtype.itemsize >= (16 if dtype.kind == "c" else 8)


def run_case(
    case: Case,
    dtype: str,
    *,
    weak_type: bool = True,
    jit: bool = False,
    cast: bool = False,
    grads_dtype: str | None = None,
) -> Result:
    """Audits one case at one dtype.

    `grads_dtype`: the dtype of the other arguments, when it differs from
    `dtype` (mixed precision); x64 is on if either is a 64-bit type.
    """
    x64 = grads_dtype if grads_dtype and _is_64bit(grads_dtype) and not _is_64bit(dtype) else None
    with _quiet(), _config.strict(False), x64_for(x64 or dtype):
        try:
            mismatches = _check(case, dtype, weak_type, x64)
        except CaseError as error:
            return Result(case.name, dtype, "error", str(error))
        result = Result(case.name, dtype, "drift" if mismatches else "ok", None, mismatches)
        notes = []
        if jit:
            try:
                result.compiles, note = _jit_compiles(case, dtype)
            except Exception as error:
                note = f"jit run raised {_first_line(error)}"
            if note:
                notes.append(note)
            if result.compiles is not None and result.compiles > 1:
                result.status = "drift"
                notes.insert(0, f"compiled {result.compiles} times in {JIT_STEPS} jitted steps")
        if cast and any(m.kind in CASTABLE_KINDS for m in mismatches):
            try:
                result.cast_left = _cast_left(case, dtype, weak_type, x64)
            except CaseError as error:
                result.cast_left = []
                notes.append(f"cast mode run raised: {error}")
            else:
                notes.append(_cast_note(result.cast_left))
        result.reason = "; ".join(notes) or None
        return result


def _cast_note(left: list[Mismatch]) -> str:
    if not left:
        return "cast mode repairs every drift"
    kinds = sorted({m.kind for m in left})
    if any(m.kind in CASTABLE_KINDS for m in left):
        return f"cast mode leaves {len(left)} drift(s) ({', '.join(kinds)})"
    return f"cast mode cannot repair {', '.join(kinds)} drift, so it casts nothing"


def audit(
    items: Sequence[Case | Skipped],
    dtypes: Sequence[str],
    *,
    weak_type: bool = True,
    jit: bool = False,
    cast: bool = False,
    grads_dtype: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Result]:
    """Runs every case at every dtype; `progress(done, total, label)` after each."""
    total = len(items) * len(dtypes)
    results = []
    done = 0
    for item in items:
        for dtype in dtypes:
            if isinstance(item, Skipped):
                results.append(Result(item.name, dtype, "skipped", item.reason))
            else:
                results.append(
                    run_case(
                        item,
                        dtype,
                        weak_type=weak_type,
                        jit=jit,
                        cast=cast,
                        grads_dtype=grads_dtype,
                    )
                )
            done += 1
            if progress is not None:
                progress(done, total, f"{item.name} {dtype}")
    return results


def failed(results: Iterable[Result]) -> bool:
    """Whether any result drifted or errored (the audit's exit status 1)."""
    return any(r.status in ("drift", "error") for r in results)
