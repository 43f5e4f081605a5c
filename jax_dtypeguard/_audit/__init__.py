"""The audit behind `jax-dtypeguard audit`: targets, columns, case runs, results.

`_targets` finds and loads the targets (the entry points of the group
`jax_dtypeguard.audit_targets`, and `module:attribute`); `_runner` runs each
case in each column, with `_init` (the audit of `init`), `_library_errors`
(a library's own loop errors read back as drift) and `_jit` (`--jit`); the
built-in targets are `_optax`, `_optimistix` and `_diffrax`, on `_probe`.
"""

from ._runner import Result as Result
from ._runner import audit as audit
from ._runner import check_dtype as check_dtype
from ._runner import columns as columns
from ._runner import failed as failed
from ._runner import run_case as run_case
from ._targets import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._targets import UsageError as UsageError
from ._targets import library_versions as library_versions
from ._targets import load_registered as load_registered
from ._targets import load_target as load_target
from ._targets import load_targets as load_targets
from ._targets import target_entry_points as target_entry_points
