"""JAX's carry and branch type errors, read back as drift.

When a library's own `while_loop`, `scan`, `fori_loop` or `cond` rejects a
carry whose type changed while a case runs, the case did drift: JAX's message
names the carry component and both types, and the traceback the loop's call
site. This module turns that message into `Mismatch`es.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from ._errors import Mismatch, Origin, short_path

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
_LIBRARY_LOOPS = ("/jax/", "/jaxlib/", "/equinox/internal/", "/jax_dtypeguard/")


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


def loop_mismatches(error: BaseException | None) -> tuple[list[Mismatch], str] | None:
    """`(mismatches, note)` when `error` (or its cause) is JAX rejecting a loop
    carry or branch output whose type changed, else `None`."""
    while error is not None and not isinstance(error, TypeError):
        error = error.__cause__
    if error is None:
        return None
    text = str(error)
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
            path = f"{match.group('first')} output{path}"
        expected, got = match.group("expected"), match.group("got")
        origin = Origin(name, file, line, function)
        kind: Any = _kind(match.group("what"), expected, got)
        mismatches.append(Mismatch(path, kind, expected, got, origin))
    where = f" at {file}:{line} in {function}" if site else ""
    thing = "carry" if found[0][1] == "carry" else "branch outputs"
    note = f"JAX rejected the {name} {thing}{where}: the library's own {name} drifted"
    return mismatches, note

