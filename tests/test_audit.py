"""The audit behind the CLI: Optax discovery, case runs, targets, the full sweep."""

import inspect
import json
import os
import sys

import pytest

from jax_dtypeguard import _audit, _cli
from jax_dtypeguard.testing import DTYPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def optax():
    return pytest.importorskip("optax")


@pytest.fixture(scope="module")
def items(optax):
    return {item.name: item for item in _audit.optax_cases()}


# --- discovery --------------------------------------------------------------------


def test_import_jax_dtypeguard_does_not_import_optax():
    import subprocess

    code = "import sys, jax_dtypeguard, jax_dtypeguard._cli; print('optax' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"


def test_every_optax_transformation_constructor_is_a_row(optax, items):
    exported = [
        name
        for name in dir(optax)
        if not name.startswith("_")
        and inspect.isfunction(getattr(optax, name))
        and "GradientTransformation"
        in str(inspect.signature(getattr(optax, name)).return_annotation)
    ]
    assert len(exported) > 50
    rows = {name.split("(")[0] for name in items}
    assert set(exported) <= rows
    assert "MultiSteps" in rows  # a class with .gradient_transformation()
    assert "scale_by_factored_rms" in rows  # no return annotation, built and kept
    assert "update_moment" not in rows  # not a transformation


def test_constructors_get_arguments_and_wrappers_say_what_they_wrap(items):
    for name in (
        "adam",
        "sgd",
        "lbfgs",
        "scale_by_backtracking_linesearch",
        "scale_by_zoom_linesearch",
        "chain(clip_by_global_norm, adam)",
        "inject_hyperparams(adam)",
        "MultiSteps(adam)",
        "multi_transform(adam, sgd)",
    ):
        assert isinstance(items[name], _audit.Case), name


def test_unbuildable_ones_are_skipped_with_a_reason(items):
    skipped = [item for item in items.values() if isinstance(item, _audit.Skipped)]
    for item in skipped:
        assert item.reason.startswith(("cannot be built: ", "fails on the audit's inputs: "))
    results = _audit.audit(skipped, ["float32"])
    assert all(r.status == "skipped" and r.reason for r in results)


# --- running cases ----------------------------------------------------------------


def test_adam_holds_at_every_dtype(items):
    for dtype in DTYPES:
        result = _audit.run_case(items["adam"], dtype)
        assert (result.status, result.mismatches) == ("ok", []), dtype


def test_lbfgs_weak_types_drift(items):
    # optax 0.2.8: the line search info turns from weak to strong on update.
    result = _audit.run_case(items["lbfgs"], "float32")
    assert result.status == "drift"
    assert {m.kind for m in result.mismatches} == {"weak_type"}
    assert "opt_state[2].info.num_linesearch_steps" in [m.path for m in result.mismatches]


def test_line_search_jit_compiles_twice_and_cast_repairs_it(items):
    result = _audit.run_case(
        items["scale_by_backtracking_linesearch"], "float16", jit=True, cast=True
    )
    assert result.status == "drift"
    assert result.compiles == 2
    assert result.cast_left == []
    assert result.reason == ("compiled 2 times in 3 jitted steps; cast mode repairs every drift")


def test_jit_compiles_once_when_the_state_holds(items):
    result = _audit.run_case(items["sgd"], "bfloat16", jit=True, cast=True)
    assert (result.status, result.compiles, result.cast_left) == ("ok", 1, None)


@pytest.mark.parametrize(("params", "grads"), [("bfloat16", "float32"), ("float16", "float64")])
def test_mixed_precision_promotes_adam_moments(optax, params, grads):
    (adam,) = [item for item in _audit.optax_cases(grads) if item.name == "adam"]
    result = _audit.run_case(adam, params, grads_dtype=grads)
    assert result.status == "drift"
    paths = {m.path: (m.expected, m.got) for m in result.mismatches}
    assert paths["opt_state[0].mu['vector']"] == (f"{params}[3]", f"{grads}[3]")
    assert {m.kind for m in result.mismatches} == {"dtype"}


# --- user targets -----------------------------------------------------------------


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_load_target_forms(in_root):
    assert [c.name for c in _audit.load_target("tests.audit_cases:cases")] == ["decay", "promote"]
    assert [c.name for c in _audit.load_target("tests.audit_cases:make_cases")] == [
        "decay",
        "promote",
    ]
    assert [c.name for c in _audit.load_target("tests.audit_cases:STABLE")] == ["decay"]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_xyz:cases", "cannot import 'no_such_module_xyz'"),
        ("tests.audit_cases:", "not of the form module:attribute"),
        ("tests.audit_cases:missing", "has no attribute 'missing'"),
        ("tests.audit_cases:not_cases", "holds int 1"),
        ("tests.audit_cases:WEAK.name", "is a str, not an iterable"),
        ("tests.audit_cases:WEAK.state_arg", "is a int, not an iterable"),
    ],
)
def test_load_target_errors(in_root, spec, fragment):
    with pytest.raises(_audit.UsageError) as info:
        _audit.load_target(spec)
    assert fragment in str(info.value)


def test_check_dtype():
    assert _audit.check_dtype("bfloat16") == "bfloat16"
    assert _audit.check_dtype("f4") == "float32"
    for bad in ("float17", "object", "str"):
        with pytest.raises(_audit.UsageError, match="unknown dtype"):
            _audit.check_dtype(bad)


def test_failed():
    ok = _audit.Result("a", "float32", "ok")
    assert not _audit.failed([ok, _audit.Result("b", "float32", "skipped", "why")])
    assert _audit.failed([ok, _audit.Result("b", "float32", "drift")])
    assert _audit.failed([ok, _audit.Result("b", "float32", "error", "why")])


# --- the full default sweep -------------------------------------------------------


@pytest.mark.slow
def test_full_default_sweep(optax, capsys):
    status = _cli.main(["audit", "--format", "json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 1  # optax 0.2.8's line searches drift
    cases = document["cases"]
    assert {c["dtype"] for c in cases} == set(DTYPES)
    assert len(cases) >= 4 * 80
    assert {c["status"] for c in cases} <= {"ok", "drift", "skipped", "error"}
    by_row = {}
    for case in cases:
        by_row.setdefault(case["name"], []).append(case["status"])
    assert by_row["adam"] == ["ok"] * 4
    assert by_row["sgd"] == ["ok"] * 4
    assert by_row["lbfgs"] == ["drift"] * 4
    assert sum(c["status"] == "ok" for c in cases) > len(cases) // 2
