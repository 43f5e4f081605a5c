"""The audit's Optax targets: every transformation `optax` and `optax.contrib` export.

Discovery reads the installed library (public functions annotated to return a
`GradientTransformation`, classes with a `gradient_transformation` method,
unannotated functions that turn out to build one), so a new Optax release is
audited as it is. `optimizers()` is the one discovery of Optax's optimizer
aliases that the audit, the benchmarks and the tests share.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._caches import Cache
from ..testing import AuditSubject, Case, InitCheck, SkippedCase
from ._probe import first_that_runs
from ._targets import Item, first_line

# A small params pytree: a matrix, a vector and a scalar.
SHAPES = {"matrix": (4, 3), "vector": (3,), "scalar": ()}
_MASK = {"matrix": False, "scalar": True, "vector": False}
_EXTRA_ARGUMENTS = ("value", "grad", "value_fn")


def params(dtype: str, scale: float = 1.0, shapes: dict[str, tuple[int, ...]] = SHAPES) -> Any:
    """The audit's params (or gradients, with `scale=0.1`) in `dtype`."""
    return {
        name: jnp.full(shape, scale * (i + 1), dtype)
        for i, (name, shape) in enumerate(shapes.items())
    }


def _squared_norm(tree: Any) -> Any:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class Constructor:
    """A public Optax function or class that may build a transformation.

    `certain`: its return annotation says so, or it is a class with a
    `gradient_transformation` method (`MultiSteps`); the others are tried.
    `optimizer`: defined with Optax's optimizer aliases (`adam`,
    `contrib.prodigy`), not a building block (`scale_by_adam`, `chain`); an
    unannotated one may still turn out not to build a transformation.
    """

    name: str
    fn: Callable[..., Any]
    certain: bool
    optimizer: bool


def constructors(module: Any, prefix: str = "") -> list[Constructor]:
    """Every constructor of a transformation that `module` (`optax`, `optax.contrib`)
    exports, named with `prefix` (`"contrib."`)."""
    alias_modules = ("optax._src.alias", "optax.contrib")
    found = []
    for name in sorted(dir(module), key=str.lower):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if inspect.isclass(value):
            if callable(getattr(value, "gradient_transformation", None)):
                found.append(Constructor(prefix + name, value, True, False))
            continue
        if not inspect.isfunction(value):
            continue
        annotation = _return_annotation(value)
        certain = "GradientTransformation" in annotation
        if certain or annotation == "":
            optimizer = value.__module__.startswith(alias_modules) and not name.startswith(
                "scale_by_"
            )
            found.append(Constructor(prefix + name, value, certain, optimizer))
    return found


def optimizers(optax: Any = None) -> dict[str, Callable[..., Any]]:
    """Optax's optimizer aliases (`adam`, ..., `contrib.prodigy`, ...) by name."""
    if optax is None:
        import optax
    import optax.contrib

    found = {}
    for module, prefix in ((optax, ""), (optax.contrib, "contrib.")):
        for constructor in constructors(module, prefix):
            if constructor.optimizer:
                found[constructor.name] = constructor.fn
    return found


def transformations(
    module: Any = None, prefix: str = ""
) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """`(row name, transformation)` for every transformation `module` (default:
    `optax`) exports that builds with the audit's arguments: what the `optax`
    target audits, for benchmarks that time the same set; and, by name, why
    each constructor certain to build one could not be built."""
    import optax

    values = _argument_values(optax)
    found = []
    not_built = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated aliases still build
        for constructor in constructors(module or optax, prefix):
            try:
                tx, display = _construct(constructor.name, constructor.fn, optax, values)
            except Exception as error:
                if constructor.certain:
                    not_built[constructor.name] = first_line(error)
                continue
            if isinstance(tx, optax.GradientTransformation):
                found.append((display, tx))
    return found, not_built


def _return_annotation(fn: Any) -> str:
    try:
        annotation = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return "?"
    if annotation is inspect.Signature.empty:
        return ""
    return annotation if isinstance(annotation, str) else repr(annotation)


_LABELS = Cache()  # id -> (transformation, its name in a row)


def _labelled(tx: Any, label: str) -> Any:
    _LABELS.remember(id(tx), (tx, label))
    return tx


def _argument_values(optax: Any) -> dict[str, Callable[[], Any]]:
    """Sensible values for the constructor parameters that have no default."""

    def inner() -> Any:
        return _labelled(optax.adam(1e-3), "adam")

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
        "transforms": lambda: {"adam": inner(), "sgd": _labelled(optax.sgd(1e-2), "sgd")},
        "param_labels": lambda: {"matrix": "adam", "scalar": "sgd", "vector": "sgd"},
        "measure": lambda: _squared_norm,
        "measures": lambda: {"norm": _squared_norm},
        "measure_name": lambda: "norm",
        "f": lambda: lambda updates, params: jax.tree.map(lambda g: 0.5 * g, updates),
        "inner": inner,
        "opt": inner,
        "optimizer": inner,
        "base_optimizer": inner,
        "fast_optimizer": inner,
        "adv_optimizer": lambda: _labelled(optax.sgd(1e-2), "sgd"),
        "tx": inner,
        "inner_factory": lambda: optax.adam,
        "key": lambda: 0,
        "noise_multiplier": lambda: 0.1,
        "l2_norm_clip": lambda: 1.0,
        "batch_size": lambda: 4,
        "seed": lambda: 0,
    }


def _describe(value: Any, optax: Any) -> str | None:
    """How a wrapped transformation or factory is named in a case's name."""
    labelled = _LABELS.get(id(value))
    if labelled is not None and labelled[0] is value:
        return labelled[1]
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
            if name.endswith("named_chain"):
                args.extend([("clip", parts[0]), ("adam", parts[1])])
            else:
                args.extend(parts)
            shown.append("clip_by_global_norm, adam")
            continue
        if parameter.default is not parameter.empty:
            continue
        if parameter.name not in values:
            raise LookupError(
                f"its argument {parameter.name!r} has no default and the audit has no value for it"
            )
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


def _linesearch_value(params: Any, dtype: Any) -> Any:
    leaves = jax.tree.leaves(params)
    return 0.5 * sum(jnp.sum(jnp.square(leaf.astype(dtype))) for leaf in leaves)


def _extra_arguments(tx: Any, optax: Any) -> tuple[str, ...]:
    """The keyword arguments of `update` the audit passes: `value`, `grad` and
    `value_fn` to an update that takes `**extra_args`, else those its signature
    names (and `obj_fn`, which Sophia's names)."""
    if not isinstance(tx, optax.GradientTransformationExtraArgs):
        return ()
    try:
        parameters = inspect.signature(tx.update).parameters.values()
    except (TypeError, ValueError):
        return _EXTRA_ARGUMENTS
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return _EXTRA_ARGUMENTS
    names = {p.name for p in parameters}
    return tuple(name for name in (*_EXTRA_ARGUMENTS, "obj_fn") if name in names)


def _optax_case(
    tx: Any,
    name: str,
    optax: Any,
    grads_dtype: str | None,
    make_params: Callable[[str], Any],
    mirrored: bool,
    extra: tuple[str, ...],
) -> AuditSubject:
    def grads_of(dtype: str) -> Any:
        # Lookahead's params hold fast and slow copies; the gradients are of the fast ones.
        like = getattr(make_params(dtype), "fast", make_params(dtype))
        return jax.tree.map(lambda p: jnp.full_like(p, 0.1, grads_dtype or p.dtype), like)

    def value_fn(params: Any) -> jax.Array:
        return _linesearch_value(params, grads_dtype or jax.tree.leaves(params)[0].dtype)

    def update(updates: Any, opt_state: Any, params: Any, *values: Any) -> Any:
        given = dict(zip(("value", "grad"), values))
        keywords = {"value_fn": value_fn, "obj_fn": value_fn, **given}
        return tx.update(updates, opt_state, params, **{k: keywords[k] for k in extra})

    def make_args(dtype: str) -> tuple[Any, ...]:
        params = make_params(dtype)
        grads = grads_of(dtype)
        if not extra:
            return grads, params
        return grads, params, _linesearch_value(params, grads_dtype or dtype), grads

    update.__name__ = "update"
    update.__qualname__ = f"{name}.update"
    case = Case(name, update, lambda dtype: tx.init(make_params(dtype)), make_args, 1, 1)
    init = InitCheck(
        tx.init,
        lambda dtype: (make_params(dtype),),
        reference=0,
        root="opt_state",
        mirrored=mirrored,
    )
    return AuditSubject(case, init=init, source=tx.update)


def _follows_params(constructor: Callable[..., Any]) -> bool:
    """Whether the state's per-parameter buffers follow the params' dtype: not where
    the constructor fixes their dtype by default (`accumulator_dtype=jnp.float32`)."""
    try:
        parameters = inspect.signature(constructor).parameters.values()
    except (TypeError, ValueError):
        return True
    return not any(
        p.name.endswith("_dtype") and p.default not in (None, p.empty) for p in parameters
    )


def _params_for(name: str, optax: Any) -> list[tuple[Callable[[str], Any], str | None]]:
    """The params to try, in order, each with what the row notes about them."""
    if name.split("(")[0] == "lookahead":
        return [(lambda dtype: optax.LookaheadParams.init_synced(params(dtype)), None)]
    no_scalar = {k: v for k, v in SHAPES.items() if v}
    return [
        (params, None),
        (
            lambda dtype: params(dtype, shapes=no_scalar),
            "audited without the scalar param: it rejects 0-d params",
        ),
    ]


def _items(module: Any, prefix: str, grads_dtype: str | None) -> list[Item]:
    import optax

    values = _argument_values(optax)
    items: list[Item] = []
    for constructor in constructors(module, prefix):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                tx, display = _construct(constructor.name, constructor.fn, optax, values)
            except Exception as error:
                if constructor.certain:
                    items.append(SkippedCase(constructor.name, _unbuildable(error)))
                continue
            if not isinstance(tx, optax.GradientTransformation):
                continue  # not a transformation after all
            extra = _extra_arguments(tx, optax)
            # An update taking **extra_args may need `obj_fn` (Sophia's Hessian estimate).
            extras = [extra, (*extra, "obj_fn")] if extra == _EXTRA_ARGUMENTS else [extra]
            follows = _follows_params(constructor.fn)
            subject = first_that_runs(
                dataclasses.replace(
                    _optax_case(tx, display, optax, grads_dtype, make_params, follows, names),
                    warnings=(note,) if note else (),
                )
                for make_params, note in _params_for(display, optax)
                for names in extras
            )
        noted = tuple(
            f"{w.category.__name__} while building it: {str(w.message).splitlines()[0]}"
            for w in caught
        )
        if isinstance(subject, BaseException):
            items.append(SkippedCase(display, _unusable(subject)))
        else:
            items.append(dataclasses.replace(subject, warnings=subject.warnings + noted))
    return items


def _unbuildable(error: Exception) -> str:
    return (
        f"cannot be built without arguments the audit cannot guess ({first_line(error)}); "
        "audit it with your own Case (module:attribute target)"
    )


def _unusable(error: BaseException) -> str:
    return (
        "its update fails on the audit's params (a 4x3 matrix, a 3-vector, a scalar) "
        f"with {first_line(error)}; audit it on params it accepts with your own Case "
        "(module:attribute target)"
    )


def optax_target(grads_dtype: str | None = None) -> list[Item]:
    """The `optax` target: a case for every transformation Optax exports (its
    `update`, with `opt_state` as the state), on params `{"matrix": (4, 3),
    "vector": (3,), "scalar": ()}` in the column's dtype and gradients in
    `grads_dtype` (default: the same); transformations with extra arguments get
    `value`, `grad`, `value_fn` (and `obj_fn`), as line searches need."""
    import optax

    return _items(optax, "", grads_dtype)


def contrib_target(grads_dtype: str | None = None) -> list[Item]:
    """The `optax.contrib` target: as `optax_target`, for `optax.contrib`."""
    import optax.contrib

    return _items(optax.contrib, "contrib.", grads_dtype)
