"""The words a user reads: pinned fragments of every report."""

import re
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

from jax_dtypeguard import (
    Mismatch,
    Origin,
    StateDtypeError,
    StateDtypeWarning,
    state_dtype_invariant,
)
from jax_dtypeguard._errors import Report

# Check-mode behaviour: .ci/run runs this module again under --dtypeguard-strict.
pytestmark = pytest.mark.check_mode


class Moments(NamedTuple):
    mu: jax.Array
    nu: jax.Array


def update(updates, opt_state):
    return updates, (Moments(opt_state[0].mu + updates, opt_state[0].nu), None)


def run(fn, mode="check"):
    guarded = state_dtype_invariant(fn, state="opt_state", out=1, mode=mode)
    state = (Moments(jnp.ones(3, jnp.bfloat16), jnp.ones(3, jnp.bfloat16)), 0)
    return guarded(jnp.ones(3, jnp.float32), state)


def test_error_names_function_file_line_and_each_mismatch_on_its_own_line():
    with pytest.raises(StateDtypeError) as caught:
        run(update)
    lines = str(caught.value).splitlines()
    line = update.__code__.co_firstlineno
    assert lines[0] == (
        f"update (tests/test_messages.py:{line}) changed the type of its state "
        "'opt_state' (2 mismatches):"
    )
    assert lines[1].startswith("  opt_state[0].mu: bfloat16[3] -> float32[3]")
    assert lines[2] == "  opt_state[1]: weak int32[] (Python int) -> None  [structure]"
    assert lines[3].startswith("Hint: ")
    assert 'mode="cast"' in lines[3] and "no `None` for `0`" in lines[3]


def test_error_is_a_type_error_from_the_public_module():
    assert issubclass(StateDtypeError, TypeError)
    assert StateDtypeError.__module__ == "jax_dtypeguard"
    assert StateDtypeWarning.__module__ == "jax_dtypeguard"
    assert issubclass(StateDtypeWarning, UserWarning)
    with pytest.raises(StateDtypeError) as caught:
        run(update)
    assert caught.value.function == "update"
    assert caught.value.mismatches[0] == Mismatch(
        "opt_state[0].mu", "dtype", "bfloat16[3]", "float32[3]", caught.value.mismatches[0].origin
    )


@pytest.mark.dtypeguard_strict(False)  # about cast/warn mode, which strict mode turns to check
def test_cast_mode_hint_says_casting_cannot_fix_the_rest():
    with pytest.raises(StateDtypeError) as caught:
        run(update, mode="cast")
    text = str(caught.value)
    assert "opt_state[0].mu" not in text
    assert "opt_state[1]: weak int32[] (Python int) -> None" in text
    assert "Hint: casting cannot fix these: return the same tree" in text


@pytest.mark.dtypeguard_strict(False)  # about cast/warn mode, which strict mode turns to check
def test_warning_has_the_same_report():
    with pytest.warns(StateDtypeWarning) as record:
        run(update, mode="warn")
    with pytest.raises(StateDtypeError) as caught:
        run(update)
    assert str(record[0].message) == str(caught.value)


def test_shape_dtype_of_one_leaf_are_two_tagged_lines():
    with pytest.raises(StateDtypeError) as caught:
        state_dtype_invariant(lambda s: jnp.ones(4, jnp.float32))(jnp.ones(3, jnp.float16))
    lines = str(caught.value).splitlines()
    assert lines[1] == "  s: float16[3] -> float32[4]  [shape]"
    assert lines[2].startswith("  s: float16[3] -> float32[4]  (first at ")
    assert lines[2].endswith("  [dtype]")
    assert "keep each leaf's shape" in str(caught.value)


def test_weak_types_and_python_scalars_read_plainly():
    with pytest.raises(StateDtypeError, match=re.escape("s: weak float32[] -> float32[]")):
        jax.jit(state_dtype_invariant(lambda s: s * jnp.float32(1)))(1.0)
    with pytest.raises(
        StateDtypeError, match=re.escape("s['n']: weak int32[] (Python int) -> int32[]")
    ):
        state_dtype_invariant(lambda s: {"n": jnp.int32(s["n"])})({"n": 0})


def test_origin_renders_after_two_spaces_in_parentheses():
    m = Mismatch(
        "opt_state[0].mu",
        "dtype",
        "bfloat16[3]",
        "float32[3]",
        Origin("add", "optax/_src/transform.py", 97, "update_moment"),
    )
    assert str(m) == (
        "opt_state[0].mu: bfloat16[3] -> float32[3]  "
        "(first at add, optax/_src/transform.py:97 in update_moment)"
    )
    via = Origin("mul", "step.py", 3, "step", argument="value")
    assert str(via) == "first at mul, step.py:3 in step, from argument 'value'"


def test_annotation_only_reports_have_their_own_header():
    report = Report(
        "f",
        "f.py:1",
        (Mismatch("x", "annotation", "Float[Array, 'n']", "int32[3]"),),
        "check",
        states=("state",),
    )
    text = str(report)
    assert text.splitlines()[0] == "f (f.py:1) does not match its annotations (1 mismatch):"
    assert text.splitlines()[1] == "  x: Float[Array, 'n'] -> int32[3]  [annotation]"


def test_sharding_hint_points_to_reshard():
    text = str(Report("f", "f.py:1", (Mismatch("s", "sharding", "a", "b"),), "cast", states=("s",)))
    assert "jax.sharding.reshard" in text


def test_a_report_renders_each_part_once_in_order():
    mismatch = Mismatch("updates['w']", "dtype", "bfloat16[3]", "float32[3]")
    report = Report(
        "invariant(adamw)",
        "train.py:3",
        (mismatch,),
        "check",
        role="branch 1",
        what="returned updates whose types differ from the params'",
        against={"updates['w']": "params['w']"},
        notes=("In jax.lax.cond.",),
        hint="Hint: cast them.",
    )
    assert str(report).splitlines() == [
        "branch 1 invariant(adamw) (train.py:3) returned updates whose types differ from the "
        "params' (1 mismatch):",
        "  updates['w']: float32[3] but params['w'] is bfloat16[3]",
        "In jax.lax.cond.",
        "Hint: cast them.",
    ]


def test_no_warning_when_nothing_drifts():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state_dtype_invariant(lambda s: s + 1, mode="warn")(jnp.ones(2))
