"""Provenance's parts, one at a time, on small jaxprs made by `jax.make_jaxpr`: how an
equation's outputs map into its nested jaxprs, the lineage masks, the blame rules, and
whose code a source file is."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dtypeguard._blame import (
    Blame,
    argument_to_name,
    before_promotion,
    blame,
    departing_operands,
    departs_from,
    is_promotion,
)
from jax_dtypeguard._call_site import equation_location, is_user_code, user_frame
from jax_dtypeguard._errors import short_path
from jax_dtypeguard._lineage import (
    Deadline,
    JaxprIndex,
    Lineage,
    nested_jaxprs,
    output_sources,
)

BF16 = jnp.ones(3, jnp.bfloat16)
F32 = jnp.ones(3, jnp.float32)
FROM_BF16 = departs_from(np.dtype(jnp.bfloat16), False, "dtype")


def jaxpr_of(fn, *args):
    return jax.make_jaxpr(fn)(*args).jaxpr


def only_eqn(jaxpr, primitive):
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == primitive]
    return eqn


# --------------------------------------------------------------------------------------------
# Output k of a call, cond or loop equation, in its nested jaxprs


def test_cond_output_comes_from_each_branch():
    jaxpr = jaxpr_of(
        lambda p, x: jax.lax.cond(p, lambda y: (y + 1, y), lambda y: (y * 2, y), x), True, 1.0
    )
    eqn = only_eqn(jaxpr, "cond")
    sources = output_sources(eqn, 0)
    assert len(sources) == 2
    for source in sources:
        assert source.nested.first == 1  # the predicate is no branch input
        assert source.outvar is source.nested.jaxpr.outvars[0]
        assert source.carry is None
    assert sorted(s.nested.jaxpr.eqns[0].primitive.name for s in sources) == ["add", "mul"]


def test_while_carry_goes_around_the_body():
    jaxpr = jaxpr_of(
        lambda a, b: jax.lax.while_loop(
            lambda c: c[2] < 3, lambda c: (c[1], c[0], c[2] + 1), (a, b, 0)
        ),
        1.0,
        2.0,
    )
    eqn = only_eqn(jaxpr, "while")
    (source,) = output_sources(eqn, 1)
    body = source.nested.jaxpr
    assert source.outvar is body.outvars[1]
    assert source.carry == 1 and source.nested.carries == range(3)
    # Its value before the loop: the equation's operand, the function's second input.
    assert eqn.invars[source.nested.first + source.carry] is jaxpr.invars[1]


def test_scan_carry_and_stacked_output():
    jaxpr = jaxpr_of(
        lambda c, xs: jax.lax.scan(lambda c, x: (c + x, c * 2), c, xs), 1.0, jnp.ones(3)
    )
    eqn = only_eqn(jaxpr, "scan")
    (carry,) = output_sources(eqn, 0)
    (stacked,) = output_sources(eqn, 1)
    assert carry.carry == 0 and stacked.carry is None
    assert stacked.outvar is stacked.nested.jaxpr.outvars[1]
    assert eqn.invars[carry.nested.first + carry.carry] is jaxpr.invars[0]


def custom_jvp_double(x):
    @jax.custom_jvp
    def double(x):
        return x * 2

    double.defjvp(lambda primals, tangents: (double(*primals), tangents[0] * 2))
    return double(x)


@pytest.mark.parametrize(
    "fn",
    [
        jax.jit(lambda x: jnp.sin(x) * 2),
        jax.checkpoint(lambda x: jnp.sin(x) * 2),
        custom_jvp_double,
    ],
    ids=["jit", "checkpoint", "custom_jvp"],
)
def test_call_output_maps_one_to_one(fn):
    jaxpr = jaxpr_of(fn, 1.0)
    (eqn,) = jaxpr.eqns
    (source,) = output_sources(eqn, 0)
    assert source.nested.first == 0 and source.carry is None
    assert source.outvar is source.nested.jaxpr.outvars[0]
    assert len(source.nested.jaxpr.invars) == len(eqn.invars)


def test_plain_equation_has_no_nested_jaxprs():
    (eqn,) = jaxpr_of(lambda x: x * 2, 1.0).eqns
    assert nested_jaxprs(eqn) == [] and output_sources(eqn, 0) == []


def test_lineage_reaches_a_carry_through_a_swapping_loop():
    jaxpr = jaxpr_of(
        lambda a, b, z: (
            jax.lax.while_loop(lambda c: c[2] < 3, lambda c: (c[1], c[0], c[2] + 1), (a, b, 0)),
            z * 2,
        ),
        1.0,
        2.0,
        3.0,
    )
    lineage = Lineage(jaxpr, {"['a']": 0, "['b']": 1, "['z']": 2}, Deadline(10.0))
    a, b, z = (lineage.bit(i) for i in range(3))
    first, second, count, doubled = (lineage.root.mask(v) for v in jaxpr.outvars)
    # Around the loop, each carry holds the other one's value: its lineage has both.
    assert first == second == a | b
    assert count == 0 and doubled == z


def test_lineage_joins_the_branches_of_a_cond():
    jaxpr = jaxpr_of(lambda p, x, y: jax.lax.cond(p, lambda: x, lambda: y), True, 1.0, 2.0)
    lineage = Lineage(jaxpr, {"x": 1, "y": 2}, Deadline(10.0))
    assert lineage.root.mask(jaxpr.outvars[0]) == lineage.bit(1) | lineage.bit(2)


# --------------------------------------------------------------------------------------------
# The blame rules


def test_departs_from_by_kind():
    weak_f32 = jax.ShapeDtypeStruct((), jnp.float32, weak_type=True)
    strong_f32 = jax.ShapeDtypeStruct((), jnp.float32)
    by_dtype = departs_from(np.dtype(jnp.float32), True, "dtype")
    by_weak_type = departs_from(np.dtype(jnp.float32), True, "weak_type")
    assert not by_dtype(strong_f32) and not by_weak_type(weak_f32)
    assert by_weak_type(strong_f32)
    assert by_dtype(jax.ShapeDtypeStruct((), jnp.float16))


def test_promotion_blames_the_add_and_names_the_other_operand():
    jaxpr = jaxpr_of(lambda state, grad: state + grad, BF16, F32)
    state, grad = jaxpr.invars
    promote, add = jaxpr.eqns
    index = JaxprIndex.of(jaxpr)
    (out,) = add.outvars
    (promoted,) = promote.outvars
    assert departing_operands(add, out, FROM_BF16) == [promoted, grad]
    assert is_promotion(promoted, index) and not is_promotion(grad, index)
    assert before_promotion(promoted, index) is state and before_promotion(grad, index) is grad
    lineage = {state, promoted, out}
    # The state flows into the add: it is blamed, and `grad` named.
    assert blame(add, out, FROM_BF16, index, lambda x: x in lineage) == Blame(True, (), (grad,))
    # Without the state's lineage the walk goes back through `grad`, not the promotion.
    assert blame(add, out, FROM_BF16, index) == Blame(False, (grad,))


def test_explicit_conversion_is_where_the_drift_began():
    jaxpr = jaxpr_of(lambda state: state.astype(jnp.float32), BF16)
    (convert,) = jaxpr.eqns
    assert departing_operands(convert, convert.outvars[0], FROM_BF16) == []
    assert blame(convert, convert.outvars[0], FROM_BF16, JaxprIndex.of(jaxpr)) == Blame(True)


def test_a_conversion_carries_a_departure_within_its_category():
    jaxpr = jaxpr_of(lambda state: state.astype(jnp.float16).astype(jnp.float32), BF16)
    to_f16, to_f32 = jaxpr.eqns
    (f16,) = to_f16.outvars
    # float16 departs from bfloat16 already: the second conversion only carries it.
    assert departing_operands(to_f32, to_f32.outvars[0], FROM_BF16) == [f16]
    ints = jaxpr_of(lambda state: state.astype(jnp.int32).astype(jnp.float32), BF16)
    _, to_float = ints.eqns
    assert departing_operands(to_float, to_float.outvars[0], FROM_BF16) == []


def test_the_state_flows_through_to_a_later_equation():
    jaxpr = jaxpr_of(lambda state: jnp.sin(state.astype(jnp.float32)), BF16)
    convert, sin = jaxpr.eqns
    index = JaxprIndex.of(jaxpr)
    lineage = {jaxpr.invars[0], convert.outvars[0], sin.outvars[0]}
    verdict = blame(sin, sin.outvars[0], FROM_BF16, index, lambda x: x in lineage)
    assert verdict == Blame(True, follow=(convert.outvars[0],))


def test_a_replaced_leaf_blames_what_wrote_its_value():
    jaxpr = jaxpr_of(lambda state, grad: grad * 2, BF16, F32)
    (mul,) = jaxpr.eqns
    grad = jaxpr.invars[1]
    verdict = blame(mul, mul.outvars[0], FROM_BF16, JaxprIndex.of(jaxpr), lambda x: False)
    assert verdict.here and verdict.replaced
    assert verdict.blamed[0] is grad  # values before constants


def test_the_promotion_of_a_weak_operand_is_not_the_blame():
    # A weak state made strong by a strong constant: the walk goes to the constant (and
    # the multiplication that used it is blamed), not to the conversion of the state.
    jaxpr = jaxpr_of(lambda state: state * jnp.float32(0.5), jnp.asarray(1.0))
    strong = departs_from(np.dtype(jnp.float32), True, "weak_type")
    *_, mul = jaxpr.eqns
    promoted, constant = mul.invars
    index = JaxprIndex.of(jaxpr)
    assert is_promotion(promoted, index, of_weak=True)
    assert blame(mul, mul.outvars[0], strong, index) == Blame(False, (constant,))


def test_argument_to_name():
    labels = ["state['w']", "updates['w']", "lr", "other"]
    assert argument_to_name(labels, [2, 1], "['w']", replaced=False) == 1
    assert argument_to_name(labels, [2, 3], "['w']", replaced=False) == 2
    assert argument_to_name(labels, [2, 3], "['w']", replaced=True) is None
    assert argument_to_name(labels, [3], "['w']", replaced=True) == 3
    assert argument_to_name(labels, [], "['w']", replaced=False) is None


# --------------------------------------------------------------------------------------------
# Whose code is this?


def test_is_user_code():
    assert is_user_code(__file__, installed=False)
    for path in (jax.__file__, os.__file__, user_frame.__code__.co_filename, "<frozen abc>"):
        assert not is_user_code(path, installed=True), path
    # An installed package: a library's line in a report, never the caller a warning names.
    assert is_user_code(np.__file__, installed=True)
    assert not is_user_code(np.__file__, installed=False)


def test_user_frame_and_equation_location():
    frame, level = user_frame(sys._getframe())
    assert (frame.f_code.co_name, level) == ("test_user_frame_and_equation_location", 0)
    (eqn,) = jaxpr_of(lambda x: x * 2, 1.0).eqns  # the equation's line
    with open(__file__) as source:
        line = next(n for n, text in enumerate(source, 1) if "# the equation's line" in text)
    file, number, function = equation_location(eqn)
    assert (file, number) == (short_path(__file__), line) and function.endswith("<lambda>")
