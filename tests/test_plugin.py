"""The pytest plugin: --dtypeguard-strict, @pytest.mark.dtypeguard_strict, the header line."""

import textwrap

import pytest

import jax_dtypeguard
from jax_dtypeguard import _config

pytest_plugins = ["pytester"]

# Inner test modules: each test reports the strict setting it sees, and whether
# a guard declared with mode="cast" raised on drift.
PROBE = textwrap.dedent(
    """
    import jax.numpy as jnp
    import pytest

    import jax_dtypeguard as dg

    def drifts(state):
        return state * jnp.float32(2)

    guarded = dg.state_dtype_invariant(drifts, mode="cast")

    def raised():
        try:
            guarded(jnp.ones(2, jnp.float16))
        except dg.StateDtypeError:
            return True
        return False

    @pytest.fixture(scope="module")
    def module_strict():
        return dg.config.strict

    def test_plain(module_strict):
        print(f"\\nPROBE plain strict={dg.config.strict} raised={raised()} module={module_strict}")

    @pytest.mark.dtypeguard_strict
    def test_marked():
        print(f"\\nPROBE marked strict={dg.config.strict} raised={raised()}")

    @pytest.mark.dtypeguard_strict(False)
    def test_opted_out():
        print(f"\\nPROBE opted_out strict={dg.config.strict} raised={raised()}")

    @pytest.mark.dtypeguard_strict
    class TestMarkedClass:
        def test_method(self):
            print(f"\\nPROBE method strict={dg.config.strict}")
    """
)


@pytest.fixture(autouse=True)
def _not_strict():
    """In-process inner runs start from strict=False, even in a --dtypeguard-strict session."""
    saved = _config.config._strict
    _config.config.update(strict=False)
    yield
    _config.config.update(strict=saved)


def probes(result):
    return sorted(line for line in result.outlines if line.startswith("PROBE"))


@pytest.fixture
def probe(pytester):
    pytester.makepyfile(test_probe=PROBE)
    return pytester


def test_header_says_whether_strict_mode_is_on(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["jax_dtypeguard strict mode: off (per test: @pytest.mark.dtypeguard_strict)"]
    )
    result = pytester.runpytest("--dtypeguard-strict")
    result.stdout.fnmatch_lines(["jax_dtypeguard strict mode: on (--dtypeguard-strict)"])


# Runs that turn warnings into errors go in a subprocess: in process, they would
# also see whatever state earlier tests of a full run left behind.
def test_marker_is_per_test_and_registered(probe):
    result = probe.runpytest_subprocess("-s", "--strict-markers", "-W", "error")
    result.assert_outcomes(passed=4, warnings=0)
    assert probes(result) == [
        "PROBE marked strict=True raised=True",
        "PROBE method strict=True",
        "PROBE opted_out strict=False raised=False",
        "PROBE plain strict=False raised=False module=False",
    ]


def test_option_makes_the_whole_session_strict_and_the_marker_can_opt_out(probe):
    result = probe.runpytest_subprocess(
        "-s", "--dtypeguard-strict", "--strict-markers", "-W", "error"
    )
    result.assert_outcomes(passed=4, warnings=0)
    assert probes(result) == [
        "PROBE marked strict=True raised=True",
        "PROBE method strict=True",
        "PROBE opted_out strict=False raised=False",
        "PROBE plain strict=True raised=True module=True",
    ]
    assert _config.config._strict is False  # restored when the session ends


def test_markers_are_listed(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.dtypeguard_strict(enabled=True): run this test in jax_dtypeguard "
            "strict mode*",
            "@pytest.mark.dtypeguard_x64(dtype): set by jax_dtypeguard.testing.parametrize_dtypes*",
        ]
    )


def test_option_is_documented_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--dtypeguard-strict*Run every test in jax_dtypeguard strict*"])


@pytest.mark.dtypeguard_strict
def test_strict_marker_works_in_this_suite_when_marked():
    assert jax_dtypeguard.config.strict is True


# The plugin is loaded by every pytest run once the library is installed: it
# must not start JAX in test suites that never ask for it.
NO_JAX = textwrap.dedent(
    """
    import sys

    def test_plugin_loaded_without_jax(pytestconfig):
        assert pytestconfig.pluginmanager.has_plugin("jax_dtypeguard")
        assert "jax_dtypeguard._pytest_plugin" in sys.modules
        assert "jax" not in sys.modules, "the jax_dtypeguard plugin imported JAX"
    """
)


@pytest.mark.xfail(
    not hasattr(jax_dtypeguard, "__getattr__"),
    reason="jax_dtypeguard/__init__.py imports JAX eagerly; the plugin, a submodule, inherits it",
    strict=True,
)
def test_plain_pytest_run_does_not_import_jax(pytester):
    pytester.makepyfile(test_no_jax=NO_JAX)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


# --dtypeguard-loops and @pytest.mark.dtypeguard_loops: what a fori_loop whose
# body widens its float16 carry gives in each test.
LOOPS_PROBE = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    import pytest

    import jax_dtypeguard as dg

    def outcome():
        try:
            x = jax.lax.fori_loop(0, 3, lambda i, x: x + jnp.float32(1), jnp.float16(0))
        except dg.StateDtypeError:
            return "report"
        except TypeError:
            return "jax-error"
        return str(x.dtype)

    def test_plain():
        print(f"\\nPROBE plain {outcome()}")

    @pytest.mark.dtypeguard_loops
    def test_marked():
        print(f"\\nPROBE marked {outcome()}")

    @pytest.mark.dtypeguard_loops("cast")
    def test_marked_cast():
        print(f"\\nPROBE marked_cast {outcome()}")
    """
)


@pytest.mark.parametrize(
    "option, plain",
    [
        ((), "jax-error"),
        (("--dtypeguard-loops",), "report"),
        (("--dtypeguard-loops=cast",), "float16"),
    ],
)
def test_loops_option_and_marker(pytester, option, plain):
    pytester.makepyfile(test_loops_probe=LOOPS_PROBE)
    result = pytester.runpytest_subprocess("-s", "--strict-markers", "-W", "error", *option)
    result.assert_outcomes(passed=3, warnings=0)
    assert probes(result) == [
        "PROBE marked report",
        "PROBE marked_cast float16",
        f"PROBE plain {plain}",
    ]
    if option:
        result.stdout.fnmatch_lines(["jax_dtypeguard loops: guarded, mode=* (--dtypeguard-loops)"])


def test_loops_option_rejects_unknown_modes(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--dtypeguard-loops=loud")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--dtypeguard-loops: invalid choice: 'loud'*"])


# --dtypeguard-recompiles and @pytest.mark.dtypeguard_max_compiles: a module-level
# jitted step compiled twice in one test (a float32 array, then a Python float),
# once in another.
RECOMPILES_PROBE = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    import pytest

    @jax.jit
    def step(x):
        return x * 2

    def test_compiles_twice():
        step(jnp.float32(1))
        step(1.0)

    def test_compiles_once():
        step(jnp.ones(3))

    @pytest.mark.dtypeguard_max_compiles(1)
    def test_over_budget():
        step(jnp.ones(4))
        step(jnp.ones(5))

    @pytest.mark.dtypeguard_max_compiles(2)
    def test_within_budget():
        step(jnp.ones(6))
        step(jnp.ones(7))
    """
)


def test_recompiles_marker_fails_the_test_at_the_compile_over_budget(pytester):
    pytester.makepyfile(test_recompiles_probe=RECOMPILES_PROBE)
    result = pytester.runpytest_subprocess("--strict-markers", "-W", "error")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*RecompileError*", "FAILED *test_over_budget*"])
    result.stdout.no_fnmatch_line("*jax_dtypeguard: recompiles*")  # no summary without the option


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_recompiles_option_summarises_each_test_that_compiled_again(pytester, workers):
    pytester.makepyfile(test_recompiles_probe=RECOMPILES_PROBE)
    result = pytester.runpytest_subprocess("--dtypeguard-recompiles", "-W", "error", *workers)
    result.assert_outcomes(passed=3, failed=1)
    summary = result.stdout.str().split("jax_dtypeguard: recompiles")[-1]
    tests = [line for line in summary.splitlines() if line.startswith("test_recompiles_probe.py")]
    assert sorted(tests) == [
        "test_recompiles_probe.py::test_compiles_twice:",
        "test_recompiles_probe.py::test_over_budget:",
        "test_recompiles_probe.py::test_within_budget:",
    ]
    assert "3 tests compiled a jitted function more than once." in summary
    assert "x: float32[] -> weak float32[] (Python float)" in summary
    if not workers:
        result.stdout.fnmatch_lines(
            ["jax_dtypeguard recompiles: explained per test (--dtypeguard-recompiles)"]
        )


def test_recompiles_summary_says_when_nothing_compiled_again(pytester):
    # jnp.sum in two dtypes compiles JAX's own jitted helper twice: eager calls, not a
    # function of the test's that compiled again.
    pytester.makepyfile(
        "import jax\nimport jax.numpy as jnp\nimport pytest\n\n"
        "@pytest.mark.dtypeguard_max_compiles(1)\n"
        "def test_once():\n    jax.jit(lambda x: x + 1)(1.0)\n"
        "    jnp.sum(jnp.ones(2)), jnp.sum(jnp.ones(2, jnp.float16))\n"
    )
    result = pytester.runpytest_subprocess("--dtypeguard-recompiles")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*= jax_dtypeguard: recompiles =*", "No test compiled a jitted function more than once."]
    )


@pytest.mark.parametrize("arguments", ["", "0", "'1'", "1, 2"])
def test_max_compiles_marker_needs_one_whole_number(pytester, arguments):
    pytester.makepyfile(
        "import pytest\n\n"
        f"@pytest.mark.dtypeguard_max_compiles({arguments})\n"
        "def test_marked():\n    pass\n"
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*dtypeguard_max_compiles*"])


def test_recompiles_option_and_marker_are_documented(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--dtypeguard-recompiles*", "*Explain every jitted function*"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.dtypeguard_max_compiles(n): fail this test*"])
