"""Whose code is this? Where the user's code is (on the stack, in a jaxpr's equations), and
what a caller wrote as the argument of a call (`invariant(optax.adamw(1e-3))` -> `adamw`)."""

from __future__ import annotations

import ast
import linecache
import os
import site
import sysconfig
import types
from typing import Any

import jax

from ._caches import memoized
from ._compat import source_frames
from ._errors import short_path


@memoized
def jax_directories() -> tuple[str, ...]:
    """The directories of JAX and jaxlib."""
    import jaxlib

    return tuple({os.path.join(os.path.dirname(f), "") for f in (jax.__file__, jaxlib.__file__)})


@memoized
def code_directories() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Directories of JAX (and this package), of the stdlib, of installed packages."""
    paths = sysconfig.get_paths()
    internal = {*jax_directories(), os.path.join(os.path.dirname(os.path.abspath(__file__)), "")}
    stdlib = {os.path.join(paths[k], "") for k in ("stdlib", "platstdlib")}
    installed = {paths["purelib"], paths["platlib"], *site.getsitepackages()}
    return tuple(internal), tuple(stdlib), tuple(os.path.join(p, "") for p in installed)


def is_user_code(path: str, *, installed: bool) -> bool:
    """Whether the source file `path` is the user's code: not JAX's, not this package's,
    not the stdlib's; an installed package's (Optax, Equinox) only where `installed`."""
    return _user_code(path, installed)


@memoized
def _user_code(path: str, installed: bool) -> bool:
    if path.startswith("<frozen"):
        return False
    internal, stdlib, packages = code_directories()
    path = os.path.abspath(path)
    if path.startswith(internal):
        return False
    if path.startswith(packages):  # installed under the stdlib directory, or beside it
        return installed
    return not path.startswith(stdlib)


def user_frame(
    frame: types.FrameType | None, *, installed: bool = False
) -> tuple[types.FrameType | None, int]:
    """The innermost frame from `frame` outwards whose code is the user's (`is_user_code`),
    and how many frames out it is."""
    level = 0
    while frame is not None:
        if is_user_code(frame.f_code.co_filename, installed=installed):
            return frame, level
        frame, level = frame.f_back, level + 1
    return None, level


def equation_location(eqn: Any) -> tuple[str, int, str] | None:
    """`(file, line, function)` of the innermost frame of the user's (or an installed
    library's) code that made the jaxpr equation `eqn`; None if JAX recorded none."""
    for file, line, function in source_frames(eqn.source_info):
        if is_user_code(file, installed=True):
            return short_path(file), line, function
    return None


def written_argument(frame: types.FrameType | None) -> tuple[str, str] | None:
    """`(name, "file:line")` of the first argument (or `tx=`) of the call `frame` is making.

    The name is the callee of an argument that is a call (`optax.adamw(1e-3)`
    -> `adamw`), or the variable or attribute an argument names (`tx`).
    `None` where the source cannot be read (a REPL, `exec`) or the argument
    is another expression.
    """
    if frame is None:
        return None
    code = frame.f_code
    try:
        positions = list(code.co_positions())[frame.f_lasti // 2]
    except IndexError:
        return None
    line, end_line, column, end_column = positions
    if None in positions:
        return None
    assert line is not None and end_line is not None
    lines = linecache.getlines(code.co_filename, frame.f_globals)[line - 1 : end_line]
    if len(lines) != end_line - line + 1:
        return None
    # Columns are UTF-8 byte offsets.
    encoded = [text.encode() for text in lines]
    encoded[-1] = encoded[-1][:end_column]
    encoded[0] = encoded[0][column:]
    try:
        call = ast.parse(b"".join(encoded).decode(), mode="eval").body
    except (SyntaxError, UnicodeDecodeError):
        return None
    if not isinstance(call, ast.Call):
        return None
    keywords = (k.value for k in call.keywords if k.arg == "tx")
    argument = call.args[0] if call.args else next(keywords, None)
    name = _name_of(argument)
    if name is None:
        return None
    return name, f"{short_path(code.co_filename)}:{line}"


def _name_of(node: ast.expr | None) -> str | None:
    while isinstance(node, (ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None
