"""Before/after: runs `run.py --compare` on two checkouts of the package, in turns, and
prints one table of the figures issue 13 names.

    python benchmarks/compare.py --before ../old-checkout --after . --rounds 4
    python benchmarks/compare.py --load benchmarks/results/compare-STAMP   # table again

Each round runs both checkouts one after the other (in alternating order), each in its
own process with `PYTHONPATH` set to its root, so a slow spell of a shared machine hits
both sides. Per figure the table shows the median over rounds (and the best), after over
before, and the noise: the spread of the rounds, (max - min) / median, on the noisier
side. Every run's JSON report is kept in the output folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTIONS = "jaxpr,overhead,trace,report"
SIDES = ("before", "after")


def _get(*keys: str) -> Callable[[dict[str, Any]], Any]:
    def get(report: dict[str, Any]) -> Any:
        value: Any = report["sections"]
        for key in keys:
            value = value[key]
        return value

    return get


# Per eager state: (label, unit, keys below the state's figures).
_EAGER = [
    ("fast path (same types)", "us", ("fast_path", "overhead_us")),
    ("fast path / 2 tree_flattens", "x", ("fast_path", "over_two_flattens")),
    ("cached verdict", "us", ("cached_verdict", "overhead_us")),
    ("cached verdict / 2 tree_flattens", "x", ("cached_verdict", "over_two_flattens")),
    ("first call, same types", "us", ("first_call_same_types", "overhead_us")),
    ("first call, new signature", "us", ("first_call_new_signature", "overhead_us")),
    (
        "fast path / 2 flattens + a pass over each side's leaves",
        "x",
        ("fast_path", "over_two_flattens_and_reads"),
    ),
    ("2 tree_flattens (JAX)", "us", ("two_flattens_us",)),
    ("2 tree_flattens + a pass over each side's leaves", "us", ("two_flattens_and_reads_us",)),
]
# (label, unit, extractor)
FIGURES: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
    (f"eager {container}: {label}", unit, _get("overhead", "states", container, *keys))
    for container in ("dict", "tuple")
    for label, unit, keys in _EAGER
]
FIGURES += [
    (
        "trace adam 1,000 params: decorated / undecorated",
        "x",
        _get("trace", "params", "1000", "ratio"),
    ),
    (
        "trace adam 1,000 params: the guard's own cost",
        "ms",
        lambda r: _get("trace", "params", "1000", "guard_overhead_us")(r) / 1e3,
    ),
    ("drift report: first (with provenance)", "ms", _get("report", "first_report_ms")),
    ("drift report: repeated (cached)", "ms", _get("report", "repeated_report_ms")),
    ("check-mode jaxpr identical", "", _get("jaxpr", "summary")),
]


def _run(root: Path, label: str, round_: int, folder: Path, only: str) -> dict[str, Any]:
    output = folder / f"{label}-{round_}.json"
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, str(HERE / "run.py"), "--compare", "--only", only]
    print(f"[compare] round {round_}: {label} ({root})", file=sys.stderr, flush=True)
    subprocess.run(
        [*command, "--output", str(output)], env=env, check=False, stdout=subprocess.DEVNULL
    )
    report = json.loads(output.read_text())
    measured = Path(report["environment"]["jax_dtypeguard_from"]).resolve()
    if measured != root.resolve():
        raise RuntimeError(f"{label}: measured the package in {measured}, not in {root}")
    return report


def _figure(reports: list[dict[str, Any]], extract: Callable[[dict[str, Any]], Any]) -> Any:
    values = []
    for report in reports:
        try:
            values.append(extract(report))
        except (KeyError, TypeError):
            pass
    return values


def _cell(values: list[Any], unit: str) -> str:
    if not values:
        return "-"
    if not isinstance(values[0], (int, float)):
        return str(values[0]) if len(set(map(str, values))) == 1 else " / ".join(map(str, values))
    digits = 2 if unit in ("x", "ms") else 1
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f})"


def _spread(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    if len(numbers) < 2 or statistics.median(numbers) == 0:
        return None
    return (max(numbers) - min(numbers)) / abs(statistics.median(numbers))


def table(reports: dict[str, list[dict[str, Any]]]) -> str:
    """A Markdown table: per figure, before and after (median over rounds, best in
    brackets), after / before of the medians, and the noise of the rounds."""
    lines = [
        "| figure | unit | before | after | after / before | noise |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, unit, extract in FIGURES:
        before, after = (_figure(reports[side], extract) for side in SIDES)
        ratio = "-"
        numeric = before and after and isinstance(before[0], (int, float))
        if numeric and statistics.median(before):
            ratio = f"{statistics.median(after) / statistics.median(before):.2f}"
        spreads = [s for s in (_spread(before), _spread(after)) if s is not None]
        noise = f"±{max(spreads) * 50:.0f} %" if spreads else "-"
        lines.append(
            f"| {label} | {unit} | {_cell(before, unit)} | {_cell(after, unit)} | {ratio} | {noise} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="root of the checkout before the change")
    parser.add_argument("--after", type=Path, help="root of the checkout after the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=SECTIONS, help=f"sections (default {SECTIONS})")
    parser.add_argument("--output", type=Path, help="folder for the runs' reports")
    parser.add_argument("--load", type=Path, help="print the table of a finished comparison")
    args = parser.parse_args(argv)
    if args.load:
        folder = args.load
    else:
        if args.before is None or args.after is None:
            parser.error("give --before and --after (or --load)")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = args.output or HERE / "results" / f"compare-{stamp}"
        folder.mkdir(parents=True, exist_ok=True)
        roots = {"before": args.before, "after": args.after}
        for round_ in range(args.rounds):
            for side in SIDES if round_ % 2 == 0 else reversed(SIDES):
                _run(roots[side], side, round_, folder, args.only)
    reports = {
        side: [json.loads(p.read_text()) for p in sorted(folder.glob(f"{side}-*.json"))]
        for side in SIDES
    }
    environment = (reports["after"] or reports["before"])[0]["environment"]
    print(
        f"{len(reports['before'])} rounds; {environment['platform']}, {environment['cpus']} CPUs, "
        f"{environment['backend']}; JAX {environment['versions']['jax']}; reports in {folder}\n"
    )
    print(table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
