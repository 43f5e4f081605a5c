"""Runs the benchmarks in one process; writes a JSON report and prints a table.

    python benchmarks/run.py                 # everything (tox -e bench)
    python benchmarks/run.py --quick         # fewer sizes and repetitions
    python benchmarks/run.py --only trace,eager --output report.json
    python benchmarks/run.py --compare --only jaxpr,overhead,trace,report --json out.json

Sections: the core ones (`core.py`: jaxpr, trace, eager, compiles, memory)
and every optional module below that exists (`annotations.py`, `audit.py`,
`provenance.py`, `recompiles.py`), each exposing `run() -> dict`. A missing or failing module
is reported as skipped, with the reason, and the others still run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# This checkout's package, unless PYTHONPATH names another one (a before/after comparison).
if not any((Path(entry) / "jax_dtypeguard").is_dir() for entry in sys.path[1:] if entry):
    sys.path.insert(1, str(HERE.parent))

# Sections in report order: (name, module, function); function None means `run`.
SECTIONS: list[tuple[str, str, str | None]] = [
    ("jaxpr", "core", "jaxpr_identity"),
    ("trace", "core", "trace_time"),
    ("annotations", "annotations", None),
    ("eager", "core", "eager_overhead"),
    ("overhead", "core", "eager_at"),
    ("compiles", "core", "compile_counts"),
    ("audit", "audit", None),
    ("memory", "core", "memory"),
    ("provenance", "provenance", None),
    ("report", "core", "drift_report"),
    ("policy", "policy", None),
    ("recompiles", "recompiles", "run"),
]


def _environment() -> dict[str, Any]:
    import jax

    import jax_dtypeguard

    versions = {}
    for name in ("jax", "jaxlib", "optax", "jaxtyping", "beartype", "equinox"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:
            versions[name] = None
    return {
        "jax_dtypeguard": jax_dtypeguard.__version__,
        "jax_dtypeguard_from": str(Path(jax_dtypeguard.__file__).resolve().parent.parent),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _run_section(name: str, module_name: str, function: str | None, sizes: str) -> dict[str, Any]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        return {"met": None, "summary": f"skipped: benchmarks/{module_name}.py is not there yet"}
    if function is None:
        return dict(module.run())
    kwargs = getattr(module, sizes, {}).get(name, {}) if sizes else {}
    return getattr(module, function)(**kwargs)


def _verdict(met: Any) -> str:
    return {True: "yes", False: "MISSED", None: "-"}.get(met, str(met))


_NOT_SUMMARY = ("title", "target", "met", "seconds", "benchmark", "device", "jax", "cpus")


def _summary_of(result: dict[str, Any]) -> str:
    if "summary" in result:
        return str(result["summary"])
    scalars = [
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in result.items()
        if isinstance(value, (int, float, str, bool)) and key not in _NOT_SUMMARY
    ]
    return "; ".join(scalars[:12])


def _met(result: dict[str, Any]) -> Any:
    return result.get("met", result.get("within_budget"))


def print_table(sections: dict[str, dict[str, Any]], stream: Any = sys.stdout) -> None:
    """One line per section: name, target met, seconds taken, and its summary."""
    width = max(len(name) for name in sections)
    print(f"{'section':<{width}}  {'met':<6}  {'secs':>6}  summary", file=stream)
    for name, result in sections.items():
        seconds = result.get("seconds")
        shown = f"{seconds:6.1f}" if isinstance(seconds, (int, float)) else "     -"
        line = f"{name:<{width}}  {_verdict(_met(result)):<6}  {shown}  {_summary_of(result)}"
        print(line, file=stream)
        if result.get("target"):
            print(f"{'':<{width}}  {'':<6}  {'':>6}  target: {result['target']}", file=stream)


def main(argv: list[str] | None = None) -> int:
    """Runs the selected sections; exits 1 if a section raised, else 0 (missed targets too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "--json", type=Path, help="where to write the JSON report")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="the sizes of a before/after comparison (benchmarks/compare.py): trace at 1,000 params",
    )
    names = [name for name, _, _ in SECTIONS]
    parser.add_argument("--only", help=f"comma-separated sections among {','.join(names)}")
    args = parser.parse_args(argv)
    chosen = names if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose among {', '.join(names)}")

    report: dict[str, Any] = {
        "environment": _environment(),
        "quick": args.quick,
        "compare": args.compare,
        "sections": {},
    }
    failed = False
    for name, module_name, function in SECTIONS:
        if name not in chosen:
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            sizes = "QUICK" if args.quick else "COMPARE" if args.compare else ""
            result = _run_section(name, module_name, function, sizes)
        except Exception as error:
            failed = True
            result = {
                "met": None,
                "summary": f"failed: {type(error).__name__}: {str(error).splitlines()[0]:.160}"
                if str(error)
                else f"failed: {type(error).__name__}",
                "traceback": traceback.format_exc(),
            }
        result["seconds"] = time.perf_counter() - start
        report["sections"][name] = result

    output = args.output
    if output is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = HERE / "results" / f"bench-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report["sections"])
    print(f"\nreport: {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
