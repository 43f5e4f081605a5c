"""Keep the types of JAX state pytrees stable through step functions."""

from . import lax as lax
from . import testing as testing
from ._config import config as config
from ._config import mode as mode
from ._config import strict as strict
from ._decorator import state_dtype_invariant as state_dtype_invariant
from ._errors import (
    Mismatch as Mismatch,
)
from ._errors import (
    Origin as Origin,
)
from ._errors import (
    StateDtypeError as StateDtypeError,
)
from ._errors import (
    StateDtypeWarning as StateDtypeWarning,
)
from ._version import __version__ as __version__
