"""Type errors raised inside a library's own loops, read back as drift.

When a library's own `while_loop`, `scan`, `fori_loop` or `cond` rejects a
carry (or branch output) whose type changed while a case runs, the case did
drift: JAX's message names the component and both types, and the traceback
the loop's call site. Equinox's loop buffers and closure conversion, and
Lineax's linear solves, make the same check in their own words. This module
turns those messages into `Mismatch`es; anything else stays an error.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from .._errors import Mismatch, Origin, short_path

# "while_loop body function carry input and carry output must have equal types"
_LOOP = re.compile(r"^(?P<loop>while_loop|scan|fori_loop|cond|switch)\b")
# "The input carry component c[1] has type float16[2] but the corresponding output
#  carry component has type float32[2], so the dtypes do not match."
_CARRY = re.compile(
    r"(?i:the) input carry(?: component)? (?P<path>\S+) has type (?P<expected>.+?) but the "
    r"corresponding output carry component has type (?P<got>.+?), so (?P<what>[^.;]+)"
)
# "The output of true_fun has type float16[2] but the corresponding output of false_fun
#  has type float32[2], so the dtypes do not match."
_BRANCH = re.compile(
    r"(?i:the) output of (?P<first>\S+?)(?: at (?:output )?path (?P<path>\S+))? has type "
    r"(?P<expected>.+?) but the corresponding output of (?P<second>\S+?) has type "
    r"(?P<got>.+?), so (?P<what>[^.;]+)"
)
_LIBRARY_LOOPS = ("/jax/", "/jaxlib/", "/equinox/", "/lineax/", "/jax_dtypeguard/")
# Equinox's own checks in its loops: a value set into a loop buffer (Diffrax's
# Runge-Kutta stages) in a dtype the buffer cannot hold, and a closure-converted
# function (an implicit solver's root find) called with other types than it was
# converted with.
_BUFFER = "When doing `buffer.at[i].set(value)`, then `value` must have a dtype"
_CLOSURE = "Closure-converted function called with different dynamic arguments"
# Lineax's check of a linear solve: the operator's output in other types than the vector.
_LINEAR = "Vector and operator structures do not match"
_STRUCT = re.compile(r"ShapeDtypeStruct\(shape=\(([0-9, ]*)\), dtype=(\w+)")
_TYPE = re.compile(r"\b([a-z]+\d*\[[0-9,]*\])")


def _kind(what: str, expected: str, got: str) -> str:
    if "dtype" in what:
        return "dtype"
    if "shape" in what:
        return "shape"
    if "weak" in what or expected.replace("~", "") == got.replace("~", ""):
        return "weak_type"
    return "structure"


def _call_site(error: BaseException) -> tuple[str, int, str] | None:
    """The innermost frame outside JAX and Equinox's loop machinery: the loop's caller."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        if not any(part in path for part in _LIBRARY_LOOPS):
            return short_path(frame.filename), frame.lineno or 0, frame.name
    return None


def _buffer_mismatches(error: BaseException) -> tuple[list[Mismatch], str] | None:
    """Equinox's loop buffer refusing a value of a wider dtype: the frame's locals
    hold the buffer and the value."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != "_maybe_set":
        tb = tb.tb_next
    site = _call_site(error)
    file, line, function = site or (None, None, None)
    origin = Origin("buffer.at[i].set", file, line, function)
    expected, got = "the buffer's dtype", "a dtype it cannot hold"
    if tb is not None:
        buffer, value = tb.tb_frame.f_locals.get("xs"), tb.tb_frame.f_locals.get("x")
        expected = str(getattr(buffer, "dtype", expected))
        got = str(getattr(value, "dtype", got))
    where = f" at {file}:{line} in {function}" if site else ""
    note = f"Equinox's loop buffer refused the value{where}: the library's own loop drifted"
    return [Mismatch("buffer", "dtype", expected, got, origin)], note


def _closure_mismatches(text: str, error: BaseException) -> tuple[list[Mismatch], str] | None:
    """A closure-converted function called with other argument types than it was
    converted with: each differing type is a mismatch."""
    called, _, converted = text.partition("Closure-converted with:")
    got, expected = _TYPE.findall(called), _TYPE.findall(converted)
    site = _call_site(error)
    file, line, function = site or (None, None, None)
    origin = Origin("closure_convert", file, line, function)
    mismatches = [
        Mismatch(
            f"closure_argument[{i}]",
            "dtype" if a.split("[")[0] != b.split("[")[0] else "shape",
            a,
            b,
            origin,
        )
        for i, (a, b) in enumerate(zip(expected, got))
        if a != b
    ]
    if not mismatches:
        return None
    where = f" at {file}:{line} in {function}" if site else ""
    note = f"a closure-converted function was called with other types{where}: the library drifted"
    return mismatches, note


def _linear_mismatches(text: str, error: BaseException) -> tuple[list[Mismatch], str] | None:
    """Lineax refusing a linear solve whose operator's output types differ from the
    vector's: each differing leaf is a mismatch."""
    vector, _, operator = text.partition("and an operator with")
    pairs = zip(_STRUCT.findall(vector), _STRUCT.findall(operator))
    site = _call_site(error)
    file, line, function = site or (None, None, None)
    origin = Origin("linear_solve", file, line, function)
    mismatches = []
    for i, ((shape_a, dtype_a), (shape_b, dtype_b)) in enumerate(pairs):
        a = f"{dtype_a}[{shape_a.replace(' ', '').rstrip(',')}]"
        b = f"{dtype_b}[{shape_b.replace(' ', '').rstrip(',')}]"
        if a != b:
            kind: Any = "dtype" if dtype_a != dtype_b else "shape"
            mismatches.append(Mismatch(f"operator_output[{i}]", kind, a, b, origin))
    if not mismatches:
        return None
    where = f" at {file}:{line} in {function}" if site else ""
    note = f"Lineax refused a linear solve{where}: the operator drifted from the vector's types"
    return mismatches, note


def loop_mismatches(error: BaseException | None) -> tuple[list[Mismatch], str] | None:
    """`(mismatches, note)` when `error` (or its cause) is JAX rejecting a loop
    carry or branch output whose type changed (or Equinox's loop machinery
    rejecting a value of another type), else `None`."""
    while error is not None and not isinstance(error, (TypeError, ValueError)):
        error = error.__cause__
    if error is None:
        return None
    text = str(error)
    if _BUFFER in text:
        return _buffer_mismatches(error)
    if _CLOSURE in text:
        return _closure_mismatches(text, error)
    if _LINEAR in text:
        return _linear_mismatches(text, error)
    loop = _LOOP.match(text.strip())
    found = [(m, "carry") for m in _CARRY.finditer(text)]
    found += [(m, "branch") for m in _BRANCH.finditer(text)]
    if loop is None or not found:
        return None
    site = _call_site(error)
    file, line, function = site or (None, None, None)
    name = loop.group("loop")
    mismatches = []
    for match, what in found:
        path = match.groupdict().get("path") or ""
        if what == "branch":
            path = f"{match.group('first')}{path}"  # the branch's output at JAX's path
        expected, got = match.group("expected"), match.group("got")
        origin = Origin(name, file, line, function)
        kind: Any = _kind(match.group("what"), expected, got)
        mismatches.append(Mismatch(path, kind, expected, got, origin))
    where = f" at {file}:{line} in {function}" if site else ""
    thing = "carry" if found[0][1] == "carry" else "branch outputs"
    note = f"JAX rejected the {name} {thing}{where}: the library's own {name} drifted"
    return mismatches, note
