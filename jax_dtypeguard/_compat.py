"""The one place that touches private or version-dependent JAX APIs.

Supported: jax 0.4.38 up to the newest release. `tests/test_compat.py` fails
loudly if JAX moves anything used here.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.core
import numpy as np
from jax._src.lax import lax as _lax_internal

Tracer = jax.core.Tracer

get_aval: Callable[[Any], Any] = (
    jax.typeof if hasattr(jax, "typeof") else jax.core.get_aval  # pyright: ignore[reportAttributeAccessIssue]  # jax < 0.6
)


_CAST_OPTIONS: dict[str, Any] = (
    {"warn_on_complex_to_real_cast": False}
    if "warn_on_complex_to_real_cast"
    in inspect.signature(_lax_internal._convert_element_type).parameters
    else {}
)


def convert_element_type(x: Any, dtype: np.dtype, weak_type: bool) -> Any:
    """Casts `x` to `dtype` with the given weak_type: one `convert_element_type`.

    `jnp.astype` and `lax.convert_element_type` always return strong types;
    only this private function can restore a weak one. A cast back from
    complex to real is the user's request (cast mode), so it does not warn.
    """
    return _lax_internal._convert_element_type(x, dtype, weak_type=weak_type, **_CAST_OPTIONS)


def explicit_sharding(aval: Any) -> Any:
    """The aval's `PartitionSpec` where its mesh has an Explicit axis, else None."""
    sharding = getattr(aval, "sharding", None)
    if sharding is None:
        return None
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or not getattr(mesh, "_any_axis_explicit", False):
        return None
    spec = tuple(sharding.spec)
    padding = (None,) * (len(aval.shape) - len(spec))
    return jax.sharding.PartitionSpec(*spec, *padding)


def x64_enabled() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


@contextlib.contextmanager
def enable_x64(enabled: bool = True) -> Iterator[None]:
    """Turns x64 on or off within the block only, restoring the caller's setting."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(enabled):
            yield
    else:  # jax < 0.7
        experimental: Any = importlib.import_module("jax.experimental")
        with experimental.enable_x64() if enabled else experimental.disable_x64():
            yield


def jit_cache_size(jitted: Any) -> int:
    """How many times a `jax.jit`-wrapped function has compiled."""
    return jitted._cache_size()


def source_frames(source_info: Any) -> list[tuple[str, int, str]]:
    """`(file, line, function)` of every Python frame JAX recorded for a jaxpr equation.

    Innermost first. Not `source_info_util.user_frames`: its stdlib filter also
    drops every package installed under the stdlib directory (e.g. Optax).
    """
    traceback = getattr(source_info, "traceback", None)
    if traceback is None:
        return []
    return [(f.file_name, f.line_num, f.function_name) for f in traceback.frames]
