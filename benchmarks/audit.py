"""The full default `jax-dtypeguard audit`: every installed target x 5 configurations.

The budget (issue 14): the whole default sweep (optax, optax.contrib, optimistix,
diffrax x float16, bfloat16, float32, float32+x64, float64) in at most 120 s on a
2-core machine. Measured twice: the sweep in this process, target by target
(discovery, then every case in every column), and the command end to end in a
fresh process (imports included), with wall-clock and CPU time each, since a
shared machine stretches wall-clock time only. On a terminal, a progress bar
(rich, when installed) runs on stderr.

Run: `python benchmarks/audit.py` (prints one JSON object).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax

from jax_dtypeguard import _audit
from jax_dtypeguard._columns import DEFAULT_COLUMNS

BUDGET_S = 120.0


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A callback `(done, total, label)` drawing a progress bar on a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    try:
        from rich.progress import Progress
    except ImportError:
        yield lambda done, _total, label: sys.stderr.write(f"\r{done}/{total} {label[:50]:<50}")
        return
    with Progress(transient=True) as progress:
        task = progress.add_task("auditing", total=total)
        yield lambda done, _total, label: progress.update(task, completed=done, description=label)


def _target(
    name: str, columns: list[Any], offset: int, total: int, progress: Any
) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    items, _ = _audit.load_targets([name])
    discovery = time.perf_counter() - wall

    def step(done: int, _total: int, label: str) -> None:
        if progress is not None:
            progress(offset + done, total, label)

    results = _audit.audit(items, columns, progress=step)
    statuses: dict[str, int] = {}
    for result in results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    return {
        "cases": len(items),
        "runs": len(results),
        "statuses": statuses,
        "discovery_s": round(discovery, 2),
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


def _sweep() -> dict[str, Any]:
    columns = _audit.columns(DEFAULT_COLUMNS)
    names = list(_audit.target_entry_points())
    per_target: dict[str, Any] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    estimate = 600 * len(columns)  # the bar's total until the cases are known
    done = 0
    with _progress(estimate) as progress:
        for name in names:
            per_target[name] = _target(name, columns, done, estimate, progress)
            done += per_target[name]["runs"]
    return {
        "targets": per_target,
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
    }


def _command() -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "jax_dtypeguard", "audit", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cases = len(json.loads(done.stdout)["cases"]) if done.stdout.strip() else 0
    return {"exit_status": done.returncode, "runs": cases, "wall_s": wall, "cpu_s": cpu}


def run() -> dict[str, Any]:
    """Times the default sweep in this process (per target) and as a command."""
    sweep = _sweep()
    command = _command()
    met = command["wall_s"] <= BUDGET_S and sweep["wall_s"] <= BUDGET_S
    per_target = ", ".join(
        f"{name} {t['cases']} cases {t['wall_s']:.1f} s" for name, t in sweep["targets"].items()
    )
    return {
        "title": "jax-dtypeguard audit: every installed target x 5 configurations",
        "target": f"at most {BUDGET_S:.0f} s wall-clock on a 2-core machine",
        "met": met,
        "summary": (
            f"in-process {sweep['wall_s']:.1f} s wall / {sweep['cpu_s']:.1f} s CPU ({per_target}); "
            f"command {command['wall_s']:.1f} s wall / {command['cpu_s']:.1f} s CPU"
        ),
        "device": jax.devices()[0].platform,
        "cpus": os.cpu_count(),
        "sweep": sweep,
        "command": command,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
