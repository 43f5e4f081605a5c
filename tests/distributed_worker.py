"""One process of tests/test_distributed.py: `python distributed_worker.py PORT PROCESS_ID COUNT`.

Joins a `jax.distributed` job on 127.0.0.1:PORT (CPU devices, gloo
collectives), builds global arrays that are not fully addressable on an
explicit mesh over every process's devices, runs guarded steps on them and
prints one JSON line: what each guard did (verdicts, mismatches, messages,
the casts' dtypes, shardings and values), for the test to compare across
processes.
"""

from __future__ import annotations

import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jax_dtypeguard as dg


def promotes(state):
    """Dtype drift: a float32 factor promotes the float16 weights."""
    return {"w": state["w"] * jnp.float32(2), "step": state["step"] + 1}


def reshards(state):
    """Sharding drift: the weights are gathered onto every device."""
    return {"w": jax.sharding.reshard(state["w"] * 2, P(None, None)), "step": state["step"] + 1}


def global_state(mesh):
    values = np.arange(32, dtype=np.float16).reshape(8, 4)
    w = jax.make_array_from_callback(
        values.shape, NamedSharding(mesh, P("x", None)), lambda index: values[index]
    )
    step = jax.make_array_from_callback((), NamedSharding(mesh, P()), lambda _: np.int32(0))
    return {"w": w, "step": step}


def describe_error(error):
    return {
        "error": type(error).__name__,
        "mismatches": [
            [m.path, m.kind, m.expected, m.got, str(m.origin) if m.origin else None]
            for m in error.mismatches
        ],
        "message": str(error),
    }


def describe_result(result):
    w = result["w"]
    return {
        "dtype": str(w.dtype),
        "weak_type": jax.typeof(w).weak_type,
        "spec": str(w.sharding.spec),
        "fully_addressable": w.is_fully_addressable,
        # Every process's view of the whole array, gathered over gloo.
        "values": np.asarray(multihost_utils.process_allgather(w, tiled=True)).tolist(),
    }


def run(step, mode, jit, mesh):
    guarded = dg.state_dtype_invariant(step, mode=mode)
    call = jax.jit(guarded) if jit else guarded
    try:
        result = call(global_state(mesh))
    except dg.StateDtypeError as error:
        return describe_error(error)
    return describe_result(result)


def main(port, process_id, count):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=count,
        process_id=process_id,
        initialization_timeout=60,
    )
    try:
        mesh = jax.make_mesh((jax.device_count(),), ("x",), axis_types=(AxisType.Explicit,))
        report = {
            "process_index": jax.process_index(),
            "local_devices": jax.local_device_count(),
            "devices": jax.device_count(),
            "state_fully_addressable": global_state(mesh)["w"].is_fully_addressable,
        }
        with jax.set_mesh(mesh):
            for name, step, mode in [
                ("dtype check", promotes, "check"),
                ("dtype cast", promotes, "cast"),
                ("sharding check", reshards, "check"),
                ("sharding cast", reshards, "cast"),
            ]:
                for jit in (False, True):
                    report[f"{name}, {'jit' if jit else 'eager'}"] = run(step, mode, jit, mesh)
        print(json.dumps(report), flush=True)
    finally:
        jax.distributed.shutdown()


if __name__ == "__main__":
    try:
        main(*(int(argument) for argument in sys.argv[1:4]))
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
