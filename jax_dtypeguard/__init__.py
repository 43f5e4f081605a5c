"""Keep the types of JAX state pytrees stable through step functions."""

from . import lax as lax, testing as testing
from ._config import config as config, mode as mode, strict as strict
from ._decorator import state_dtype_invariant as state_dtype_invariant
from ._errors import (
    Mismatch as Mismatch,
    Origin as Origin,
    StateDtypeError as StateDtypeError,
    StateDtypeWarning as StateDtypeWarning,
)
from ._version import __version__ as __version__
