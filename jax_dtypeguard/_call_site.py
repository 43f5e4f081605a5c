"""What a caller wrote as the argument of a call: `invariant(optax.adamw(1e-3))` -> `adamw`."""

from __future__ import annotations

import ast
import linecache
import types

from ._errors import short_path


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
