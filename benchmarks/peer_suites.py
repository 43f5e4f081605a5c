"""Peers' own test suites, run plain and under jax_dtypeguard, compared test by test.

For a pinned release of each library, the library's own tests run twice with
the same pytest command: plain, then under the project's tools:

- `optax` (0.2.8; its tests ship inside the installed wheel): every public
  factory of `optax` and `optax.contrib` that returns a `GradientTransformation`
  is wrapped in `jax_dtypeguard.optax.invariant(..., mode="cast")`, by a
  pytest plugin this script writes into a temporary directory;
- `optimistix` (0.1.0) and `diffrax` (0.7.2): `-p jax_dtypeguard
  --dtypeguard-loops=check` (every `jax.lax` loop and branch and Equinox's
  while loop guarded). Their sdists on PyPI ship no tests: the script looks
  in the sdist first (`pip download --no-binary :all:`), and otherwise needs
  `--source NAME=DIR`, a checkout of the release tag (`git clone --branch
  v0.1.0 --depth 1 <the library's repository>`), whose `tests/` (`test/` for
  Diffrax) it runs.

`--recompiles` adds a third run per suite under `--dtypeguard-recompiles`
(`--recompiles with-guarded`: the option joins the guarded run instead).
`--plain failures` runs the whole suite once, under the tools, and plain only
the tests that failed there: what a whole suite on 2 cores can afford.

Each run is a fresh `python -m pytest` with plugin autoloading off (only
xdist, jaxtyping where the library's config asks for it, and ours), results
read from JUnit XML. The report gives passed/failed/errors/skipped per run,
and the tests that fail (or error) under the tools but passed plain, with the
first line of each failure, so each can be classified as real drift or a
defect of ours. Exit status: 0 when no suite has a new failure, 1 otherwise.

    python benchmarks/peer_suites.py optax
    python benchmarks/peer_suites.py optimistix --source optimistix=../optimistix
    python benchmarks/peer_suites.py diffrax --source diffrax=../diffrax \\
        --select diffrax=test/test_adaptive_stepsize_controller.py,test/test_vmap.py
    python benchmarks/peer_suites.py optax optimistix --workers 2 --json out.json

Run it with `nice -n 19` on a shared machine; the whole of Diffrax's suite
takes hours on 2 cores (see docs/performance.md for the subset we run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This checkout's package, unless PYTHONPATH names another one.
if not any((Path(entry) / "jax_dtypeguard").is_dir() for entry in sys.path[1:] if entry):
    sys.path.insert(1, str(HERE.parent))

_OPTAX_PLUGIN = "peer_suites_optax_invariant"
_RECOMPILES_PROPERTY = "jax_dtypeguard_recompiles"  # the pytest plugin's per-test property
# A function's block in an explain_recompiles report: `step (file.py:12): 2 compiles, 0.31 s`.
_FUNCTION_LINE = re.compile(
    r"^(?P<name>\S.*?) \((?P<location>[^()]*)\): (?P<compiles>\d+) compiles"
)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A library whose own tests we run; `tests` is where they are in its source tree."""

    name: str
    version: str
    tests: str  # in the installed wheel (optax) or in a source tree (sdist, checkout)
    in_wheel: bool
    guarded_args: tuple[str, ...]
    ini: str  # the library's own pytest settings that matter, as a pytest.ini body
    plugins: tuple[str, ...] = ()


SUITES = {
    "optax": Suite(
        "optax",
        "0.2.8",
        tests="optax",
        in_wheel=True,
        guarded_args=("-p", _OPTAX_PLUGIN),
        ini="",
    ),
    "optimistix": Suite(
        "optimistix",
        "0.1.0",
        tests="tests",
        in_wheel=False,
        guarded_args=("-p", "jax_dtypeguard", "--dtypeguard-loops=check"),
        # optimistix 0.1.0's pyproject.toml, less `--benchmark-skip` (its tests use no
        # pytest-benchmark fixture).
        ini="""
            addopts = --jaxtyping-packages=optimistix,beartype.beartype(conf=beartype.BeartypeConf(strategy=beartype.BeartypeStrategy.On))
            filterwarnings =
                error
                ignore:Setting `jax_pmap_shmap_merge:DeprecationWarning
            """,
        plugins=("jaxtyping",),
    ),
    "diffrax": Suite(
        "diffrax",
        "0.7.2",
        tests="test",
        in_wheel=False,
        guarded_args=("-p", "jax_dtypeguard", "--dtypeguard-loops=check"),
        # diffrax 0.7.2's pyproject.toml.
        ini="""
            addopts = --jaxtyping-packages=diffrax,beartype.beartype(conf=beartype.BeartypeConf(strategy=beartype.BeartypeStrategy.On))
            markers = slow
            """,
        plugins=("jaxtyping",),
    ),
}

_PLUGIN_SOURCE = '''\
"""Written by benchmarks/peer_suites.py: Optax's factories under dg.optax.invariant.

Every public function of `optax` and `optax.contrib` annotated to return a
GradientTransformation (or not annotated) is replaced, in every loaded optax
module that holds it, by a function that wraps what it returns in
`jax_dtypeguard.optax.invariant(..., mode={mode!r})` when that is a
GradientTransformation, and returns anything else untouched.
"""

import functools
import importlib
import inspect
import pkgutil
import sys

import optax
import optax.contrib

import jax_dtypeguard.optax

WRAPPED = []


def _returns_a_transformation(function):
    try:
        annotation = inspect.signature(function).return_annotation
    except (TypeError, ValueError):
        return False
    return annotation is inspect.Signature.empty or "GradientTransformation" in str(annotation)


def _wrap(factory):
    @functools.wraps(factory)
    def wrapped(*args, **kwargs):
        result = factory(*args, **kwargs)
        if isinstance(result, optax.GradientTransformation):
            return jax_dtypeguard.optax.invariant(result, mode={mode!r})
        return result

    return wrapped


def _install():
    for info in pkgutil.walk_packages(optax.__path__, "optax."):
        if not info.name.endswith("_test") and ".experimental" not in info.name:
            try:
                importlib.import_module(info.name)
            except ImportError:
                pass
    replacements = {{}}
    for module in (optax, optax.contrib):
        for name in dir(module):
            value = getattr(module, name)
            if name.startswith("_") or not inspect.isfunction(value):
                continue
            if id(value) not in replacements and _returns_a_transformation(value):
                replacements[id(value)] = (value, _wrap(value))
                WRAPPED.append(f"{{module.__name__}}.{{name}}")
    for module_name, module in list(sys.modules.items()):
        if module_name != "optax" and not module_name.startswith("optax."):
            continue
        for attribute, value in list(vars(module).items()):
            found = replacements.get(id(value))
            if found is not None and found[0] is value:
                setattr(module, attribute, found[1])


_install()


def pytest_report_header(config):
    return f"peer_suites: {{len(WRAPPED)}} optax factories wrapped in invariant(mode={mode!r})"
'''


@dataclasses.dataclass
class Run:
    """One pytest run's outcome per test id."""

    label: str
    outcomes: dict[str, str]  # test id -> passed | failed | error | skipped
    messages: dict[str, str]  # test id -> first line of its failure or error
    seconds: float
    exit_code: int | None  # None: killed at the time limit
    internal_error: str | None = None  # pytest stopped early: its INTERNALERROR, first line

    def counts(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        for outcome in self.outcomes.values():
            counts[outcome] += 1
        return counts


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sdist_tests(suite: Suite, workdir: Path) -> Path | None:
    """The release's source tree from its PyPI sdist, if that sdist has the tests."""
    download = workdir / "sdist"
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--no-binary", ":all:", f"{suite.name}=={suite.version}", "-d", str(download)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    archives = sorted(download.glob(f"{suite.name}-{suite.version}.tar.gz"))
    if completed.returncode != 0 or not archives:
        return None
    with tarfile.open(archives[0]) as archive:
        archive.extractall(download, filter="data")
    source = download / f"{suite.name}-{suite.version}"
    return source if (source / suite.tests).is_dir() else None


def _write_ini(suite: Suite, workdir: Path) -> Path:
    ini = workdir / f"{suite.name}-pytest.ini"
    ini.write_text("[pytest]\n" + textwrap.dedent(suite.ini).strip() + "\n", encoding="utf-8")
    return ini


_INTERRUPT_GRACE_S = 120.0


@contextlib.contextmanager
def _process_group(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> Iterator[Any]:
    with open(log, "w", encoding="utf-8") as output:
        # A SIGTERM while the child starts would leave it running: deliver it after.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        process = None
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            yield process
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _run_pytest(
    suite: Suite,
    label: str,
    root: Path,
    targets: list[str],
    extra: list[str],
    workdir: Path,
    *,
    workers: int,
    limit_s: float,
) -> Run:
    junit = workdir / f"{suite.name}-{label}.xml"
    ini = _write_ini(suite, workdir)
    # Not -q: the log keeps the header that says which tools were on.
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    command += ["-c", str(ini), "--rootdir", str(root), "--junitxml", str(junit)]
    command += ["--continue-on-collection-errors", "-p", "xdist", "-n", str(workers)]
    for plugin in suite.plugins:
        command += ["-p", plugin]
    command += extra + targets
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(workdir), *filter(None, [env.get("PYTHONPATH", ""), str(HERE.parent)])]
    )
    start = time.perf_counter()
    log = workdir / f"{suite.name}-{label}.log"
    with _process_group(command, env, log, root) as process:
        try:
            exit_code: int | None = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            exit_code = None
            # Ctrl-C, not a kill: pytest stops its workers and still writes the JUnit
            # report, so the tests that finished keep their outcomes.
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_INTERRUPT_GRACE_S)
    seconds = time.perf_counter() - start
    outcomes, messages, internal = _read_junit(junit) if junit.exists() else ({}, {}, None)
    return Run(label, outcomes, messages, seconds, exit_code, internal)


# JUnit's entry for pytest's INTERNALERROR (xdist's, when a crashed worker confuses it): not a
# test, and the tests that had not run by then have no entry at all.
_INTERNAL = "pytest.py::internal"


def _read_junit(path: Path) -> tuple[dict[str, str], dict[str, str], str | None]:
    """Test id -> outcome, test id -> message, and pytest's internal error, if it had one."""
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        test_id = _test_id(case.get("classname", ""), case.get("name", ""))
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                # A teardown error after a failure keeps the failure.
                outcome = "failed" if child.tag == "failure" or outcome == "failed" else "error"
                text = child.get("message") or (child.text or "")
                messages.setdefault(test_id, _summary(text))
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        outcomes[test_id] = outcome
    internal = messages.pop(_INTERNAL, None)
    outcomes.pop(_INTERNAL, None)
    return outcomes, messages, internal


def _read_recompiles(path: Path) -> dict[str, str]:
    """Test id -> its `--dtypeguard-recompiles` report (kept as a JUnit property)."""
    reports = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        for prop in case.iter("property"):
            if prop.get("name") == _RECOMPILES_PROPERTY:
                test_id = _test_id(case.get("classname", ""), case.get("name", ""))
                reports[test_id] = prop.get("value", "")
    return reports


def _recompile_summary(reports: dict[str, str], *, top: int = 15) -> dict[str, Any]:
    """Which functions compiled more than once, in how many tests, at most how often."""
    functions: dict[tuple[str, str], dict[str, Any]] = {}
    for test, text in reports.items():
        lines = text.splitlines()
        for number, line in enumerate(lines):
            found = _FUNCTION_LINE.match(line)
            if found is None or found["name"] == "Eager JAX calls":  # not a jitted function
                continue
            key = (found["name"], found["location"])
            entry = functions.get(key)
            if entry is None:  # the first test's explanation stands for the rest
                entry = functions[key] = {
                    "function": key[0],
                    "location": key[1],
                    "tests": [],
                    "most_compiles": 0,
                    "why": _explanation(lines[number + 1 :]),
                }
            entry["tests"].append(test)
            entry["most_compiles"] = max(entry["most_compiles"], int(found["compiles"]))
    ranked = sorted(functions.values(), key=lambda entry: (-len(entry["tests"]), entry["function"]))
    for entry in ranked:
        entry["example_test"], entry["tests"] = entry["tests"][0], len(entry["tests"])
    return {"tests_that_compiled_again": len(reports), "functions": ranked[:top]}


def _explanation(lines: list[str], *, most: int = 4) -> list[str]:
    """The first lines of a function's block in a recompile report: what its second
    compile changed (the block's indented lines, up to the next block)."""
    block = []
    for line in lines:
        if not line.startswith(" "):
            break
        block.append(line.strip())
    return block[:most]


def _summary(text: str, *, lines: int = 6, width: int = 800) -> str:
    """The first lines of a failure (a drift report's header and mismatches), on one line."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][:lines]
    return " | ".join(kept)[:width]


def _test_id(classname: str, name: str) -> str:
    """`pkg.module.Class` + `test[params]` -> `pkg/module.py::Class::test[params]`."""
    parts = classname.split(".") if classname else []
    # Classes are capitalised, modules are not (true of all three libraries).
    split = next((i for i, part in enumerate(parts) if part[:1].isupper()), len(parts))
    module = "/".join(parts[:split])
    return "::".join(filter(None, [f"{module}.py" if module else "", *parts[split:], name]))


_BAD = ("failed", "error")


def _target(test_id: str) -> str:
    """What to pass pytest to run a test again: its node id, or, for a module that failed
    to collect (JUnit names it `pkg.module_test`), the module's file."""
    return test_id if "::" in test_id else test_id.replace(".", "/") + ".py"


def _compare(plain: Run, guarded: Run) -> dict[str, Any]:
    new = sorted(
        test
        for test, outcome in guarded.outcomes.items()
        if outcome in _BAD and plain.outcomes.get(test) not in _BAD
    )
    fixed = sorted(
        test
        for test, outcome in plain.outcomes.items()
        if outcome in _BAD and guarded.outcomes.get(test) == "passed"
    )
    missing = sorted(set(plain.outcomes) - set(guarded.outcomes))
    return {
        "new_failures": [
            {"test": test, "plain": plain.outcomes.get(test), "message": guarded.messages[test]}
            for test in new
        ],
        "fixed": fixed,
        "not_run_when_guarded": missing,
    }


def _run_suite(suite: Suite, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    installed = _installed_version(suite.name)
    result: dict[str, Any] = {"suite": suite.name, "version": suite.version}
    if installed != suite.version:
        result["skipped"] = (
            f"{suite.name} {installed or 'is not installed'} "
            f"{'is installed' if installed else ''}; this benchmark pins {suite.version}"
        ).replace("  ", " ")
        return result
    if suite.in_wheel:
        spec = importlib.util.find_spec(suite.name)
        assert spec is not None and spec.origin is not None
        root = Path(spec.origin).parent.parent
        source = "the installed wheel"
    else:
        given = dict(item.split("=", 1) for item in args.source).get(suite.name)
        tree = Path(given).resolve() if given else _sdist_tests(suite, workdir)
        if tree is None or not (tree / suite.tests).is_dir():
            result["skipped"] = (
                f"the PyPI sdist of {suite.name} {suite.version} has no {suite.tests}/: pass "
                f"--source {suite.name}=DIR, a checkout of its v{suite.version} tag"
                if given is None
                else f"{given} has no {suite.tests}/ directory"
            )
            return result
        root = tree
        source = "a checkout of the release" if given else "the PyPI sdist"
    selection = dict(item.split("=", 1) for item in args.select).get(suite.name)
    targets = selection.split(",") if selection else [suite.tests]
    result["tests_from"] = source
    result["selection"] = targets
    if suite.in_wheel:
        (workdir / f"{_OPTAX_PLUGIN}.py").write_text(
            _PLUGIN_SOURCE.format(mode="cast"), encoding="utf-8"
        )
    common = {"workers": args.workers, "limit_s": args.limit_minutes * 60}
    recompiles = ["-p", "jax_dtypeguard", "--dtypeguard-recompiles"]
    guarded_args = list(suite.guarded_args)
    if args.recompiles == "with-guarded":
        guarded_args += recompiles[2:] if "jax_dtypeguard" in guarded_args else recompiles
    if args.plain == "all":
        plain = _run_pytest(suite, "plain", root, targets, [], workdir, **common)
        guarded = _run_pytest(suite, "guarded", root, targets, guarded_args, workdir, **common)
    else:  # the whole suite once, under the tools; plain again only where that failed
        guarded = _run_pytest(suite, "guarded", root, targets, guarded_args, workdir, **common)
        failed = [_target(test) for test, outcome in guarded.outcomes.items() if outcome in _BAD]
        plain = (
            _run_pytest(suite, "plain", root, failed, [], workdir, **common)
            if failed
            else Run("plain", {}, {}, 0.0, 0)
        )
    runs = [plain, guarded]
    if args.recompiles == "separate":
        runs.append(_run_pytest(suite, "recompiles", root, targets, recompiles, workdir, **common))
    result["guarded_with"] = " ".join(guarded_args)
    result["plain_run"] = (
        "the same tests" if args.plain == "all" else "only the tests that failed under the tools"
    )
    result["runs"] = {
        run.label: {
            **run.counts(),
            "total": len(run.outcomes),
            "seconds": round(run.seconds),
            "exit_code": run.exit_code,
            "timed_out": run.exit_code is None,
            "internal_error": run.internal_error,
        }
        for run in runs
    }
    result.update(_compare(runs[0], runs[1]))
    if args.recompiles:
        run = "recompiles" if args.recompiles == "separate" else "guarded"
        junit = workdir / f"{suite.name}-{run}.xml"
        reports = _read_recompiles(junit) if junit.exists() else {}
        result["recompiles"] = _recompile_summary(reports)
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        for kept in [*workdir.glob(f"{suite.name}-*.log"), *workdir.glob(f"{suite.name}-*.xml")]:
            shutil.copy(kept, Path(args.logs) / kept.name)
    return result


def _markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| suite | run | passed | failed | errors | skipped | total | time |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        if "skipped" in result:
            lines.append(
                f"| {result['suite']} {result['version']} | skipped: {result['skipped']} |||||||"
            )
            continue
        for label, run in result["runs"].items():
            if label == "plain" and result["plain_run"] != "the same tests":
                label = "plain, the tests that failed guarded"
            time_text = f"{run['seconds']} s" + (" (time limit)" if run["timed_out"] else "")
            if run["internal_error"]:
                time_text += f" (stopped by pytest's internal error: {run['internal_error']})"
            lines.append(
                f"| {result['suite']} {result['version']} | {label} | {run['passed']} | "
                f"{run['failed']} | {run['error']} | {run['skipped']} | {run['total']} | {time_text} |"
            )
    for result in results:
        if "skipped" in result:
            continue
        new = result["new_failures"]
        lines += [
            "",
            f"{result['suite']}: {len(new)} new failures under `{result['guarded_with']}`",
        ]
        lines += [f"- `{item['test']}` ({item['plain']} plain): {item['message']}" for item in new]
        if result["fixed"]:
            lines.append(f"- fixed under the tools: {', '.join(result['fixed'])}")
        if "recompiles" in result:
            found = result["recompiles"]
            lines += [
                "",
                f"{result['suite']}: {found['tests_that_compiled_again']} tests compiled a "
                "jitted function more than once (--dtypeguard-recompiles); most frequent:",
            ]
            for entry in found["functions"]:
                lines.append(
                    f"- `{entry['function']}` ({entry['location']}): in {entry['tests']} tests, "
                    f"up to {entry['most_compiles']} compiles (e.g. `{entry['example_test']}`)"
                )
                lines += [f"  - {why}" for why in entry["why"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkout of the pinned release of a library whose sdist has no tests",
    )
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="NAME=PATHS",
        help="comma-separated test files or node ids to run instead of the whole suite",
    )
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (default 2)")
    parser.add_argument("--limit-minutes", type=float, default=120.0, help="per pytest run")
    parser.add_argument(
        "--recompiles",
        nargs="?",
        const="separate",
        choices=("separate", "with-guarded"),
        help="also explain recompiles (--dtypeguard-recompiles): in a third run (separate, "
        "the default) or in the guarded run itself (with-guarded)",
    )
    parser.add_argument(
        "--plain",
        choices=("all", "failures"),
        default="all",
        help="run the plain suite on every test (all, the default), or, after the guarded "
        "run, only on the tests that failed there (failures: half the time; a test that "
        "fails plain but passes under the tools goes unseen)",
    )
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--logs", help="copy each run's pytest output and JUnit XML into this directory"
    )
    args = parser.parse_args(argv)
    # Stopped from outside: unwind, so each running pytest's process group is killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    for name in args.suites:
        if name not in SUITES:
            parser.error(f"unknown suite {name!r}: expected any of {', '.join(SUITES)}")
    for item in args.source + args.select:
        if "=" not in item or item.split("=", 1)[0] not in SUITES:
            parser.error(f"{item!r}: expected NAME=VALUE with NAME one of {', '.join(SUITES)}")
    args.source = [f"{n}={Path(p).resolve()}" for n, p in (s.split("=", 1) for s in args.source)]
    results = []
    for name in dict.fromkeys(args.suites or SUITES):
        with tempfile.TemporaryDirectory(prefix=f"peer-{name}-") as workdir:
            results.append(_run_suite(SUITES[name], args, Path(workdir)))
        print(_markdown(results[-1:]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 1 if any(result.get("new_failures") for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
