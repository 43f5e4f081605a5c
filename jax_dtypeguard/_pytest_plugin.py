"""pytest plugin: strict mode, guarded loops and explained recompiles, for a session
or one test.

`--dtypeguard-strict` and `@pytest.mark.dtypeguard_strict`;
`--dtypeguard-loops[=check|cast|warn]` and `@pytest.mark.dtypeguard_loops`;
`--dtypeguard-recompiles` and `@pytest.mark.dtypeguard_max_compiles(n)`.

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
_RECOMPILES_OPTION = "--dtypeguard-recompiles"
_MAX_COMPILES_MARKER = "dtypeguard_max_compiles"
_RECOMPILES_PROPERTY = "jax_dtypeguard_recompiles"  # a test's report, in its user_properties
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
    group.addoption(
        _RECOMPILES_OPTION,
        action="store_true",
        default=False,
        help="Explain every jitted function that compiles more than once within a test "
        "(jax_dtypeguard.explain_recompiles around each test, library code included): "
        "a summary per test at the end of the session.",
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
        f"{_MAX_COMPILES_MARKER}(n): fail this test with jax_dtypeguard.RecompileError "
        "at the call that compiles any one jitted function for the (n+1)-th time.",
    )
    if config.getoption(_RECOMPILES_OPTION):
        config.pluginmanager.register(_RecompileSummary(), "jax_dtypeguard_recompiles")
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
    if config.getoption(_RECOMPILES_OPTION):
        lines.append(f"jax_dtypeguard recompiles: explained per test ({_RECOMPILES_OPTION})")
    return lines


class _RecompileSummary:
    """Collects each test's recompile report (from its teardown report, so also from
    xdist workers) and prints them in the terminal summary."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        for name, text in report.user_properties:
            if name == _RECOMPILES_PROPERTY:
                self.reports.append((report.nodeid, str(text)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("=", "jax_dtypeguard: recompiles")
        for nodeid, text in self.reports:
            terminalreporter.write_line(f"{nodeid}:")
            for line in text.rstrip("\n").splitlines():
                terminalreporter.write_line(f"  {line}")
        count = len(self.reports)
        if count:
            tests = f"{count} test{'' if count == 1 else 's'}"
            terminalreporter.write_line(f"{tests} compiled a jitted function more than once.")
        else:
            terminalreporter.write_line("No test compiled a jitted function more than once.")


@pytest.fixture(autouse=True)
def _dtypeguard_scope(request: pytest.FixtureRequest) -> Iterator[None]:
    """The marker's strict mode and a sweep's x64 setting, around the test and its fixtures."""
    # --dtypeguard-strict is set session-wide in pytest_configure; the marker is per test.
    strict = request.node.get_closest_marker(_STRICT_MARKER)
    x64 = request.node.get_closest_marker(_X64_MARKER)
    loops = request.node.get_closest_marker(_LOOPS_MARKER)
    session_loops = request.config.getoption(_LOOPS_OPTION)
    max_compiles = request.node.get_closest_marker(_MAX_COMPILES_MARKER)
    recompiles = request.config.getoption(_RECOMPILES_OPTION)
    if (
        strict is None
        and x64 is None
        and loops is None
        and session_loops is None
        and max_compiles is None
        and not recompiles
    ):
        yield
        return
    report = None
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
        if max_compiles is not None or recompiles:
            from . import explain_recompiles

            budget = _budget(max_compiles) if max_compiles is not None else None
            report = scopes.enter_context(explain_recompiles(max_compiles=budget, quiet=True))
        yield
    if recompiles and report is not None and any(f.compiles > 1 for f in report.functions):
        request.node.user_properties.append((_RECOMPILES_PROPERTY, str(report)))


def _budget(marker: pytest.Mark) -> int:
    """The marker's `n`, checked: a positive whole number of compiles."""
    if len(marker.args) + len(marker.kwargs) != 1 or set(marker.kwargs) - {"n"}:
        raise pytest.UsageError(
            f"@pytest.mark.{_MAX_COMPILES_MARKER} takes one argument, the number of "
            f"compiles allowed per function: @pytest.mark.{_MAX_COMPILES_MARKER}(1)"
        )
    n = marker.args[0] if marker.args else marker.kwargs["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise pytest.UsageError(
            f"@pytest.mark.{_MAX_COMPILES_MARKER}(n) needs a whole number n >= 1, got {n!r}"
        )
    return n
