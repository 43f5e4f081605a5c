"""The full default `jax-dtypeguard audit`: every Optax optimizer x 4 dtypes.

The budget (issue 6): under 60 s on a 2-core machine. Measured twice: the
sweep in this process (discovery, then every case at every dtype), and the
command end to end in a fresh process (imports included), with wall-clock
and CPU time each, since a shared machine stretches wall-clock time only.

Run: `python benchmarks/audit.py` (prints one JSON object).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import jax

from jax_dtypeguard import _audit
from jax_dtypeguard.testing import DTYPES

BUDGET_S = 60.0


def _sweep() -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    items = _audit.optax_cases()
    discovered_wall = time.perf_counter() - wall
    results = _audit.audit(items, DTYPES)
    statuses: dict[str, int] = {}
    for result in results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    return {
        "cases": len(items),
        "runs": len(results),
        "statuses": statuses,
        "discovery_s": discovered_wall,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
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
    return {"exit_status": done.returncode, "wall_s": wall, "cpu_s": cpu}


def run() -> dict[str, Any]:
    """Times the default sweep in this process and as a command."""
    sweep = _sweep()
    command = _command()
    met = command["wall_s"] < BUDGET_S and sweep["wall_s"] < BUDGET_S
    return {
        "title": "jax-dtypeguard audit: every Optax optimizer x 4 dtypes",
        "target": f"under {BUDGET_S:.0f} s wall-clock on a 2-core machine",
        "met": met,
        "summary": (
            f"{sweep['cases']} cases x {len(DTYPES)} dtypes: in-process "
            f"{sweep['wall_s']:.1f} s wall / {sweep['cpu_s']:.1f} s CPU; command "
            f"{command['wall_s']:.1f} s wall / {command['cpu_s']:.1f} s CPU"
        ),
        "device": jax.devices()[0].platform,
        "cpus": os.cpu_count(),
        "sweep": sweep,
        "command": command,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
