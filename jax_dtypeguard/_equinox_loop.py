"""Equinox's internal while loop, which does not promote a weak initial carry.

Every kind of `equinox.internal.while_loop` (`"lax"`, `"checkpointed"`,
`"bounded"`) rewrites its body through Equinox's `common_rewrite`, whose
rewritten body compares the body's output with its carry by shape and dtype
and raises on any difference. `jax.lax.while_loop` would first promote a weak
initial carry (`jnp.array(jnp.inf)`, weak float32) to the dtype the body
returns (float16) and trace again; Equinox's loop has no such step, so a
solver whose `init` builds a weak constant fails in float16. `guard_loops`
reports this in check mode and, in cast mode, applies JAX's rule itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _config
from ._carry_rules import weak_promotions
from ._signature import LeafSignature, NotALeafError

_tree = jax.tree_util


def _may_promote(tree: Any) -> bool:
    """Whether a carry holds a weak floating (or complex) leaf beside a strong one of
    another dtype: a weak float32 `best_loss` beside a float16 `y`, or a weak float64
    beside a float32 `y` under x64. Only then can a body that keeps its strong
    leaves' dtypes promote a weak one; other carries are not traced to find out."""
    weak, strong = set(), set()
    for leaf in _tree.tree_leaves(tree):
        try:
            signature = LeafSignature.of(leaf)
        except NotALeafError:
            continue
        if jnp.issubdtype(signature.dtype, jnp.inexact):
            (weak if signature.weak_type else strong).add(signature.dtype)
    return any(w != s for w in weak for s in strong)


def promote_weak_carry(
    rewrite: Callable[..., Any],
    cond_fun: Callable[[Any], Any],
    body_fun: Callable[[Any], Any],
    init_val: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """`init_val` with each weak leaf that `body_fun` returns in another dtype
    converted to that dtype, as `jax.lax.while_loop` converts a weak initial carry.

    `rewrite` is Equinox's `common_rewrite`, called as Equinox calls it (`args`
    and `kwargs`: max_steps, buffers, makes_false_steps). Where `init_val` has
    a weak floating leaf beside a strong one of another dtype, `body_fun` is
    traced once, abstractly (`jax.eval_shape`), to learn the types it returns;
    a body that fails in that trace is left for the loop's own trace to
    report. Weak integer leaves (step counters) are not promoted.
    """
    if not _may_promote(init_val):
        return init_val
    targets: dict[str, np.dtype] = {}

    def probe(carry: Any) -> Any:
        targets.update(weak_promotions(carry, body_fun(carry)))
        return carry  # what Equinox's own comparison accepts

    token = _config.retracing.set(True)  # guards inside the body warn in the real trace
    try:
        cond_, body_, init_, *_ = rewrite(cond_fun, probe, init_val, *args, **kwargs)
        del cond_
        jax.eval_shape(body_, init_)
    except Exception:
        return init_val
    finally:
        _config.retracing.reset(token)
    if not targets:
        return init_val

    def promote(path: Any, leaf: Any) -> Any:
        dtype = targets.get(_tree.keystr(path))
        return leaf if dtype is None else jax.lax.convert_element_type(leaf, dtype)

    return _tree.tree_map_with_path(promote, init_val)


def weak_carry_note(state_in: Any, state_out: Any, root: str) -> list[str]:
    """The line a report adds where the body changed the dtype of weak carry leaves
    that `jax.lax.while_loop` would have promoted (none where there are none)."""
    paths = [root + path for path in weak_promotions(state_in, state_out)]
    if not paths:
        return []
    return [
        f"Weak initial carry ({', '.join(paths)}): jax.lax.while_loop would promote it to "
        "the dtype the body returns; Equinox's loop does not, and rejects it. "
        'mode="cast" promotes it, as JAX would.'
    ]
