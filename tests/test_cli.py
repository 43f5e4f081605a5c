"""`jax-dtypeguard audit`: outputs, exit statuses, bad usage, progress."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jax_dtypeguard
from jax_dtypeguard import _audit, _cli

CASES = "tests.audit_cases:cases"
TWO = ["--dtypes", "float16,float32"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    """Targets `tests.audit_cases:...` import from the repository root."""
    monkeypatch.chdir(ROOT)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def audit(capsys, *args):
    status = _cli.main(["audit", *args])
    out, err = capsys.readouterr()
    return status, out, err


# --- table --------------------------------------------------------------------


def test_table_rows_columns_details_and_totals(capsys):
    status, out, err = audit(capsys, CASES)
    assert status == 1
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["case", "float16", "bfloat16", "float32", "float32+x64", "float64"]
    assert lines[2].split() == ["decay", "ok", "ok", "ok", "ok", "ok"]
    assert lines[3].split() == [
        "promote",
        "dtype:",
        "state",
        "f16->f32",
        "dtype:",
        "state",
        "bf16->f32",
        "ok",
        "ok",
        "ok",
    ]
    assert "Details:" in out
    assert "promote (float16):" in out
    assert "  state: float16[3] -> float32[3]  (first at add" in out
    assert "[dtype]" in out
    *_, totals, next_step = out.rstrip().splitlines()
    assert totals == "2 cases x 5 columns: 8 ok, 2 drift, 0 skipped, 0 error"
    assert next_step.startswith("Next step: guard what drifts with jax_dtypeguard.optax.invariant")


def test_stable_target_exits_0_without_details(capsys):
    status, out, _ = audit(capsys, "tests.audit_cases:stable")
    assert status == 0
    assert "Details:" not in out
    assert "1 case x 5 columns: 5 ok, 0 drift, 0 skipped, 0 error" in out
    assert out.rstrip().endswith("Next step: nothing drifts; run this audit in CI to keep it so.")


def test_several_targets_and_a_callable_target(capsys):
    status, out, _ = audit(capsys, "tests.audit_cases:stable", "tests.audit_cases:make_cases", *TWO)
    assert status == 1
    rows = [line.split()[0] for line in out.splitlines()[2:5]]
    assert rows == ["decay", "decay", "promote"]


def test_weak_type_count_summary_and_no_weak_type(capsys):
    status, out, _ = audit(capsys, "tests.audit_cases:weak", "--dtypes", "float32")
    assert status == 1
    assert "weak_type: state weak->strong" in out
    assert "state: weak int32[] -> int32[]" in out
    status, out, _ = audit(
        capsys, "tests.audit_cases:weak", "--dtypes", "float32", "--no-weak-type"
    )
    assert status == 0
    assert out.splitlines()[2].split() == ["count", "ok"]


def test_a_case_that_raises_is_an_error_and_exits_1(capsys):
    status, out, _ = audit(capsys, "tests.audit_cases:broken", "--dtypes", "float32")
    assert status == 1
    assert out.splitlines()[2].split() == ["boom", "error"]
    assert "error: Case 'boom' at dtype float32" in out
    assert "RuntimeError: boom" in out


# --- markdown and JSON ----------------------------------------------------------


def test_markdown(capsys):
    status, out, _ = audit(capsys, CASES, "--format", "markdown", *TWO)
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == "| case | float16 | float32 |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[2] == "| `decay` | ok | ok |"
    assert lines[3] == "| `promote` | dtype: state f16->f32 | ok |"
    assert "### Details" in out
    assert "- **promote (float16)**" in out
    assert "  - `state: float16[3] -> float32[3]  (first at add" in out


def test_json_document(capsys):
    status, out, err = audit(capsys, CASES, "--format", "json", *TWO)
    assert status == 1
    assert err == ""
    document = json.loads(out)
    assert set(document) == {"jax_dtypeguard", "versions", "cases"}
    assert set(document["versions"]) >= {"jax", "jaxlib"}
    assert document["jax_dtypeguard"] == jax_dtypeguard.__version__
    cases = document["cases"]
    assert [(c["name"], c["dtype"], c["status"]) for c in cases] == [
        ("decay", "float16", "ok"),
        ("decay", "float32", "ok"),
        ("promote", "float16", "drift"),
        ("promote", "float32", "ok"),
    ]
    for case in cases:
        assert set(case) == {
            "name",
            "dtype",
            "x64",
            "status",
            "reason",
            "mismatches",
            "compiles",
            "warnings",
        }
        assert case["x64"] is False
        assert case["warnings"] == []
        assert case["compiles"] is None
        assert case["reason"] is None
    (mismatch,) = cases[2]["mismatches"]
    assert set(mismatch) == {"path", "kind", "expected", "got", "origin"}
    assert mismatch["path"] == "state"
    assert mismatch["kind"] == "dtype"
    assert mismatch["expected"] == "float16[3]"
    assert mismatch["got"] == "float32[3]"
    assert mismatch["origin"] is None or mismatch["origin"].startswith("first at ")


def test_json_error_and_jit_compiles(capsys):
    status, out, _ = audit(
        capsys, "tests.audit_cases:broken", "tests.audit_cases:cases", "--format", "json", "--jit"
    )
    assert status == 1
    cases = {(c["name"], c["dtype"]): c for c in json.loads(out)["cases"]}
    assert cases["boom", "float32"]["status"] == "error"
    assert "RuntimeError: boom" in cases["boom", "float32"]["reason"]
    assert cases["boom", "float32"]["compiles"] is None
    assert cases["decay", "float16"]["compiles"] == 1
    assert cases["decay", "float64"]["compiles"] == 1
    promote = cases["promote", "float16"]
    assert promote["compiles"] == 2
    assert promote["reason"].startswith("compiled 2 times in 3 jitted steps")


def test_jit_compile_drift_alone_is_drift(capsys):
    status, out, _ = audit(capsys, "tests.audit_cases:weak", "--dtypes", "float32", "--jit")
    assert status == 1
    assert "weak_type: state weak->strong; 2 compiles" in out
    assert "note: compiled 2 times in 3 jitted steps" in out


def test_cast_verification(capsys):
    status, out, _ = audit(capsys, CASES, "--cast", *TWO)
    assert status == 1
    assert "dtype: state f16->f32; cast fixes" in out
    assert "note: cast mode repairs every drift" in out
    status, out, _ = audit(capsys, CASES, "--cast", "--format", "json", *TWO)
    promote = json.loads(out)["cases"][2]
    assert promote["reason"] == "cast mode repairs every drift"


def test_output_file(capsys, tmp_path):
    target = tmp_path / "audit.json"
    status, out, err = audit(capsys, CASES, "--format", "json", "--output", str(target), *TWO)
    assert status == 1
    assert out == err == ""
    assert len(json.loads(target.read_text())["cases"]) == 4


# --- bad usage ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["no_such_module_xyz:cases"], "cannot import 'no_such_module_xyz'"),
        (["tests.audit_cases"], "unknown target 'tests.audit_cases': use a registered target"),
        (["tests.audit_cases:nothing"], "has no attribute 'nothing'"),
        (["tests.audit_cases:not_cases"], "not a jax_dtypeguard.testing.Case"),
        ([CASES, "--dtypes", "float17"], "unknown dtype 'float17'"),
        ([CASES, "--dtypes", ","], "--dtypes needs at least one dtype name"),
        (
            [CASES, "--grads-dtype", "float32"],
            "--grads-dtype applies to the 'optax' and 'optax.contrib' targets only",
        ),
        ([CASES, "--x64", "maybe"], "invalid choice: 'maybe'"),
        ([CASES, "--format", "xml"], "invalid choice: 'xml'"),
        ([CASES, "--frobnicate"], "unrecognized arguments: --frobnicate"),
        ([CASES, "--output", "/no/such/dir/out.txt"], "cannot write --output"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(capsys, args, fragment):
    status, out, err = audit(capsys, *args)
    assert status == 2
    assert out == ""
    assert err.startswith("jax-dtypeguard: error: ")
    assert fragment in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_the_command_imports_user_targets_from_the_current_directory(capsys, monkeypatch, tmp_path):
    (tmp_path / "cwd_cases.py").write_text(
        "import jax.numpy as jnp\n"
        "from jax_dtypeguard.testing import Case\n"
        "cases = [Case('halve', lambda s: s * 0.5, lambda dtype: jnp.ones(2, dtype))]\n"
    )
    monkeypatch.chdir(tmp_path)
    # As the console script starts: neither the current directory nor "" on sys.path.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_cases", raising=False)
    with pytest.raises(_audit.UsageError, match="cannot import 'cwd_cases'"):
        _audit.load_target("cwd_cases:cases")  # the library leaves sys.path alone
    status, out, _ = audit(capsys, "cwd_cases:cases", "--dtypes", "float32")
    assert status == 0
    assert out.splitlines()[2].split() == ["halve", "ok"]
    assert sys.path[0] == os.getcwd()


def test_a_target_whose_library_is_missing_is_a_skipped_row(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optimistix", None)  # import optimistix -> ImportError
    status, out, err = audit(capsys, "optimistix", "--dtypes", "float32")
    assert status == 0
    assert err == ""
    assert out.splitlines()[2].split() == ["optimistix", "skipped"]
    assert (
        "skipped: optimistix is not installed, so its target is skipped: "
        "pip install 'jax_dtypeguard[all]'"
    ) in out


def test_x64_on_adds_a_column_per_16_and_32_bit_dtype(capsys):
    status, out, _ = audit(
        capsys, "tests.audit_cases:stable", "--dtypes", "float16,float64", "--x64", "on"
    )
    assert status == 0
    assert out.splitlines()[0].split() == ["case", "float16", "float16+x64", "float64"]


def test_only_drift_shows_rows_with_something_to_report(capsys):
    status, out, _ = audit(capsys, CASES, "--only-drift", *TWO)
    assert status == 1
    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip()][:1]
    assert rows == ["promote"]
    assert "decay" not in out
    assert "2 cases x 2 columns: 3 ok, 1 drift, 0 skipped, 0 error" in out


def test_warnings_are_in_the_row(capsys):
    status, out, _ = audit(capsys, "tests.audit_cases:truncating", "--dtypes", "float32")
    assert status == 0
    # JAX's words differ between versions ("float64", "<class 'jax.numpy.float64'>").
    assert re.search(r"warning: UserWarning: Explicitly requested dtype .*float64", out)
    _, out, _ = audit(
        capsys, "tests.audit_cases:truncating", "--dtypes", "float32", "--format", "json"
    )
    (case,) = json.loads(out)["cases"]
    assert re.match(r"UserWarning: Explicitly requested dtype .*float64", case["warnings"][0])


def test_no_command_prints_help_and_exits_2(capsys):
    assert _cli.main([]) == 2
    assert "audit" in capsys.readouterr().err


def test_version_and_help(capsys):
    assert _cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"jax-dtypeguard {jax_dtypeguard.__version__}\n"
    assert _cli.main(["audit", "--help"]) == 0
    text = capsys.readouterr().out
    for fragment in ("--dtypes", "--grads-dtype", "--jit", "--cast", "exit status", "optax"):
        assert fragment in text


# --- terminals ------------------------------------------------------------------


def test_no_progress_when_not_a_tty(capsys):
    _, _, err = audit(capsys, CASES, *TWO)
    assert err == ""


def test_progress_bar_and_rich_table_on_a_terminal(monkeypatch):
    pytest.importorskip("rich")
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert _cli.main(["audit", CASES, *TWO]) == 1
    assert "auditing" in err.getvalue()
    table = out.getvalue()
    assert "┃" in table and "promote" in table  # drawn by rich
    assert "state: float16[3] -> float32[3]" in table


def test_no_progress_for_json_on_a_terminal(monkeypatch):
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert _cli.main(["audit", CASES, "--format", "json", *TWO]) == 1
    assert err.getvalue() == ""
    json.loads(out.getvalue())


def test_plain_progress_and_table_without_rich(monkeypatch):
    for name in ("rich", "rich.progress", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)  # import rich -> ImportError
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert _cli.main(["audit", CASES, *TWO]) == 1
    assert "auditing 4/4" in err.getvalue()
    assert out.getvalue().splitlines()[0].split() == ["case", "float16", "float32"]


# --- the docs page's examples are real output ------------------------------------


def _fenced(page, language, first_line):
    """The body of the fenced block of `language` whose first line is `first_line`."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", page, flags=re.S | re.M)
    (body,) = [block for block in blocks if block.startswith(first_line + "\n")]
    return body


@pytest.mark.parametrize(
    "command",
    [
        "jax-dtypeguard audit mycases:cases",
        "jax-dtypeguard audit mycases:cases --dtypes bfloat16 --jit --cast",
        "jax-dtypeguard audit mylib_audit:cases --dtypes float16,bfloat16,float32",
    ],
)
def test_docs_page_shows_real_output(capsys, monkeypatch, tmp_path, command):
    page = (Path(ROOT) / "docs" / "audit.md").read_text()
    module = command.split()[2].split(":")[0]
    (tmp_path / f"{module}.py").write_text(_fenced(page, "py", f"# {module}.py"))
    expected = _fenced(page, "console", f"$ {command}").split("\n", 1)[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    assert _cli.main(command.split()[1:]) == 1
    got = capsys.readouterr().out
    assert [line.rstrip() for line in got.splitlines()] == expected.splitlines()


# --- end to end -----------------------------------------------------------------


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "jax_dtypeguard", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_m_audit_user_target():
    done = _run("audit", CASES, *TWO)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[3].split()[:4] == ["promote", "dtype:", "state", "f16->f32"]
    assert done.stderr == ""


def test_python_m_bad_target_has_no_traceback():
    done = _run("audit", "no_such_module_xyz:cases")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("jax-dtypeguard: error: cannot import 'no_such_module_xyz'")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_python_m_audit_optimistix_and_diffrax():
    pytest.importorskip("optimistix")
    pytest.importorskip("diffrax")
    done = _run(
        "audit", "optimistix", "diffrax", "--dtypes", "float32,float32+x64", "--format", "json"
    )
    assert done.returncode == 1, done.stderr  # Optimistix's BestSoFar* drift
    assert done.stderr == ""
    document = json.loads(done.stdout)
    assert set(document["versions"]) >= {"jax", "jaxlib", "optimistix", "diffrax"}
    by_name = {(c["name"], c["x64"]): c["status"] for c in document["cases"]}
    assert by_name["optimistix.BFGS", False] == by_name["diffrax.Tsit5", True] == "ok"
    assert {c["status"] for c in document["cases"]} <= {"ok", "drift", "skipped"}


# --- recompiles -----------------------------------------------------------------

# A program whose module-level jitted step compiles twice: once for a float32
# array, once for a Python float (weak). It prints how python ran it.
PROGRAM = """\
import sys

import jax
import jax.numpy as jnp

import helper


@jax.jit
def step(x):
    return x * 2


print("name", __name__, "argv", sys.argv[1:], "helper", helper.VALUE)
step(jnp.float32(1))
step(1.0)
"""


@pytest.fixture
def program(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 7\n")  # found next to the script, as python does
    script = tmp_path / "train.py"
    script.write_text(PROGRAM)
    return script


def recompiles(capsys, *args):
    status = _cli.main(["recompiles", *args])
    out, err = capsys.readouterr()
    return status, out, err


def _function(document, name):
    (found,) = [f for f in document["functions"] if f["name"] == name]
    return found


def test_recompiles_runs_the_script_as_main_and_explains_module_level_jit(capsys, program):
    status, out, err = recompiles(capsys, str(program), "--lr", "0.1", "-m", "x")
    assert status == 0
    assert out == "name __main__ argv ['--lr', '0.1', '-m', 'x'] helper 7\n"
    assert "step" in err
    assert "x: float32[] -> weak float32[] (Python float)" in err
    assert str(program.parent) not in sys.path  # restored


def test_recompiles_json_to_a_file(capsys, program, tmp_path):
    target = tmp_path / "report.json"
    status, out, err = recompiles(
        capsys, "--format", "json", "--output", str(target), str(program), "a"
    )
    assert (status, err) == (0, "")
    assert out.startswith("name __main__ argv ['a']")
    step = _function(json.loads(target.read_text()), "step")
    assert step["compiles"] == 2
    (recompile,) = step["recompiles"]
    assert [m["kind"] for m in recompile["mismatches"]] == ["weak_type"]


def test_recompiles_json_goes_to_stderr_by_default(capsys, program):
    status, _, err = recompiles(capsys, "--format", "json", str(program))
    assert status == 0
    assert _function(json.loads(err), "step")["compiles"] == 2


def test_recompiles_runs_a_module_with_dash_m(capsys, program, monkeypatch, tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(PROGRAM.replace("import helper", "from pkg import helper"))
    (package / "helper.py").write_text("VALUE = 8\n")
    monkeypatch.chdir(tmp_path)  # python -m finds modules in the current directory
    status, out, err = recompiles(capsys, "--max-compiles", "2", "-m", "pkg.train", "--x", "1")
    assert status == 0
    assert out == "name __main__ argv ['--x', '1'] helper 8\n"
    assert "step" in err


def test_recompiles_exits_with_the_programs_status(capsys, tmp_path):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    assert recompiles(capsys, str(script))[0] == 3
    script.write_text("import sys\nsys.exit('bye')\n")
    status, _, err = recompiles(capsys, str(script))
    assert status == 1
    assert err.startswith("bye\n")


def test_recompiles_prints_an_uncaught_exception_as_python_does(capsys, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("def main():\n    raise ValueError('no data')\n\nmain()\n")
    status, _, err = recompiles(capsys, str(script))
    assert status == 1
    traceback, report = err.split("ValueError: no data\n")
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert f'File "{script}", line 4, in <module>' in traceback
    assert "runpy" not in traceback and "_program" not in traceback
    assert report.strip()  # the report is printed after the traceback


def test_recompiles_max_compiles_exceeded_exits_1(capsys, program):
    status, _, err = recompiles(capsys, "--max-compiles", "1", str(program))
    assert status == 1
    assert "RecompileError" in err
    assert f"{program}" in err  # the traceback points at the program's call


def test_recompiles_max_compiles_exceeded_exits_1_even_if_the_program_catches_it(capsys, tmp_path):
    script = tmp_path / "catches.py"
    script.write_text(
        PROGRAM.replace("import helper\n", "")
        .replace(" helper.VALUE", " 0")
        .replace(
            "step(1.0)\n",
            "try:\n    step(1.0)\nexcept Exception as error:\n    print(type(error).__name__)\n",
        )
    )
    status, out, _ = recompiles(capsys, "--max-compiles", "1", str(script))
    assert status == 1
    assert out.splitlines()[-1] == "RecompileError"


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "give the program to run: a SCRIPT or -m MODULE"),
        (["no_such_script.py"], "no such script: 'no_such_script.py'"),
        (["-m", "no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
        (["-m", "no_such_package_xyz.train"], "cannot find module 'no_such_package_xyz.train'"),
        (["--max-compiles", "0", "x.py"], "expected a whole number of compiles >= 1, got '0'"),
        (["--format", "xml", "x.py"], "invalid choice: 'xml'"),
        (["--output", "/no/such/dir/r.json", "-m", "json"], "cannot write --output"),
    ],
)
def test_recompiles_bad_usage_is_one_line_and_exit_2(capsys, args, fragment):
    status, out, err = recompiles(capsys, *args)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("jax-dtypeguard: error: ")
    assert fragment in err


def test_recompiles_help_names_the_exit_statuses(capsys):
    status, out, _ = recompiles(capsys, "--help")
    assert status == 0
    assert "(SCRIPT | -m MODULE) [ARGS ...]" in out
    assert "or 1 when --max-compiles was exceeded" in out


def test_python_m_recompiles_reaches_a_module_level_step(program):
    result = _run("recompiles", "--format", "json", str(program), "b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "name __main__ argv ['b'] helper 7\n"
    assert _function(json.loads(result.stderr), "step")["compiles"] == 2
