"""Several processes: the guard says and does the same in every process of a `jax.distributed` job.

Two JAX processes on 127.0.0.1 (tests/distributed_worker.py), two CPU devices
each, gloo collectives, one explicit mesh over the four devices: the state's
arrays are global and not fully addressable by either process. Each process
runs dtype drift and sharding drift, eagerly and under `jit`, in check and
cast mode, and prints what the guard did; both must agree, and be right.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"
PROCESSES = 2
TIMEOUT_S = 300  # both processes together; JAX starts slowly on a busy machine


def _missing_features() -> str | None:
    axis_type = getattr(jax.sharding, "AxisType", None)
    needed = {
        "jax.sharding.AxisType.Explicit": axis_type is not None and hasattr(axis_type, "Explicit"),
        "jax.sharding.reshard": hasattr(jax.sharding, "reshard"),
        "jax.set_mesh": hasattr(jax, "set_mesh"),
        "jax_cpu_collectives_implementation": "jax_cpu_collectives_implementation"
        in jax.config.values,
    }
    missing = [name for name, present in needed.items() if not present]
    if missing:
        return f"JAX {jax.__version__} has no {', '.join(missing)}"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_missing_features() is not None, reason=str(_missing_features())),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_job() -> list[dict]:
    """Each process's report, in process order; fails with the processes' output otherwise."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    )
    port = _free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(index), str(PROCESSES)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for index in range(PROCESSES)
    ]
    outputs: list[tuple[str, str]] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        for process in processes:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                outputs.append(process.communicate(timeout=remaining))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the {PROCESSES} JAX processes did not finish in {TIMEOUT_S} s")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reports = []
    for index, (process, (stdout, stderr)) in enumerate(zip(processes, outputs)):
        lines = stdout.strip().splitlines()
        if process.returncode != 0 or not lines:
            pytest.fail(
                f"process {index} exited with {process.returncode}:\n{stderr[-4000:]}",
                pytrace=False,
            )
        reports.append(json.loads(lines[-1]))  # gloo prints its own lines before ours
    return reports


@pytest.fixture(scope="module")
def reports() -> list[dict]:
    return _run_job()


def test_the_state_is_global_and_not_fully_addressable(reports):
    assert [report["process_index"] for report in reports] == list(range(PROCESSES))
    for report in reports:
        assert (report["devices"], report["local_devices"]) == (2 * PROCESSES, 2)
        assert report["state_fully_addressable"] is False


def test_every_process_gets_the_same_verdicts_casts_and_reports(reports):
    first, *others = reports
    for other in others:
        for key in first.keys() - {"process_index"}:
            assert other[key] == first[key], key


W = "float16[8,4] sharded P('x', None)"


@pytest.mark.parametrize("where", ["eager", "jit"])
def test_dtype_drift_is_reported_with_its_origin(reports, where):
    found = reports[0][f"dtype check, {where}"]
    assert found["error"] == "StateDtypeError"
    [(path, kind, expected, got, origin)] = found["mismatches"]
    assert (path, kind, expected, got) == ("state['w']", "dtype", W, W.replace("16", "32", 1))
    assert "distributed_worker.py" in origin and "in promotes" in origin
    headline = found["message"].splitlines()[0]
    assert headline.startswith("promotes (") and "distributed_worker.py:" in headline


@pytest.mark.parametrize("where", ["eager", "jit"])
def test_cast_mode_casts_the_global_array_back_in_place(reports, where):
    cast = reports[0][f"dtype cast, {where}"]
    assert (cast["dtype"], cast["weak_type"], cast["spec"]) == ("float16", False, "P('x', None)")
    assert cast["fully_addressable"] is False
    expected = np.arange(32, dtype=np.float16).reshape(8, 4) * 2
    np.testing.assert_array_equal(np.asarray(cast["values"], np.float16), expected)


@pytest.mark.parametrize("mode", ["check", "cast"])
@pytest.mark.parametrize("where", ["eager", "jit"])
def test_reshard_is_sharding_drift_in_every_mode(reports, mode, where):
    found = reports[0][f"sharding {mode}, {where}"]
    assert found["error"] == "StateDtypeError"
    assert found["mismatches"] == [
        ["state['w']", "sharding", W, "float16[8,4] sharded P(None, None)", None]
    ]
    if mode == "cast":
        assert "jax.sharding.reshard" in found["message"].splitlines()[-1]
