"""Keep the types of JAX state pytrees stable through step functions."""

# Names are imported on first use (PEP 562), so that importing the pytest
# plugin, `jax_dtypeguard._pytest_plugin`, does not start JAX in test suites
# that never use it.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _config
from ._version import __version__ as __version__

if TYPE_CHECKING:
    from . import lax as lax
    from . import testing as testing
    from ._caches import clear_caches as clear_caches
    from ._config import config as config
    from ._config import mode as mode
    from ._config import strict as strict
    from ._decorator import state_dtype_invariant as state_dtype_invariant
    from ._errors import Mismatch as Mismatch
    from ._errors import Origin as Origin
    from ._errors import StateDtypeError as StateDtypeError
    from ._errors import StateDtypeWarning as StateDtypeWarning
    from ._loop_hook import guard_loops as guard_loops
    from ._policy import Policy as Policy
    from ._recompile_report import CompiledFunction as CompiledFunction
    from ._recompile_report import Recompile as Recompile
    from ._recompile_report import RecompileError as RecompileError
    from ._recompile_report import RecompileReport as RecompileReport
    from ._recompiles import explain_recompiles as explain_recompiles

_EXPORTS = {
    "lax": ("lax", None),
    "testing": ("testing", None),
    "clear_caches": ("_caches", "clear_caches"),
    "config": ("_config", "config"),
    "mode": ("_config", "mode"),
    "strict": ("_config", "strict"),
    "state_dtype_invariant": ("_decorator", "state_dtype_invariant"),
    "guard_loops": ("_loop_hook", "guard_loops"),
    "Policy": ("_policy", "Policy"),
    "explain_recompiles": ("_recompiles", "explain_recompiles"),
    "CompiledFunction": ("_recompile_report", "CompiledFunction"),
    "Recompile": ("_recompile_report", "Recompile"),
    "RecompileError": ("_recompile_report", "RecompileError"),
    "RecompileReport": ("_recompile_report", "RecompileReport"),
    "Mismatch": ("_errors", "Mismatch"),
    "Origin": ("_errors", "Origin"),
    "StateDtypeError": ("_errors", "StateDtypeError"),
    "StateDtypeWarning": ("_errors", "StateDtypeWarning"),
}

__all__ = [
    "CompiledFunction",
    "Mismatch",
    "Origin",
    "Policy",
    "Recompile",
    "RecompileError",
    "RecompileReport",
    "StateDtypeError",
    "StateDtypeWarning",
    "__version__",
    "clear_caches",
    "config",
    "explain_recompiles",
    "guard_loops",
    "lax",
    "mode",
    "state_dtype_invariant",
    "strict",
    "testing",
]


# JAX_DTYPEGUARD_LOOPS=check|cast|warn guards the loops of the whole program.
if _config.config.loops != "off":
    from ._loop_hook import follow_config as _follow_config

    _follow_config()


# Submodules that need an optional library: `dg.optax` imports it on first use, but a star
# import (`__all__`) does not, so a program without Optax can import everything else.
_OPTIONAL_SUBMODULES = {"optax": "optax"}


def __getattr__(name: str) -> Any:
    if name in _OPTIONAL_SUBMODULES:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != _OPTIONAL_SUBMODULES[name]:
                raise
            raise AttributeError(
                f"jax_dtypeguard.{name} needs {error.name}, which is not installed: "
                f"pip install 'jax_dtypeguard[{name}]'"
            ) from error
    try:
        module_name, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'jax_dtypeguard' has no attribute {name!r}") from None
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
