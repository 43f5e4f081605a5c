"""pytest plugin: `--dtypeguard-strict` and `@pytest.mark.dtypeguard_strict`.

Registered through the `pytest11` entry point. It imports JAX only when a
test asks for strict mode, so installing the library costs other test
suites nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

_MARKER = "dtypeguard_strict"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jax_dtypeguard")
    group.addoption(
        "--dtypeguard-strict",
        action="store_true",
        default=False,
        help="Run every test in jax_dtypeguard strict mode: each guard checks "
        "(weak_type included), whatever mode it was declared with.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}: run this test in jax_dtypeguard strict mode "
        "(every guard checks, weak_type included).",
    )


def pytest_report_header(config: pytest.Config) -> str:
    state = (
        "on"
        if config.getoption("--dtypeguard-strict")
        else "off (per test with @pytest.mark.dtypeguard_strict)"
    )
    return f"jax_dtypeguard strict mode: {state}"


@pytest.fixture(autouse=True)
def _dtypeguard_strict(request: pytest.FixtureRequest) -> Iterator[None]:
    wanted = request.config.getoption("--dtypeguard-strict") or (
        request.node.get_closest_marker(_MARKER) is not None
    )
    if not wanted:
        yield
        return
    from ._config import strict

    with strict():
        yield
