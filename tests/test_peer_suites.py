"""benchmarks/peer_suites.py: how it reads pytest's results, compares runs, and wraps Optax.

The suites themselves take hours; these tests check the parts that decide
what the benchmark reports: test ids and outcomes read from JUnit XML, new
failures against the plain run, and the generated plugin that puts every
Optax factory under `invariant` (run on a small test module with the real
Optax, in a pytest subprocess as the benchmark runs it).
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "peer_suites", ROOT / "benchmarks" / "peer_suites.py"
)
assert _spec is not None and _spec.loader is not None
peer_suites = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("peer_suites", peer_suites)  # its dataclasses look their module up
_spec.loader.exec_module(peer_suites)

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="optax._src.lookahead_test.LookaheadTest" name="test_lookahead"/>
  <testcase classname="tests.test_misc" name="test_inexact_asarray_jvp[float16]">
    <failure message="jax_dtypeguard.StateDtypeError: body (x.py:1) changed&#10;  carry: a -> b&#10;Hint: h">trace</failure>
  </testcase>
  <testcase classname="tests.test_misc" name="test_skipped"><skipped message="no"/></testcase>
  <testcase classname="tests.test_ad" name="test_root_find_jvp">
    <error message="worker 'gw1' crashed while running">crash</error>
  </testcase>
  <testcase classname="pytest" name="internal">
    <error message="internal error">INTERNALERROR&gt; AssertionError: assert not crashitem</error>
  </testcase>
</testsuite></testsuites>
"""


def test_junit_outcomes_and_ids(tmp_path):
    path = tmp_path / "run.xml"
    path.write_text(JUNIT, encoding="utf-8")
    outcomes, messages, internal = peer_suites._read_junit(path)
    assert internal == "internal error"  # pytest's INTERNALERROR: not a test to run again
    assert outcomes == {
        "optax/_src/lookahead_test.py::LookaheadTest::test_lookahead": "passed",
        "tests/test_misc.py::test_inexact_asarray_jvp[float16]": "failed",
        "tests/test_misc.py::test_skipped": "skipped",
        "tests/test_ad.py::test_root_find_jvp": "error",
    }
    assert messages["tests/test_misc.py::test_inexact_asarray_jvp[float16]"] == (
        "jax_dtypeguard.StateDtypeError: body (x.py:1) changed | carry: a -> b | Hint: h"
    )


def test_new_failures_are_those_that_passed_plain():
    plain = peer_suites.Run(
        "plain",
        {"a": "passed", "b": "failed", "c": "error", "d": "passed", "e": "skipped"},
        {},
        1,
        0,
    )
    guarded = peer_suites.Run(
        "guarded",
        {"a": "failed", "b": "failed", "c": "passed", "e": "error"},
        {"a": "drift in a", "b": "same", "e": "drift in e"},
        2,
        1,
    )
    compared = peer_suites._compare(plain, guarded)
    assert compared["new_failures"] == [
        {"test": "a", "plain": "passed", "message": "drift in a"},
        {"test": "e", "plain": "skipped", "message": "drift in e"},
    ]
    assert compared["fixed"] == ["c"]
    assert compared["not_run_when_guarded"] == ["d"]
    assert plain.counts() == {"passed": 2, "failed": 1, "error": 1, "skipped": 1}


@pytest.mark.parametrize("failures", [["t.py::a", "t.py::c", "pkg.t"], []], ids=["some", "none"])
def test_plain_failures_runs_plain_only_where_the_guarded_run_failed(
    monkeypatch, tmp_path, failures
):
    calls = []

    def run_pytest(suite, label, root, targets, extra, workdir, **common):
        calls.append((label, list(targets), list(extra)))
        if label == "guarded":
            outcomes = {"t.py::a": "failed", "t.py::b": "passed", "t.py::c": "error"}
            outcomes["pkg.t"] = "error"  # a module that failed to collect
            outcomes = {test: o if test in failures else "passed" for test, o in outcomes.items()}
            return peer_suites.Run(label, outcomes, dict.fromkeys(failures, "why"), 9, 1)
        rerun = {"pkg/t.py": "pkg.t"}  # JUnit names a collection error by its module
        return peer_suites.Run(label, {rerun.get(t, t): "failed" for t in targets}, {}, 1, 1)

    monkeypatch.setattr(peer_suites, "_run_pytest", run_pytest)
    suite = peer_suites.SUITES["optimistix"]
    monkeypatch.setattr(peer_suites, "_installed_version", lambda name: suite.version)
    (tmp_path / "tests").mkdir()
    args = peer_suites.argparse.Namespace(
        source=[f"optimistix={tmp_path}"],
        select=[],
        workers=2,
        limit_minutes=1.0,
        plain="failures",
        recompiles="with-guarded",
        logs=None,
    )
    result = peer_suites._run_suite(suite, args, tmp_path)
    guarded_args = [*suite.guarded_args, "--dtypeguard-recompiles"]
    expected = [("guarded", ["tests"], guarded_args)]
    rerun = ["t.py::a", "t.py::c", "pkg/t.py"]
    expected += [("plain", rerun, [])] if failures else []
    assert calls == expected
    assert result["new_failures"] == []  # each failed plain too
    assert result["plain_run"] == "only the tests that failed under the tools"
    assert result["guarded_with"] == " ".join(guarded_args)


RECOMPILES = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.test_minimise" name="test_a"><properties>
    <property name="jax_dtypeguard_recompiles" value="header&#10;&#10;step (a.py:3): 3 compiles, 0.20 s&#10;  2nd compile at b.py:9: differs&#10;solve.&lt;locals&gt;.body (c.py:7): 2 compiles, 0.10 s"/>
  </properties></testcase>
  <testcase classname="tests.test_minimise" name="test_b"><properties>
    <property name="jax_dtypeguard_recompiles" value="step (a.py:3): 2 compiles, 0.10 s"/>
  </properties></testcase>
  <testcase classname="tests.test_minimise" name="test_c"/>
</testsuite></testsuites>
"""


def test_recompile_reports_are_read_and_ranked(tmp_path):
    path = tmp_path / "run.xml"
    path.write_text(RECOMPILES, encoding="utf-8")
    reports = peer_suites._read_recompiles(path)
    assert set(reports) == {"tests/test_minimise.py::test_a", "tests/test_minimise.py::test_b"}
    summary = peer_suites._recompile_summary(reports)
    assert summary["tests_that_compiled_again"] == 2
    assert [
        (f["function"], f["location"], f["tests"], f["most_compiles"]) for f in summary["functions"]
    ] == [
        ("step", "a.py:3", 2, 3),
        ("solve.<locals>.body", "c.py:7", 1, 2),
    ]
    assert [f["why"] for f in summary["functions"]] == [["2nd compile at b.py:9: differs"], []]


@pytest.mark.slow
def test_the_generated_plugin_wraps_every_optax_factory(tmp_path):
    pytest.importorskip("optax")
    tests = tmp_path / "tree"
    tests.mkdir()
    (tests / "test_wrapped.py").write_text(
        textwrap.dedent(
            """
            import jax.numpy as jnp
            import optax
            import optax.contrib
            from optax._src import alias, transform


            def test_public_and_private_names_are_wrapped():
                for tx in (optax.adam(1e-3), alias.adam(1e-3), transform.scale_by_adam(),
                           optax.chain(optax.sgd(1.0)), optax.contrib.sam(optax.sgd(1.0),
                           optax.sgd(1.0))):
                    assert tx.update.__qualname__.startswith("invariant("), tx


            def test_other_functions_are_untouched():
                assert not hasattr(optax.apply_updates, "__wrapped__")


            def test_cast_mode_keeps_the_state_dtype():
                params = jnp.zeros(3, jnp.float16)
                tx = optax.adam(1e-3)
                _, state = tx.update(jnp.ones(3, jnp.float32), tx.init(params), params)
                assert state[0].mu.dtype == jnp.float16
            """
        ),
        encoding="utf-8",
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / f"{peer_suites._OPTAX_PLUGIN}.py").write_text(
        peer_suites._PLUGIN_SOURCE.format(mode="cast"), encoding="utf-8"
    )
    suite = peer_suites.SUITES["optax"]
    runs = {
        label: peer_suites._run_pytest(
            suite, label, tests, ["test_wrapped.py"], extra, workdir, workers=1, limit_s=600
        )
        for label, extra in [("plain", []), ("guarded", list(suite.guarded_args))]
    }
    plain, guarded = runs["plain"], runs["guarded"]
    assert guarded.counts()["passed"] == 3, guarded.messages
    assert plain.outcomes["test_wrapped.py::test_public_and_private_names_are_wrapped"] == "failed"
    assert plain.outcomes["test_wrapped.py::test_cast_mode_keeps_the_state_dtype"] == "failed"


@pytest.mark.slow
def test_a_run_stopped_at_its_time_limit_keeps_the_tests_that_finished(tmp_path):
    tests = tmp_path / "tree"
    tests.mkdir()
    (tests / "test_slow.py").write_text(
        textwrap.dedent(
            """
            import time


            def test_a_quick_one():
                pass


            def test_z_one_past_the_limit():
                time.sleep(600)
            """
        ),
        encoding="utf-8",
    )
    workdir = tmp_path / "work"
    workdir.mkdir()
    suite = peer_suites.Suite("tree", "0", "tree", in_wheel=False, guarded_args=(), ini="")
    run = peer_suites._run_pytest(
        suite, "plain", tests, ["test_slow.py"], [], workdir, workers=1, limit_s=20
    )
    assert run.exit_code is None
    assert run.seconds < 20 + peer_suites._INTERRUPT_GRACE_S
    assert run.outcomes.get("test_slow.py::test_a_quick_one") == "passed", run.outcomes
