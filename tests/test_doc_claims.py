"""What the docs say about which Optax transformations drift is what the audit finds.

docs/optax.md's "Which Optax optimizers drift" states the audit's findings in
words; the block between its `generated from` markers is rendered here from
`jax-dtypeguard audit optax optax.contrib --format json` (the public command,
run as a user runs it), and must be exactly what the page shows. When Optax
changes, the failure prints the block to paste.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "optax.md"
BEGIN = "<!-- generated from: jax-dtypeguard audit optax optax.contrib --format json -->\n"
END = "<!-- end of the generated claim -->"
COLUMNS = ("float16", "bfloat16", "float32", "float32+x64", "float64")
MIXED = ("float16", "bfloat16")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("optax") is None, reason="needs optax"),
]


def audit(*options: str) -> dict:
    """The JSON document of `jax-dtypeguard audit optax optax.contrib OPTIONS`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "jax_dtypeguard", "audit", "optax", "optax.contrib"]
    completed = subprocess.run(
        [*command, "--format", "json", *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    return json.loads(completed.stdout)


def _column(case: dict) -> str:
    return "float32+x64" if case["dtype"] == "float32" and case["x64"] else case["dtype"]


def _where(columns: list[str]) -> str:
    if tuple(columns) == COLUMNS:
        return "in every configuration"
    return "in " + " and ".join(f"`{column}`" for column in columns)


def _names(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def render(same_dtype: dict, mixed: dict) -> str:
    """The page's claim: who drifts with grads in the params' dtype, and with float32 grads."""
    drifts: dict[str, dict[str, set[str]]] = defaultdict(dict)
    names = []
    for case in same_dtype["cases"]:
        names.append(case["name"])
        if case["status"] == "drift":
            kinds = {mismatch["kind"] for mismatch in case["mismatches"]}
            drifts[case["name"]][_column(case)] = kinds
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = defaultdict(list)
    for name, by_column in drifts.items():
        columns = [column for column in COLUMNS if column in by_column]
        kinds = sorted(set().union(*by_column.values()))
        groups[tuple(columns), tuple(kinds)].append(name)
    total = len(dict.fromkeys(names))
    lines = [
        f"With grads in the params' dtype, {len(drifts)} of the {total} transformations "
        "the audit runs drift:",
        "",
    ]
    for (columns, kinds), group in sorted(groups.items(), key=lambda item: sorted(item[1])):
        lines.append(f"- {_names(sorted(group))}: {', '.join(kinds)}, {_where(list(columns))};")
    statuses: dict[str, set[str]] = defaultdict(set)
    in_state: set[str] = set()
    for case in mixed["cases"]:
        statuses[case["name"]].add(case["status"])
        if any(mismatch["path"].startswith("opt_state") for mismatch in case["mismatches"]):
            in_state.add(case["name"])
    by_status: dict[str, list[str]] = defaultdict(list)
    for name, found in statuses.items():
        status = "error" if "error" in found else "drift" if "drift" in found else min(found)
        by_status[status].append(name)
    inside_only = len(by_status["drift"]) - len(in_state)
    errors = sorted(by_status["error"])
    lines += [
        "",
        "With `float32` grads for `float16` and `bfloat16` params (`--grads-dtype float32`), "
        f"{len(by_status['drift'])} of the {len(statuses)} drift: in {len(in_state)} the "
        "state follows the grads (moments, traces, accumulators)"
        + (f", in {inside_only} only a loop or branch inside the update" if inside_only else "")
        + f"; {len(by_status['ok'])} hold, {len(by_status['skipped'])} are skipped (they need "
        "inputs the audit cannot guess)"
        + (
            f" and {_names(errors)} {'fails' if len(errors) == 1 else 'fail'} inside Optax"
            if errors
            else ""
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _shown() -> str:
    text = PAGE.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"docs/optax.md lost its markers {BEGIN.strip()}"
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def test_optax_page_says_what_the_audit_finds():
    same_dtype = audit()
    mixed = audit("--grads-dtype", "float32", "--dtypes", ",".join(MIXED))
    expected = render(same_dtype, mixed)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(same_dtype["versions"].items()))
    assert _shown() == expected, (
        f"docs/optax.md's claim differs from the audit ({versions}); the block between its "
        f"markers should read:\n\n{expected}"
    )


def test_render_groups_the_drifting_rows():
    def case(name, dtype, status, *paths, x64=False, kind="dtype"):
        mismatches = [{"path": path, "kind": kind} for path in paths]
        return {
            "name": name,
            "dtype": dtype,
            "x64": x64,
            "status": status,
            "mismatches": mismatches,
        }

    same = {
        "cases": [case("adam", column, "ok") for column in MIXED]
        + [case("lbfgs", column, "drift", "opt_state.info", kind="weak_type") for column in MIXED]
        + [case("sgd", "float16", "drift", "opt_state.x"), case("sgd", "bfloat16", "ok")]
    }
    mixed = {
        "cases": [
            case("adam", "float16", "drift", "opt_state.mu", "updates['w']"),
            case("sgd", "float16", "drift", "true_fun[0]"),
            case("dpsgd", "float16", "skipped"),
            case("lbfgs", "float16", "error"),
            case("zero", "float16", "ok"),
        ]
    }
    assert render(same, mixed) == (
        "With grads in the params' dtype, 2 of the 3 transformations the audit runs drift:\n\n"
        "- `lbfgs`: weak_type, in `float16` and `bfloat16`;\n"
        "- `sgd`: dtype, in `float16`;\n\n"
        "With `float32` grads for `float16` and `bfloat16` params (`--grads-dtype float32`), "
        "2 of the 5 drift: in 1 the state follows the grads (moments, traces, accumulators), "
        "in 1 only a loop or branch inside the update; 1 hold, 1 are skipped (they need "
        "inputs the audit cannot guess) and `lbfgs` fails inside Optax.\n"
    )
