"""jaxtyping + beartype checks of a guarded function's annotations, deep and in one memo.

`checker_for(fn, state_name)` is called once when a function is decorated. The
checker it returns is called on every guarded call with the call's arguments
and return value. It walks every annotated parameter, the state and the return
value, and descends into the fields of NamedTuples, dataclasses,
`equinox.Module`s and `flax.struct` dataclasses (their own field annotations)
and into every element of tuples, lists and dicts. Array hints are jaxtyping
checks, other hints go to beartype, and all of them run inside one jaxtyping
dimension memo, so `"n"` binds once per call.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jaxtyping
import numpy as np
from beartype.door import is_bearable

from ._caches import Cache, WeakCache
from ._compat import Tracer
from ._compat import get_shape_memo as _get_shape_memo
from ._errors import Mismatch
from ._signature import ARRAY_TYPES, LeafSignature, NotALeafError, flax_nnx

# --- jaxtyping private API (from _compat). ---------------------------------------
# The dimension sizes bound so far in the current memo, for messages only.
# `tests/test_annotations.py::test_jaxtyping_private_memo_api` fails loudly if
# jaxtyping moves it; without it, messages just lack the bindings.


def dimension_bindings() -> dict[str, Any]:
    """The sizes bound to each jaxtyping dimension name in the current memo."""
    if _get_shape_memo is None:
        return {}
    try:
        single, variadic = _get_shape_memo()[:2]
        bindings = {name: size for name, size in single.items()}
        bindings.update({f"*{name}": shape for name, (_, shape) in variadic.items()})
    except (TypeError, ValueError, AttributeError):
        return {}
    return {name: size for name, size in bindings.items() if "~~" not in name}


# ---------------------------------------------------------------------------------

_NONE_TYPE = type(None)
_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (
    list,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Iterable,
    collections.abc.Collection,
)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_LEAVES = (*ARRAY_TYPES, bool, int, float, complex, str, bytes, type(None))
# TypeVars, and forward references left inside resolved hints (recursive
# aliases such as chex's `ArrayTree`): checked by value only.
_OPEN = (typing.TypeVar, typing.ForwardRef)
_PREFIX = re.compile(r"\b(?:[a-z_]\w*\.)+(?=[A-Za-z_])")


def _has_dims(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, (jaxtyping.AbstractArray, jaxtyping.PyTree))


class _Unresolved:
    """A hint that could not be resolved (an unknown name in a string hint)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def hint_text(hint: Any) -> str:
    """A hint as a user would write it: `Float[Array, 'n']`, `State | None`."""
    if isinstance(hint, str):
        return hint
    if isinstance(hint, typing.ForwardRef):
        return hint.__forward_arg__
    if hint is _NONE_TYPE:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        text = hint.__name__ if type(hint).__module__.startswith("jaxtyping") else None
        text = text or hint.__qualname__
    else:
        text = repr(hint)
    return _PREFIX.sub("", text).replace("NoneType", "None")


def describe(value: Any) -> str:
    """What a value is, for a message: `float16[3]`, `None`, `tuple of 2`; never its data."""
    if value is None:
        return "None"
    try:
        return str(LeafSignature.of(value))
    except (NotALeafError, TypeError, AttributeError):
        pass
    kind = type(value)
    if isinstance(value, (str, bytes)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, tuple) and not hasattr(kind, "_fields"):
        return f"tuple of {len(value)}"
    if isinstance(value, list):
        return f"list of {len(value)}"
    if isinstance(value, Mapping):
        keys = ", ".join(repr(k) for k in list(value)[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"{kind.__name__} with keys [{keys}{more}]"
    return kind.__qualname__


def _is_nnx_object(value: Any) -> bool:
    nnx = flax_nnx()
    return nnx is not None and isinstance(value, nnx.Module) and not isinstance(value, type)


def _is_record(value: Any) -> bool:
    """A NamedTuple, dataclass, `equinox.Module`, `flax.struct` or Flax NNX module instance."""
    if isinstance(value, tuple):
        return hasattr(type(value), "_fields")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True
    return _is_nnx_object(value)


def _field_names(cls: type) -> list[str]:
    """A record's fields: a NamedTuple's, a dataclass's, or an NNX module's annotated attributes."""
    if issubclass(cls, tuple):
        return list(cls._fields)  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    library = ("flax.", "typing")
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(library) and klass is not object:
            names.update(dict.fromkeys(_raw_annotations(klass)))
    return list(names)


def _unwrap_variable(element: Any, hint: Any) -> tuple[Any, Any]:
    """An NNX `Variable` field as its value, and `nnx.Param[X]` as `X` (else the hint as is)."""
    nnx = flax_nnx()
    if nnx is None or not isinstance(element, nnx.Variable):
        return element, hint
    origin = typing.get_origin(hint)
    value = element.get_value() if hasattr(element, "get_value") else element.value
    if isinstance(origin, type) and issubclass(origin, nnx.Variable):
        return value, (typing.get_args(hint) or (Any,))[0]
    if isinstance(hint, type) and issubclass(hint, nnx.Variable):
        return element, hint
    return value, hint


def _raw_annotations(owner: Any) -> dict[str, Any]:
    try:
        return dict(inspect.get_annotations(owner))
    except Exception:  # an object whose annotations fail to evaluate
        fmt = getattr(getattr(sys.modules.get("annotationlib"), "Format", None), "STRING", None)
        if fmt is None:
            return {}
        try:
            return dict(inspect.get_annotations(owner, format=fmt))  # type: ignore[call-arg]
        except Exception:
            return {}


class _Stub:
    """Holds one annotation, so `typing.get_type_hints` resolves it alone."""


def _resolve(raw: dict[str, Any], globalns: dict[str, Any], localns: dict[str, Any]) -> dict:
    """Resolves each annotation on its own; a failure becomes `_Unresolved`."""
    hints: dict[str, Any] = {}
    for name, annotation in raw.items():
        stub = _Stub()
        stub.__annotations__ = {name: annotation}
        try:
            hints[name] = typing.get_type_hints(stub, globalns, localns, include_extras=True)[name]
        except Exception as error:  # any failure to evaluate a hint
            if isinstance(annotation, (str, typing.ForwardRef)):
                hints[name] = _Unresolved(f"{type(error).__name__}: {error}")
            else:  # an object with a forward reference inside: check what it can
                hints[name] = annotation
    return hints


class _Field(typing.NamedTuple):
    name: str
    hint: Any  # None: no annotation
    text: str
    owner: str  # names the field in warnings: `State.mu`


class _Record(typing.NamedTuple):
    fields: tuple[_Field, ...]
    in_order: bool  # NamedTuple fields: zip with the tuple's values
    hintless: bool  # fields, but no annotation on any of them


_RECORDS = WeakCache()  # class -> its fields


def _record(cls: type) -> _Record:
    try:
        return _RECORDS[cls]
    except KeyError:
        pass
    is_tuple = issubclass(cls, tuple)
    names = _field_names(cls)
    raw: dict[str, Any] = {}
    scopes: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for klass in reversed(cls.__mro__):
        annotations = _raw_annotations(klass)
        module = sys.modules.get(klass.__module__)
        scope = (dict(vars(module)) if module else {}, dict(vars(klass)))
        for name, annotation in annotations.items():
            raw[name], scopes[name] = annotation, scope
    try:
        resolved = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # resolve field by field instead
        resolved = {}
        for name in names:
            if name in raw:
                resolved.update(_resolve({name: raw[name]}, *scopes[name]))
    fields = []
    for name in names:
        hint = resolved.get(name, raw.get(name))
        text = hint_text(raw.get(name, hint))
        fields.append(_Field(name, hint, text, f"{cls.__qualname__}.{name}"))
    record = _Record(tuple(fields), is_tuple, bool(names) and not raw)
    _RECORDS.remember(cls, record)
    return record


# What a Python scalar argument becomes under jit/vmap: a 0-d weakly typed
# tracer of the same kind (a Python bool: a 0-d bool). It still satisfies `float`.
_SCALAR_KINDS = {bool: "b", int: "iu", float: "f", complex: "c"}


def _traced_python_scalar(value: Any, hint: Any) -> bool:
    kinds = _SCALAR_KINDS.get(hint)
    if kinds is None or not isinstance(value, Tracer):
        return False
    aval: Any = value.aval
    weak_enough = hint is bool or aval.weak_type
    return aval.shape == () and weak_enough and np.dtype(aval.dtype).kind in kinds


class _HintWalk:
    """One walk of a call's values against their hints, collecting mismatches; warnings go
    through the checker."""

    __slots__ = ("checker", "mismatches", "problems", "quiet")

    def __init__(self, checker: _Checker, quiet: bool = False) -> None:
        self.checker = checker
        self.mismatches: list[Mismatch] = []
        self.problems: list[tuple[str, str, str]] = []  # (owner, text, reason)
        self.quiet = quiet

    def problem(self, owner: str, text: str, reason: str) -> None:
        if self.quiet:
            self.problems.append((owner, text, reason))
        else:
            self.checker.warn(owner, text, reason)

    def fail(self, path: str, text: str, value: Any, dims: bool = False) -> None:
        """Records a violation; `dims`: the hint has jaxtyping dimensions to show."""
        got = describe(value)
        bindings = dimension_bindings() if dims else None
        if bindings:
            got += " where " + ", ".join(f"{k}={v}" for k, v in bindings.items())
        self.mismatches.append(Mismatch(path, "annotation", text, got))

    def walk(self, path: str, value: Any, hint: Any, text: str, owner: str) -> None:
        if hint is None or hint is Any or hint is object or isinstance(hint, _OPEN):
            self.by_value(path, value)
            return
        if isinstance(hint, _Unresolved):
            self.problem(owner, text, hint.reason)
            self.by_value(path, value)
            return
        if isinstance(hint, type) and issubclass(hint, jaxtyping.AbstractArray):
            if not isinstance(value, hint):
                self.fail(path, text, value, dims=True)
            return
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            self.walk(path, value, hint.__origin__, text, owner)
        elif origin in _UNIONS:
            self.union(path, value, typing.get_args(hint), text, owner)
        elif hint is _NONE_TYPE:
            if value is not None:
                self.fail(path, text, value)
        elif origin is None and isinstance(hint, type):
            if issubclass(hint, jaxtyping.PyTree) and hint is not jaxtyping.PyTree:
                if not isinstance(value, hint):  # every leaf, in this memo
                    self.fail(path, text, value, dims=True)
            elif not isinstance(value, hint) and not _traced_python_scalar(value, hint):
                self.fail(path, text, value)
            else:
                self.by_value(path, value)
        elif origin is tuple:
            self.tuple(path, value, typing.get_args(hint), text, owner)
        elif origin in _SEQUENCES and isinstance(value, (list, tuple)):
            if not isinstance(value, origin):
                self.fail(path, text, value)
                return
            (item,) = typing.get_args(hint) or (Any,)
            item_text = hint_text(item)
            for i, element in enumerate(value):
                self.walk(f"{path}[{i}]", element, item, item_text, owner)
        elif origin in _MAPPINGS:
            if not isinstance(value, origin):
                self.fail(path, text, value)
                return
            key, item = typing.get_args(hint) or (Any, Any)
            item_text = hint_text(item)
            for k, element in value.items():
                if key is not Any and key is not object:
                    self.bear(f"{path}[{k!r}] (key)", k, key, hint_text(key), owner)
                self.walk(f"{path}[{k!r}]", element, item, item_text, owner)
        else:
            self.bear(path, value, hint, text, owner)
            self.by_value(path, value)

    def bear(self, path: str, value: Any, hint: Any, text: str, owner: str) -> bool:
        try:
            ok = is_bearable(value, hint)
        except Exception as error:  # beartype cannot check this hint
            self.problem(owner, text, f"{type(error).__name__}: {error}".split("\n")[0])
            return True
        if not ok:
            self.fail(path, text, value)
        return ok

    def union(self, path: str, value: Any, members: tuple, text: str, owner: str) -> None:
        if value is None:
            if not any(m is _NONE_TYPE or m is Any or m is object for m in members):
                self.fail(path, text, value)
            return
        members = tuple(m for m in members if m is not _NONE_TYPE)
        if len(members) == 1:
            self.walk(path, value, members[0], text, owner)
            return
        unsure = None
        for member in members:
            trial = _HintWalk(self.checker, quiet=True)
            trial.walk(path, value, member, text, owner)
            if trial.mismatches:
                continue
            if not trial.problems:
                self.mismatches += trial.mismatches
                return
            unsure = unsure or trial
        if unsure is not None:  # no member matched, one could not be checked
            for problem in unsure.problems:
                self.problem(*problem)
            return
        self.fail(path, text, value, dims=any(map(_has_dims, members)))

    def tuple(self, path: str, value: Any, items: tuple, text: str, owner: str) -> None:
        if not isinstance(value, tuple):
            self.fail(path, text, value)
            return
        if len(items) == 2 and items[1] is Ellipsis:
            item_text = hint_text(items[0])
            for i, element in enumerate(value):
                self.walk(f"{path}[{i}]", element, items[0], item_text, owner)
            return
        if items == ((),):
            items = ()
        if len(items) != len(value):
            self.fail(path, text, value)
            return
        for i, (element, item) in enumerate(zip(value, items)):
            self.walk(f"{path}[{i}]", element, item, hint_text(item), owner)
        if _is_record(value):
            self.fields(path, value)

    def by_value(self, path: str, value: Any) -> None:
        """Descends a value with no (or an opaque) hint: records by their own hints."""
        if isinstance(value, _LEAVES):
            return
        if _is_record(value):
            self.fields(path, value)
        elif isinstance(value, (list, tuple)):
            for i, element in enumerate(value):
                self.by_value(f"{path}[{i}]", element)
        elif isinstance(value, dict):
            for k, element in value.items():
                self.by_value(f"{path}[{k!r}]", element)

    def fields(self, path: str, value: Any) -> None:
        record = _record(type(value))
        if record.hintless:
            name = type(value).__qualname__
            self.problem(name, name, "its fields carry no annotations")
        if record.in_order:
            for field, element in zip(record.fields, value):
                self.walk(f"{path}.{field.name}", element, field.hint, field.text, field.owner)
            return
        for field in record.fields:
            try:
                element = getattr(value, field.name)
            except AttributeError:
                continue
            element, hint = _unwrap_variable(element, field.hint)
            self.walk(f"{path}.{field.name}", element, hint, field.text, field.owner)


class _Plan(typing.NamedTuple):
    signature: inspect.Signature | None
    parameters: dict[str, tuple[Any, Any, str, str]]  # name -> (kind, hint, text, owner)
    returns: tuple[Any, str, str] | None  # (hint, text, owner)


def _target(fn: Callable[..., Any]) -> Any:
    target = inspect.unwrap(fn)
    while True:
        inner = getattr(target, "func", None)
        if not callable(inner) or not hasattr(target, "args"):
            return target
        target = inspect.unwrap(inner)


class _Checker:
    """The annotation check of one guarded function (see the module docstring)."""

    def __init__(
        self, fn: Callable[..., Any], target: Any, raw: dict, state_names: tuple[str, ...]
    ) -> None:
        self.fn = fn
        self.target = target
        self.raw = raw
        self.state_names = state_names
        self.name = getattr(target, "__qualname__", None) or type(fn).__qualname__
        self.plan: _Plan | None = None
        self.cache = Cache()  # eager call's signature -> its mismatches
        self.warned: set[str] = set()

    def warn(self, owner: str, text: str, reason: str) -> None:
        if owner in self.warned:
            return
        self.warned.add(owner)
        what = "" if owner == text else f" against its annotation {text!r}"
        warnings.warn(
            f"jax_dtypeguard: cannot check {owner}{what} ({reason}); "
            f"this part of {self.name} goes unchecked.",
            UserWarning,
            stacklevel=2,
        )

    def _plan(self) -> _Plan:
        if self.plan is not None:
            return self.plan
        try:
            signature: inspect.Signature | None = inspect.signature(self.fn)
        except (TypeError, ValueError):
            signature = None
        globalns = getattr(self.target, "__globals__", None)
        if globalns is None:
            module = sys.modules.get(getattr(self.target, "__module__", None) or "")
            globalns = dict(vars(module)) if module else {}
        localns: dict[str, Any] = {}
        code, closure = (
            getattr(self.target, "__code__", None),
            getattr(self.target, "__closure__", None),
        )
        if code is not None and closure:
            for name, cell in zip(code.co_freevars, closure):
                try:
                    localns[name] = cell.cell_contents
                except ValueError:
                    pass
        try:
            hints = typing.get_type_hints(self.target, globalns, localns, include_extras=True)
        except Exception:  # resolve one by one instead
            hints = _resolve(self.raw, globalns, localns)
        kinds = {}
        if signature is not None:
            kinds = {name: p.kind for name, p in signature.parameters.items()}
        parameters = {}
        for name, raw in self.raw.items():
            if name == "return" or name not in kinds:
                continue
            text = hint_text(raw)
            owner = f"parameter '{name}' of {self.name}"
            parameters[name] = (kinds[name], hints.get(name, raw), text, owner)
        returns = None
        if "return" in self.raw:
            raw = self.raw["return"]
            text = hint_text(raw)
            returns = (hints.get("return", raw), text, f"the return value of {self.name}")
        self.plan = _Plan(signature, parameters, returns)
        return self.plan

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> list:
        if jaxtyping.config.jaxtyping_disable:
            return []
        key = _eager_key(args, kwargs, result)
        if key is not None:
            try:
                return list(self.cache[key])
            except KeyError:
                pass
            except TypeError:  # unhashable static data in a treedef
                key = None
        mismatches = self.check(args, kwargs, result)
        if key is not None:
            self.cache.remember(key, tuple(mismatches))
        return mismatches

    def check(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> list:
        """The full deep check, uncached."""
        plan = self._plan()
        walk = _HintWalk(self)
        arguments: dict[str, Any] = {}
        if plan.signature is not None:
            try:
                arguments = plan.signature.bind(*args, **kwargs).arguments
            except TypeError:
                pass
        with jaxtyping.jaxtyped("context"):  # one dimension memo for the whole call
            for name, value in arguments.items():
                entry = plan.parameters.get(name)
                if entry is None:
                    if name in self.state_names:
                        walk.by_value(name, value)
                    continue
                kind, hint, text, owner = entry
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    for i, element in enumerate(value):
                        walk.walk(f"{name}[{i}]", element, hint, text, owner)
                elif kind is inspect.Parameter.VAR_KEYWORD:
                    for k, element in value.items():
                        walk.walk(f"{name}[{k!r}]", element, hint, text, owner)
                else:
                    walk.walk(name, value, hint, text, owner)
            if plan.returns is not None:
                walk.walk("return", result, *plan.returns)
            else:
                walk.by_value("return", result)
        return walk.mismatches


def _eager_key(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> Any:
    """A hashable signature of a call, or None when it is traced (no caching then)."""
    try:
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs, result))
    except Exception:  # a pytree that cannot be flattened
        return None
    keys = []
    for leaf in leaves:
        if isinstance(leaf, Tracer):
            return None
        if isinstance(leaf, jax.Array):
            keys.append(leaf.aval)
        elif isinstance(leaf, (np.ndarray, np.generic)):
            keys.append((type(leaf), leaf.shape, leaf.dtype))
        elif isinstance(leaf, (str, bytes)):
            keys.append(leaf)
        else:
            keys.append(type(leaf))
    return treedef, tuple(keys)


def checker_for(
    fn: Callable[..., Any], state_names: tuple[str, ...]
) -> Callable[[tuple[Any, ...], dict[str, Any], Any], list[Mismatch]] | None:
    """A checker of `fn`'s annotations, or None when `fn` has none.

    Cheap: hints are resolved on the first call, not here.
    """
    target = _target(fn)
    raw = _raw_annotations(target) if callable(target) else {}
    if not raw:
        return None
    return _Checker(fn, target, raw, state_names)
