"""pytest plugin: strict mode and guarded loops, for a session or one test.

`--dtypeguard-strict` and `@pytest.mark.dtypeguard_strict`;
`--dtypeguard-loops[=check|cast|warn]` and `@pytest.mark.dtypeguard_loops`.

Registered through the `pytest11` entry point. It imports JAX only for tests
that need it (strict mode, or a `parametrize_dtypes` sweep), so installing
the library costs other test suites nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

_OPTION = "--dtypeguard-strict"
_LOOPS_OPTION = "--dtypeguard-loops"
_LOOPS_MARKER = "dtypeguard_loops"
_STRICT_MARKER = "dtypeguard_strict"
_X64_MARKER = "dtypeguard_x64"  # = jax_dtypeguard.testing.X64_MARKER, set by parametrize_dtypes
_PREVIOUS_STRICT = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jax_dtypeguard")
    group.addoption(
        _OPTION,
        action="store_true",
        default=False,
        help="Run every test in jax_dtypeguard strict mode: each guard checks "
        "(weak_type included), whatever mode it was declared with; mode='off' stays off.",
    )

    group.addoption(
        _LOOPS_OPTION,
        nargs="?",
        const="check",
        default=None,
        choices=("check", "cast", "warn"),
        help="Guard every jax.lax loop and branch (and Equinox's while loop) that the "
        "tests reach, library code included: jax_dtypeguard.guard_loops(mode) around "
        "each test (default mode: check).",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(_OPTION):
        # Session-wide, so session/module fixtures and collection are strict too.
        from ._config import config as settings

        config.stash[_PREVIOUS_STRICT] = settings._strict
        settings.update(strict=True)
    config.addinivalue_line(
        "markers",
        f"{_STRICT_MARKER}(enabled=True): run this test in jax_dtypeguard strict mode "
        "(every guard checks, weak_type included); dtypeguard_strict(False) opts a test "
        f"out of {_OPTION}.",
    )
    config.addinivalue_line(
        "markers",
        f"{_LOOPS_MARKER}(mode='check', weak_type=False): run this test within "
        "jax_dtypeguard.guard_loops: every jax.lax loop and branch it reaches is guarded.",
    )
    config.addinivalue_line(
        "markers",
        f"{_X64_MARKER}(dtype): set by jax_dtypeguard.testing.parametrize_dtypes: "
        "x64 on for a 64-bit dtype (and float32+x64), the session's setting otherwise, "
        "fixtures included.",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_PREVIOUS_STRICT, None)
    if previous is not None:
        from ._config import config as settings

        settings.update(strict=previous)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if config.getoption(_OPTION):
        lines = [f"jax_dtypeguard strict mode: on ({_OPTION})"]
    else:
        lines = [f"jax_dtypeguard strict mode: off (per test: @pytest.mark.{_STRICT_MARKER})"]
    loops = config.getoption(_LOOPS_OPTION)
    if loops is not None:
        lines.append(f"jax_dtypeguard loops: guarded, mode={loops} ({_LOOPS_OPTION})")
    return lines


@pytest.fixture(autouse=True)
def _dtypeguard_scope(request: pytest.FixtureRequest) -> Iterator[None]:
    """The marker's strict mode and a sweep's x64 setting, around the test and its fixtures."""
    # --dtypeguard-strict is set session-wide in pytest_configure; the marker is per test.
    strict = request.node.get_closest_marker(_STRICT_MARKER)
    x64 = request.node.get_closest_marker(_X64_MARKER)
    loops = request.node.get_closest_marker(_LOOPS_MARKER)
    session_loops = request.config.getoption(_LOOPS_OPTION)
    if strict is None and x64 is None and loops is None and session_loops is None:
        yield
        return
    with contextlib.ExitStack() as scopes:
        if strict is not None:
            from ._config import strict as strict_scope

            scopes.enter_context(strict_scope(*strict.args, **strict.kwargs))
        if x64 is not None:
            from .testing import x64_for

            scopes.enter_context(x64_for(*x64.args))
        if loops is not None or session_loops is not None:
            from ._loop_hook import guard_loops

            # The marker takes the mode positionally too: dtypeguard_loops("cast").
            args: tuple[Any, ...] = loops.args if loops is not None else (session_loops,)
            kwargs: dict[str, Any] = dict(loops.kwargs) if loops is not None else {}
            if args:
                kwargs.setdefault("mode", args[0])
            scopes.enter_context(guard_loops(**kwargs))
        yield
