"""The blame rules of provenance: which equation a drift is blamed on, and which argument
the report names.

Pure functions of a jaxpr's equations (and of its `JaxprIndex`); the walk
that applies them, through nested jaxprs and back to the function's inputs,
is `_provenance`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._compat import is_literal
from ._lineage import JaxprIndex
from ._signature import category

_CONVERSION = "convert_element_type"


def departs_from(dtype: np.dtype, weak_type: bool, kind: str) -> Callable[[Any], bool]:
    """Whether an aval departs from the input leaf's type, for a drift of `kind`
    (`"dtype"`: its dtype; `"weak_type"`: its dtype or its weak type)."""
    if kind == "dtype":
        return lambda aval: getattr(aval, "dtype", dtype) != dtype
    return lambda aval: (
        getattr(aval, "dtype", dtype) != dtype
        or bool(getattr(aval, "weak_type", weak_type)) != weak_type
    )


def departing_operands(eqn: Any, out: Any, departs: Callable[[Any], bool]) -> list[Any]:
    """The operands of `eqn` that its output `out` may have its departure from: they depart
    too, in `out`'s dtype (for a `convert_element_type`, in its category: a float16 value
    converted to float32 carries its departure from bfloat16). Each operand once."""
    out_dtype = out.aval.dtype
    conversion = eqn.primitive.name == _CONVERSION
    operands: list[Any] = []
    for x in eqn.invars:
        aval = getattr(x, "aval", None)
        dtype = getattr(aval, "dtype", None)
        if dtype is None or not departs(aval):
            continue
        if (category(dtype) != category(out_dtype)) if conversion else dtype != out_dtype:
            continue
        for seen in operands:
            if x is seen:
                break
        else:
            operands.append(x)
    return operands


def is_promotion(atom: Any, index: JaxprIndex, *, of_weak: bool = False) -> bool:
    """Whether `atom` is the result of a `convert_element_type` (of a weak-typed operand:
    `of_weak`), as JAX's implicit promotion writes one for each operand it converts."""
    eqn = index.made_by(atom)
    if eqn is None or eqn.primitive.name != _CONVERSION:
        return False
    return not of_weak or bool(getattr(eqn.invars[0].aval, "weak_type", False))


def before_promotion(atom: Any, index: JaxprIndex) -> Any:
    """The operand that a `convert_element_type` made `atom` of; `atom` itself if no
    conversion made it. The argument to name is the one that was promoted."""
    eqn = index.made_by(atom)
    return eqn.invars[0] if eqn is not None and eqn.primitive.name == _CONVERSION else atom


class Blame(NamedTuple):
    """What the backward walk makes of a plain equation whose output departs.

    The walk first follows back the operands in `follow` (the departure came in
    with them); if none of them leads to where it began, and `here`, it began at
    this equation, and the arguments that `blamed` operands come from are named.
    """

    here: bool
    follow: tuple[Any, ...] = ()
    blamed: tuple[Any, ...] = ()
    replaced: bool = False  # the output does not depend on the drifting input leaf


def blame(
    eqn: Any,
    out: Any,
    departs: Callable[[Any], bool],
    index: JaxprIndex,
    from_leaf: Callable[[Any], bool] | None = None,
) -> Blame:
    """The blame rule at `eqn`, whose output `out` departs from the input leaf's type.

    **Arguments:**

    - `departs`: whether an aval departs (`departs_from`).
    - `index`: the `JaxprIndex` of the jaxpr `eqn` is in.
    - `from_leaf`: whether a value of that jaxpr depends on the drifting input
      leaf (its lineage); `None` where the leaf's lineage is not known. With it,
      the equations the leaf flows into are blamed, and the other operands named.
    """
    candidates = departing_operands(eqn, out, departs)
    if not candidates:
        return Blame(True)
    promoted = [False]
    if len(candidates) > 1:
        # A weak operand does not decide a promotion; values before constants (a value
        # may lead back to an argument); JAX's implicit promotion converts each operand
        # on the line that mixed them: such a conversion is not where the drift began.
        strong = [x for x in candidates if not getattr(x.aval, "weak_type", False)]
        candidates = sorted(strong or candidates, key=index.is_constant)
        # Newer JAX records Python-scalar literals as strong: a literal alone only
        # explains the conversion of a weak operand.
        values = len([x for x in candidates if not is_literal(x)])
        promoted = [
            is_promotion(x, index) and (values > 1 or is_promotion(x, index, of_weak=True))
            for x in candidates
        ]
    if from_leaf is None:
        follow = [x for x, p in zip(candidates, promoted) if not p]
        return Blame(False, tuple(follow)) if follow else Blame(True, (), tuple(candidates))
    if not from_leaf(out):
        # The input leaf does not reach this value: the function replaced the leaf, and
        # this is the equation that wrote the value returned in its place.
        return Blame(True, (), tuple(candidates), True)
    follow, others = [], []
    for x, p in zip(candidates, promoted):
        if not from_leaf(x):
            others.append(x)
        elif not p:
            follow.append(x)
    return Blame(True, tuple(follow), tuple(others))


def argument_to_name(
    labels: Sequence[str], reached: Sequence[int], path: str, *, replaced: bool
) -> int | None:
    """Which of the `reached` inputs (positions into `labels`) the report names.

    The one at the drifting leaf's own keypath `path` (`updates['w']` for
    `opt_state['w']`), else the first reached; for a `replaced` leaf, else
    the only one reached (with several, naming one would be a guess).
    """
    for position in reached:
        label = labels[position]
        if path and label.endswith(path) and not label[: -len(path)].endswith(("[", ".")):
            return position
    if replaced:
        return reached[0] if len(reached) == 1 else None
    return reached[0] if reached else None
