"""Path patterns of dtype policies, matched segment by segment against leaf paths.

A path such as `opt_state[0].mu['w']` is the segments `opt_state`, `0`, `mu`,
`w`: the argument's name, then one segment per JAX key (an attribute, an
index, a dict key). A pattern is written like a path, `*` standing for one
segment, `**` for any number (none included), `*`/`?` inside a segment for
any characters / one character; `re:<regex>` is matched against the segments
joined by `/`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax

from ._caches import memoized

__all__ = ["Pattern", "path_segments", "root_segments"]

_tree = jax.tree_util

# One segment: `.name` (or `name` first), `[index]`, `['key']`, `["key"]`.
_SEGMENT = re.compile(
    r"""(?P<dot>\.)?(?P<name>[^.\[\]'"]+)|\[(?:'(?P<single>[^']*)'|"(?P<double>[^"]*)"|(?P<bare>[^\]'"]*))\]"""
)
_ANY_SEGMENTS = "**"


def split_path(text: str) -> tuple[str, ...] | None:
    """The segments of a path written as reports print it, or None where it is no path."""
    segments: list[str] = []
    position = 0
    while position < len(text):
        match = _SEGMENT.match(text, position)
        if match is None or (match["dot"] and position == 0):
            return None
        if match["name"] is not None and position > 0 and not match["dot"]:
            return None  # `a]b`: a name must follow a dot or start the path
        value = next(
            (match[g] for g in ("name", "single", "double", "bare") if match[g] is not None), ""
        )
        segments.append(value)
        position = match.end()
    return tuple(segments) if segments else None


@memoized
def root_segments(root: str) -> tuple[str, ...]:
    """The segments of an argument's name as reports print it (`args[0]` is `args`, `0`)."""
    return split_path(root) or (root,)


def _key_segment(key: Any) -> str:
    for attribute in ("name", "key", "idx"):  # GetAttrKey, DictKey/FlattenedIndexKey, SequenceKey
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return _tree.keystr((key,)).strip(".[]'\"")


def path_segments(keypath: Sequence[Any]) -> tuple[str, ...]:
    """The segments of a JAX keypath: one per key."""
    return tuple(_key_segment(key) for key in keypath)


def _segment_regex(segment: str) -> re.Pattern[str] | None:
    """A wildcard segment as a regex; None for a literal one."""
    if "*" not in segment and "?" not in segment:
        return None
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in segment)
    return re.compile("".join(parts), re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A parsed path pattern. `text` is the pattern as written."""

    text: str
    segments: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = dataclasses.field(default=None, compare=False)
    wildcards: tuple[re.Pattern[str] | None, ...] = dataclasses.field(
        default=(), compare=False, repr=False
    )

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """The pattern `text`; `ValueError` naming it when it is not a pattern."""
        if text.startswith("re:"):
            try:
                return cls(text, regex=re.compile(text[3:]))
            except re.error as error:
                raise ValueError(
                    f"Policy rule {text!r}: the regular expression does not compile ({error})."
                ) from None
        segments = split_path(text)
        if segments is None:
            raise ValueError(
                f"Policy rule {text!r} is not a path pattern. Write it as reports print "
                "paths, segments joined by dots or in brackets, with * for one segment and "
                '** for any number: "opt_state.**.nu.**", "params[\'layer_*\'].kernel", '
                'or "re:<regex>" against the segments joined by "/".'
            )
        wildcards = tuple(None if s == _ANY_SEGMENTS else _segment_regex(s) for s in segments)
        return cls(text, segments, None, wildcards)

    def matches(self, segments: Sequence[str]) -> bool:
        """Whether a leaf whose path has these segments matches the pattern."""
        if self.regex is not None:
            return self.regex.fullmatch("/".join(segments)) is not None
        pattern, wildcards = self.segments, self.wildcards
        size = len(pattern)

        def closure(states: set[int]) -> set[int]:
            reached = set(states)
            for state in states:
                while state < size and pattern[state] == _ANY_SEGMENTS:
                    state += 1
                    reached.add(state)
            return reached

        states = closure({0})
        for segment in segments:
            following = set()
            for state in states:
                if state == size:
                    continue
                if pattern[state] == _ANY_SEGMENTS:
                    following.add(state)
                elif (wildcard := wildcards[state]) is not None:
                    if wildcard.fullmatch(segment):
                        following.add(state + 1)
                elif pattern[state] == segment:
                    following.add(state + 1)
            if not following:
                return False
            states = closure(following)
        return size in states
