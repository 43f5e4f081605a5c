"""The audit behind the CLI: targets, columns, case runs, warnings, jit counts, the sweep."""

import configparser
import importlib.metadata
import inspect
import json
import os
import re
import sys

import pytest

from jax_dtypeguard import _audit, _cli
from jax_dtypeguard._audit._init import InitOrigin
from jax_dtypeguard.testing import AuditSubject, InitCheck, SkippedCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ("float16", "bfloat16", "float32", "float32+x64", "float64")


@pytest.fixture(scope="module")
def optax():
    return pytest.importorskip("optax")


@pytest.fixture(scope="module")
def items(optax):
    from jax_dtypeguard._audit._optax import optax_target

    return {item.name: item for item in optax_target()}


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))  # `pytest` (not `python -m pytest`) leaves it out


def user_cases(attribute):
    return _audit.load_target(f"tests.audit_cases:{attribute}")


# --- columns ----------------------------------------------------------------------


def test_columns_are_configurations():
    labels = [c.label for c in _audit.columns(COLUMNS)]
    assert labels == list(COLUMNS)
    assert [c.x64 for c in _audit.columns(COLUMNS)] == [False, False, False, True, True]
    with_x64 = [c.label for c in _audit.columns(["float16", "float32", "float64"], x64=True)]
    assert with_x64 == ["float16", "float16+x64", "float32", "float32+x64", "float64"]
    for bad in ("float17", "object", "float17+x64"):
        with pytest.raises(_audit.UsageError, match="unknown dtype"):
            _audit.columns([bad])


def test_check_dtype():
    assert _audit.check_dtype("bfloat16") == "bfloat16"
    assert _audit.check_dtype("f4") == "float32"


# --- targets ----------------------------------------------------------------------


def _declared_targets():
    """The built-in targets as setup.cfg registers them: {name: module:attribute}."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"), encoding="utf-8")
    lines = config["options.entry_points"]["jax_dtypeguard.audit_targets"].strip().splitlines()
    return dict(line.replace(" ", "").split("=", 1) for line in lines)


def test_setup_cfg_registers_the_builtin_targets_and_they_load():
    declared = _declared_targets()
    assert list(declared) == ["optax", "optax.contrib", "optimistix", "diffrax"]
    for name, value in declared.items():
        entry_point = importlib.metadata.EntryPoint(name, value, _audit.ENTRY_POINT_GROUP)
        assert callable(entry_point.load()), value


def test_the_installed_entry_points_are_the_declared_ones():
    # The audit finds its targets through the installed metadata only: stale metadata
    # (an install older than setup.cfg) would skip them. Reinstall if this fails.
    registered = _audit.target_entry_points()
    assert {name: registered[name].value for name in _declared_targets()} == _declared_targets()
    assert list(registered) == sorted(registered)  # name order


def test_stale_metadata_of_this_package_is_bad_usage_saying_to_reinstall():
    entry_point = importlib.metadata.EntryPoint(
        "optax", "jax_dtypeguard._audit_optax:optax_target", _audit.ENTRY_POINT_GROUP
    )
    with pytest.raises(_audit.UsageError, match="installed metadata is older than its code"):
        _audit.load_registered("optax", entry_point, None)


def test_a_third_party_target_loads_through_the_same_mechanism(in_root):
    entry_point = importlib.metadata.EntryPoint(
        "mine", "tests.audit_cases:make_cases", _audit.ENTRY_POINT_GROUP
    )
    items = _audit.load_registered("mine", entry_point, None)
    assert [item.name for item in items] == ["decay", "promote"]


@pytest.mark.parametrize("library", ["optimistix", "diffrax", "optax"])
def test_a_missing_library_is_one_skipped_line(monkeypatch, library):
    monkeypatch.setitem(sys.modules, library, None)  # import -> ImportError
    (item,) = _audit.load_targets([library])[0]
    assert isinstance(item, SkippedCase)
    assert item.reason == (
        f"{library} is not installed, so its target is skipped: pip install 'jax_dtypeguard[all]'"
    )
    (result,) = _audit.audit([item], ["float32"])
    assert (result.status, result.reason) == ("skipped", item.reason)


def test_unknown_target_is_bad_usage():
    with pytest.raises(_audit.UsageError, match="unknown target 'optimistics': use a registered"):
        _audit.load_targets(["optimistics"])


def test_versions_name_jax_and_each_audited_library(optax):
    versions = _audit.library_versions(["optax", "no_such_library_xyz"])
    assert versions["jax"] and versions["jaxlib"]
    assert versions["optax"] == optax.__version__
    assert "no_such_library_xyz" not in versions


def test_load_target_forms(in_root):
    assert [c.name for c in user_cases("cases")] == ["decay", "promote"]
    assert [c.name for c in user_cases("make_cases")] == ["decay", "promote"]
    assert [c.name for c in user_cases("STABLE")] == ["decay"]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("no_such_module_xyz:cases", "cannot import 'no_such_module_xyz'"),
        ("tests.audit_cases:", "not of the form module:attribute"),
        ("tests.audit_cases:missing", "has no attribute 'missing'"),
        ("tests.audit_cases:not_cases", "holds int 1"),
        ("tests.audit_cases:WEAK.name", "is a str, not an iterable"),
    ],
)
def test_load_target_errors(in_root, spec, fragment):
    with pytest.raises(_audit.UsageError) as info:
        _audit.load_target(spec)
    assert fragment in str(info.value)


# --- running cases ----------------------------------------------------------------


def test_columns_set_x64_whatever_the_callers_setting(in_root, x64):
    import jax

    seen = {}
    (case,) = user_cases("STABLE")

    def probe(state, rate):
        seen[jax.config.jax_enable_x64] = True
        return state * rate

    import dataclasses

    for column in _audit.columns(COLUMNS):
        seen.clear()
        result = _audit.run_case(dataclasses.replace(case, fn=probe), column)
        assert result.status == "ok"
        assert list(seen) == [column.x64], column.label
        assert result.x64 is column.x64


def test_warnings_of_a_case_go_in_its_row(in_root):
    (case,) = user_cases("truncating")
    result = _audit.run_case(case, "float32")
    assert result.status == "ok"
    assert any("float64" in w and "UserWarning" in w for w in result.warnings), result.warnings
    assert _audit.run_case(case, "float64").warnings == []


def test_a_carry_error_inside_a_loop_is_drift(in_root):
    (case,) = user_cases("in_loop")
    result = _audit.run_case(case, "float16")
    assert result.status == "drift"
    (mismatch,) = result.mismatches
    assert (mismatch.kind, mismatch.expected, mismatch.got) == ("dtype", "float16[3]", "float32[3]")
    assert mismatch.path.endswith("[1]")  # the carry component JAX names
    assert mismatch.origin.primitive in ("fori_loop", "scan", "while_loop")
    assert mismatch.origin.file == "tests/audit_cases.py"
    assert "the library's own" in result.reason
    assert _audit.run_case(case, "float32").status == "ok"


def test_jit_counts_compilations_not_cache_entries(in_root):
    (case,) = user_cases("mixed_leaves")
    result = _audit.run_case(case, "float32", jit=True)
    assert (result.status, result.compiles) == ("ok", 1)


def test_a_jitted_step_that_raises_is_an_error(in_root):
    (case,) = user_cases("runtime_failure")
    result = _audit.run_case(case, "float32", jit=True)
    assert result.status == "error"
    assert "the jitted step raised" in result.reason


def test_jit_counts_a_recompilation(in_root):
    (case,) = user_cases("weak")
    result = _audit.run_case(case, "float32", jit=True)
    assert (result.status, result.compiles) == ("drift", 2)
    assert result.reason == "compiled 2 times in 3 jitted steps"


def test_failed():
    ok = _audit.Result("a", "float32", "ok")
    assert not _audit.failed([ok, _audit.Result("b", "float32", "skipped", "why")])
    assert _audit.failed([ok, _audit.Result("b", "float32", "drift")])
    assert _audit.failed([ok, _audit.Result("b", "float32", "error", "why")])


# --- the Optax target -------------------------------------------------------------


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
    assert "MultiSteps" in rows
    assert "update_moment" not in rows


def test_the_shared_optimizer_discovery(optax):
    from jax_dtypeguard._audit._optax import optimizers

    found = optimizers()
    assert {"adam", "adamw", "sgd", "lbfgs", "contrib.prodigy", "contrib.muon"} <= set(found)
    assert not any(name.split(".")[-1].startswith("scale_by_") for name in found)
    assert found["adam"] is optax.adam


def test_the_labels_of_wrapped_transformations_are_a_cache_clear_caches_empties(optax):
    import jax_dtypeguard as dg
    from jax_dtypeguard._audit import _optax

    inner = _optax._argument_values(optax)["inner"]()  # the adam a wrapper wraps, labelled
    assert _optax._describe(inner, optax) == "adam"
    dg.clear_caches()
    assert len(_optax._LABELS) == 0
    assert _optax._describe(inner, optax) is None


def test_wrappers_say_what_they_wrap(items):
    for name in (
        "adam",
        "lbfgs",
        "chain(clip_by_global_norm, adam)",
        "inject_hyperparams(adam)",
        "MultiSteps(adam)",
        "multi_transform(adam, sgd)",
        "lookahead(adam)",  # audited on LookaheadParams
    ):
        assert isinstance(items[name], AuditSubject), name


def test_skipped_rows_say_what_to_do(items):
    # sm3 rejects 0-d params: audited without the scalar, and the row says so.
    for name in ("sm3", "scale_by_sm3"):
        assert isinstance(items[name], AuditSubject), name
        assert items[name].warnings[0] == "audited without the scalar param: it rejects 0-d params"
    for item in items.values():
        if isinstance(item, SkippedCase):
            assert "your own Case" in item.reason, item.reason
            assert "IndexError" not in item.reason


@pytest.mark.parametrize("column", COLUMNS)
def test_stable_optimizers_say_ok(items, column):
    for name in ("adam", "sgd", "adamw", "MultiSteps(adam)", "chain(clip_by_global_norm, adam)"):
        result = _audit.run_case(items[name], column)
        assert (result.status, result.mismatches) == ("ok", []), (name, column)


def test_lbfgs_weak_types_drift_with_inits_line(items):
    result = _audit.run_case(items["lbfgs"], "float32")
    assert result.status == "drift"
    assert {m.kind for m in result.mismatches} == {"weak_type"}
    by_path = {m.path: m for m in result.mismatches}
    mismatch = by_path["opt_state[2].info.num_linesearch_steps"]
    assert isinstance(mismatch.origin, InitOrigin)
    assert str(mismatch.origin).startswith("built as a constant by init (optax/")
    assert "; then first at " in str(mismatch.origin)


def test_line_search_jit_compiles_twice_and_cast_repairs_it(items):
    result = _audit.run_case(
        items["scale_by_backtracking_linesearch"], "float16", jit=True, cast=True
    )
    assert result.status == "drift"
    assert result.compiles == 2
    assert result.cast_left == []
    assert result.reason == "compiled 2 times in 3 jitted steps; cast mode repairs every drift"


def test_jit_compiles_once_when_the_state_holds(items):
    result = _audit.run_case(items["sgd"], "bfloat16", jit=True, cast=True)
    assert (result.status, result.compiles, result.cast_left) == ("ok", 1, None)


@pytest.mark.parametrize(("params", "grads"), [("bfloat16", "float32"), ("float16", "float64")])
def test_mixed_precision_promotes_adam_moments(optax, params, grads):
    from jax_dtypeguard._audit._optax import optax_target

    (adam,) = [item for item in optax_target(grads) if item.name == "adam"]
    result = _audit.run_case(adam, params, grads_dtype=grads)
    assert result.status == "drift"
    paths = {m.path: (m.expected, m.got) for m in result.mismatches}
    assert paths["opt_state[0].mu['vector']"] == (f"{params}[3]", f"{grads}[3]")
    assert {m.kind for m in result.mismatches} == {"dtype"}


def test_init_buffers_that_leave_the_params_dtype_are_reported(optax):
    # A transformation whose init builds its moment in float32 for any params.
    import jax.numpy as jnp

    from jax_dtypeguard._audit._init import check_init

    def init(params):
        return {"mu": {k: jnp.zeros(v.shape) for k, v in params.items()}, "count": jnp.zeros([])}

    from jax_dtypeguard._audit._optax import params

    check = InitCheck(init, lambda dtype: (params(dtype),), reference=0, root="opt_state")
    found = check_init(check, "bfloat16", [])
    assert {m.path for m in found} == {f"opt_state['mu']['{k}']" for k in params("float32")}
    matrix = next(m for m in found if m.path.endswith("['matrix']"))
    assert (matrix.kind, matrix.expected, matrix.got) == ("dtype", "bfloat16[4,3]", "float32[4,3]")
    assert matrix.origin.file == "tests/test_audit.py"
    assert check_init(check, "float32", []) == []


# --- the full default sweep -------------------------------------------------------


def _generated(page):
    begin = "<!-- generated by: jax-dtypeguard audit --format markdown --only-drift -->\n\n"
    return page.split(begin, 1)[1].split("\n<!-- end of the generated report -->", 1)[0]


@pytest.mark.slow
def test_full_default_sweep_and_the_ecosystem_page(optax):
    items, libraries = _audit.load_targets([])
    columns = _audit.columns(COLUMNS)
    results = _audit.audit(items, columns)
    versions = _audit.library_versions(libraries)
    document = json.loads(_cli.render_json(results, versions))
    assert _audit.failed(results)  # optax 0.2.8's line searches drift
    assert document["versions"]["optax"] == optax.__version__
    cases = document["cases"]
    assert {(c["dtype"], c["x64"]) for c in cases} == {
        ("float16", False),
        ("bfloat16", False),
        ("float32", False),
        ("float32", True),
        ("float64", True),
    }
    assert {c["status"] for c in cases} <= {"ok", "drift", "skipped"}  # no error rows
    by_row = {}
    for case in cases:
        by_row.setdefault(case["name"], []).append(case["status"])
    assert by_row["adam"] == ["ok"] * 5
    assert by_row["lbfgs"] == ["drift"] * 5
    assert by_row["optimistix.BFGS"] == ["ok"] * 5
    assert by_row["diffrax.Tsit5"] == ["ok"] * 5
    for case in cases:
        if case["status"] == "drift":
            assert all(m["path"] for m in case["mismatches"])
            assert all(m["origin"] for m in case["mismatches"] if m["kind"] != "structure"), case
        if case["status"] == "skipped":
            assert case["reason"]
    with open(os.path.join(ROOT, "docs", "ecosystem.md"), encoding="utf-8") as file:
        page = _generated(file.read())
    report = _cli.render_markdown(results, [c.label for c in columns], True, versions)
    _check_ecosystem_page(page, report, {r.name for r in results}, len(columns))


def _check_ecosystem_page(page: str, report: str, cases: set[str], columns: int) -> None:
    """docs/ecosystem.md against this audit's report.

    With the versions the page names installed, the page is the report, byte for
    byte. With others (a newer Optax in a fresh environment), its rows may rightly
    differ, so what does not depend on the versions is checked instead: the same
    columns, the same libraries audited, one cell per column in every row, and no
    row for a case this audit no longer runs.
    """
    audited = _audited(report)
    if _audited(page) == audited:
        assert page == report
        return
    stale = (
        f"docs/ecosystem.md was {_audited(page)[:1].lower()}{_audited(page)[1:-1]}, not the "
        f"installed {_audited(report).removeprefix('Audited with ')[:-1]}, so only its form is "
        "checked (regenerate it: jax-dtypeguard audit --format markdown --only-drift), and "
    )
    page_lines = page.splitlines()
    assert page_lines[:2] == report.splitlines()[:2], stale + "its table has other columns"
    assert _libraries(_audited(page)) == _libraries(audited), stale + "it names other libraries"
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in page_lines[2:] if line.startswith("|")]
    assert rows, stale + "its table has no rows"
    uneven = [row[0] for row in rows if len(row) != 1 + columns]
    assert uneven == [], stale + f"these rows lack a cell per column: {uneven}"
    names = [row[0].strip().strip("`").replace("\\|", "|") for row in rows]
    gone = [name for name in names if name not in cases]
    assert gone == [], stale + f"it lists cases this audit no longer runs: {gone}"


def _audited(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("Audited with "))


def _libraries(audited: str) -> list[str]:
    """`["jax", "optax", ...]` of `Audited with jax 0.10.2, optax 0.2.8, ....`"""
    pairs = audited.removeprefix("Audited with ").rstrip(".").split(", ")
    return [pair.rsplit(" ", 1)[0] for pair in pairs]
