"""Dtype policies: `dg.Policy`, `policy=` on the decorator and `dg.lax`, and its reports."""

import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jax_dtypeguard as dg
from jax_dtypeguard import Policy, StateDtypeError, StateDtypeWarning, state_dtype_invariant

MOMENTS = {"opt_state.**.mu.**": "float32", "opt_state.**.nu.**": "float32"}


def leaf_paths(policy, tree, root):
    """`{path: rule}` for the leaves a policy governs, as `check` sees them."""
    return {path: rule.text for _, rule, path in policy.layout(tree, root)[1].governed}


# --------------------------------------------------------------------------------------------
# Patterns


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("opt_state.**.nu.**", ["opt_state", "0", "nu", "w"], True),
        ("opt_state.**.nu.**", ["opt_state", "nu"], True),  # ** matches nothing, twice
        ("opt_state.**.nu.**", ["opt_state", "0", "mu", "w"], False),
        ("opt_state.**.nu.**", ["params", "nu"], False),
        ("opt_state[0].mu['w']", ["opt_state", "0", "mu", "w"], True),
        ("opt_state.0.mu.w", ["opt_state", "0", "mu", "w"], True),
        ("opt_state.*.mu", ["opt_state", "0", "mu"], True),
        ("opt_state.*.mu", ["opt_state", "mu"], False),  # * is exactly one segment
        ("params.layer_*.kernel", ["params", "layer_12", "kernel"], True),
        ("params.layer_?.kernel", ["params", "layer_12", "kernel"], False),
        ("params['a.b']", ["params", "a.b"], True),
        ("params['[ab]']", ["params", "a"], False),  # no character classes: a literal
        ("params['[ab]']", ["params", "[ab]"], True),
        ("**", ["anything", "at", "all"], True),
        ("re:opt_state/\\d+/(mu|nu)/.*", ["opt_state", "0", "nu", "w"], True),
        ("re:opt_state/\\d+/(mu|nu)", ["opt_state", "0", "nu", "w"], False),  # fullmatch
    ],
)
def test_patterns_match_segment_by_segment(pattern, path, matches):
    policy = Policy({pattern: "float32"})
    assert (policy.rule_for(path) is not None) is matches


def test_segments_come_from_keypaths_not_from_the_printed_path():
    # A dict key holding a dot or a bracket is one segment.
    tree = {"a.b": jnp.ones(1), "c[0]": jnp.ones(1), "d": [jnp.ones(1)]}
    policy = Policy(
        [("params['a.b']", "float16"), ("params.c[0]", "float16"), ("params.d.0", "bfloat16")]
    )
    assert leaf_paths(policy, tree, "params") == {
        "params['a.b']": "params['a.b']",
        "params['d'][0]": "params.d.0",
    }
    assert leaf_paths(Policy({"params['c[0]']": "float16"}), tree, "params") == {
        "params['c[0]']": "params['c[0]']"
    }


def test_first_matching_rule_wins_and_only_floating_leaves_are_governed():
    policy = Policy([("opt_state.count", "float16"), ("opt_state.**", "float32")])
    state = {"count": jnp.zeros((), jnp.int32), "mu": jnp.zeros(2, jnp.bfloat16)}
    # The int32 count matches a rule but is not floating: it keeps the invariant.
    assert [m.path for m in policy.check(state, root="opt_state")] == ["opt_state['mu']"]
    specific_first = Policy([("opt_state.mu", "bfloat16"), ("opt_state.**", "float32")])
    assert specific_first.check(state, root="opt_state") == []


_SEGMENT = st.text(alphabet="abcxyz_019", min_size=1, max_size=4)


@st.composite
def _pattern_and_path(draw):
    """A path, and a pattern made from it by replacing runs of segments with wildcards."""
    path = draw(st.lists(_SEGMENT, min_size=1, max_size=6))
    pattern, position = [], 0
    while position < len(path):
        choice = draw(st.sampled_from(["keep", "star", "stars", "glob"]))
        if choice == "keep":
            pattern.append(path[position])
            position += 1
        elif choice == "star":
            pattern.append("*")
            position += 1
        elif choice == "glob":
            pattern.append(path[position][:1] + "*")
            position += 1
        else:
            run = draw(st.integers(0, len(path) - position))
            pattern.append("**")
            position += run
    return path, pattern


@given(_pattern_and_path())
def test_a_pattern_made_from_a_path_matches_it(case):
    path, pattern = case
    assert Policy({".".join(pattern): "float32"}).rule_for(path) is not None


@given(st.lists(_SEGMENT, min_size=1, max_size=6), st.lists(_SEGMENT, min_size=1, max_size=6))
def test_a_literal_pattern_matches_exactly_its_own_path(pattern, path):
    matched = Policy({".".join(pattern): "float32"}).rule_for(path) is not None
    assert matched is (pattern == path)


@given(st.lists(_SEGMENT, min_size=1, max_size=6), st.integers(0, 6))
def test_double_star_and_the_regex_agree(path, cut):
    # `head.**` matches exactly the paths that `re:head(/.*)?` matches.
    head = path[: max(1, cut)]
    glob = Policy({".".join([*head, "**"]): "float32"})
    regex = Policy({"re:" + re.escape("/".join(head)) + "(/.*)?": "float32"})
    assert (glob.rule_for(path) is None) is (regex.rule_for(path) is None)


# --------------------------------------------------------------------------------------------
# Bad rules


@pytest.mark.parametrize("dtype", ["int32", "bool", "complex64", jnp.int8])
def test_a_non_floating_dtype_is_a_value_error_naming_the_rule(dtype):
    with pytest.raises(ValueError, match=r"'params\.\*\*'.* is not a floating dtype"):
        Policy({"params.**": dtype})


def test_bad_rules_say_what_is_wrong():
    with pytest.raises(ValueError, match="'nope' is not a dtype"):
        Policy({"params": "nope"})
    with pytest.raises(ValueError, match=r"'params\]x' is not a path pattern"):
        Policy({"params]x": "float32"})
    with pytest.raises(ValueError, match="regular expression does not compile"):
        Policy({"re:(": "float32"})
    with pytest.raises(TypeError, match="mapping from path patterns"):
        Policy("params.**")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="root must be the name"):
        Policy({"a": "float32"}).cast(jnp.ones(1), root="")


def test_a_rule_that_matches_no_argument_is_a_value_error_at_the_first_trace():
    @state_dtype_invariant(policy={"state.**": "float32", "stat.nu": "float32"})
    def step(state, grads):
        return state

    with pytest.raises(ValueError, match=r"'stat\.nu' matches no leaf .*\(state, grads\)"):
        jax.jit(step)({"nu": jnp.ones(2)}, jnp.ones(2))


def test_a_rule_written_after_a_more_general_one_is_a_value_error_naming_both():
    @state_dtype_invariant(policy={"params.**": "float32", "params.w": "bfloat16"})
    def step(params, grads):
        return params

    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(
        ValueError, match=r"'params\.w' governs no leaf: .* earlier rule 'params\.\*\*'"
    ):
        jax.jit(step)(params, params)

    @state_dtype_invariant(policy={"params.w": "bfloat16", "params.**": "float32"})
    def ordered(params, grads):
        return params

    params["w"] = params["w"].astype(jnp.bfloat16)
    jax.jit(ordered)(params, params)  # the specific rule first: both govern


def test_a_rule_shadowed_in_one_argument_but_governing_in_another_is_fine():
    @state_dtype_invariant(state="params", policy={"grads.w": "float32", "*.w": "bfloat16"})
    def step(params, grads):
        return params

    step({"w": jnp.ones(2, jnp.bfloat16)}, {"w": jnp.ones(2)})


def test_policy_equality_and_repr():
    assert Policy(MOMENTS) == Policy(list(MOMENTS.items()))
    assert hash(Policy(MOMENTS)) == hash(Policy(MOMENTS))
    assert repr(Policy({"a.**": jnp.bfloat16})) == "Policy({'a.**': 'bfloat16'})"


# --------------------------------------------------------------------------------------------
# policy.cast and policy.check


def adam_like(dtype=jnp.bfloat16):
    return (
        {
            "count": jnp.zeros((), jnp.int32),
            "mu": {"w": jnp.zeros(3, dtype)},
            "nu": {"w": jnp.zeros(3, dtype)},
        },
    )


def test_cast_and_check_apply_the_matching_rules_and_ignore_the_others():
    policy = Policy({**MOMENTS, "params.**": "bfloat16", "grads.**": "float32"})
    state = adam_like()
    found = policy.check(state, root="opt_state")
    assert [str(m) for m in found] == [
        "opt_state[0]['mu']['w']: float32[3] (policy 'opt_state.**.mu.**') -> bfloat16[3]",
        "opt_state[0]['nu']['w']: float32[3] (policy 'opt_state.**.nu.**') -> bfloat16[3]",
    ]
    assert all(m.kind == "dtype" and m.side is None for m in found)
    cast = policy.cast(state, root="opt_state")
    assert cast[0]["mu"]["w"].dtype == cast[0]["nu"]["w"].dtype == jnp.float32
    assert cast[0]["count"].dtype == jnp.int32
    assert policy.check(cast, root="opt_state") == []
    assert policy.cast(cast, root="opt_state")[0]["mu"]["w"] is cast[0]["mu"]["w"]  # no copy


def test_a_weak_leaf_breaks_the_policy_and_casts_to_strong():
    policy = Policy({"x": "float32"})
    weak = jnp.asarray(1.0)
    assert weak.aval.weak_type
    assert [m.got for m in policy.check(weak, root="x")] == ["weak float32[]"]
    assert not policy.cast(weak, root="x").aval.weak_type


def test_cast_traced_adds_one_conversion_per_cast_leaf():
    policy = Policy(MOMENTS)
    jaxpr = jax.make_jaxpr(lambda s: policy.cast(s, root="opt_state"))(adam_like())
    assert [e.primitive.name for e in jaxpr.eqns] == ["convert_element_type"] * 2


def test_cast_of_abstract_states():
    abstract = jax.eval_shape(lambda: adam_like())
    cast = Policy(MOMENTS).cast(abstract, root="opt_state")
    assert cast[0]["nu"]["w"] == jax.ShapeDtypeStruct((3,), jnp.float32)


def test_float64_rules_follow_x64(x64):
    policy = Policy({"x": "float64"})
    cast = policy.cast(jnp.ones(2, jnp.float16), root="x")
    assert cast.dtype == (jnp.float64 if x64 else jnp.float32)


# --------------------------------------------------------------------------------------------
# policy= on the decorator: every mode


def moments_step(drift=False, scale=0.5):
    def step(opt_state, grads):
        (inner,) = opt_state
        nu = inner["nu"]["w"]
        new_nu = nu * scale + grads["w"] ** 2  # float32 in the policy's dtypes
        if drift:
            new_nu = new_nu.astype(jnp.bfloat16)  # the line that breaks the policy
        return ({**inner, "nu": {"w": new_nu}},)

    return step


def moments_state():
    return Policy(MOMENTS).cast(adam_like(), root="opt_state")


GRADS = {"w": jnp.ones(3, jnp.float32)}
STEP_POLICY = {**MOMENTS, "grads.**": "float32"}


@pytest.mark.parametrize("mode", ["check", "cast", "warn", "off"])
def test_a_policy_that_holds_changes_nothing(mode):
    step = state_dtype_invariant(moments_step(), mode=mode, policy=STEP_POLICY)
    (out,) = jax.jit(step)(moments_state(), GRADS)
    assert out["nu"]["w"].dtype == jnp.float32


def test_check_mode_reports_output_drift_with_its_rule_side_and_line():
    step = state_dtype_invariant(moments_step(drift=True), mode="check", policy=STEP_POLICY)
    with pytest.raises(StateDtypeError) as info:
        jax.jit(step)(moments_state(), GRADS)
    (mismatch,) = info.value.mismatches
    assert (mismatch.path, mismatch.kind, mismatch.rule, mismatch.side) == (
        "opt_state[0]['nu']['w']",
        "dtype",
        "opt_state.**.nu.**",
        "output",
    )
    text = str(info.value)
    assert (
        "opt_state[0]['nu']['w']: float32[3] (policy 'opt_state.**.nu.**') -> bfloat16[3] on output"
        in text
    )
    assert mismatch.origin is not None and mismatch.origin.primitive == "convert_element_type"
    assert mismatch.origin.line is not None and mismatch.origin.file.endswith("test_policy.py")
    source = pathlib.Path(mismatch.origin.file).read_text().splitlines()
    assert "new_nu.astype(jnp.bfloat16)" in source[mismatch.origin.line - 1]


def test_cast_mode_casts_the_output_to_the_policy():
    step = state_dtype_invariant(moments_step(drift=True), mode="cast", policy=STEP_POLICY)
    (out,) = jax.jit(step)(moments_state(), GRADS)
    assert out["nu"]["w"].dtype == jnp.float32


def test_warn_mode_warns_about_output_drift():
    step = state_dtype_invariant(moments_step(drift=True), mode="warn", policy=STEP_POLICY)
    with pytest.warns(StateDtypeWarning, match=r"on output"):
        (out,) = jax.jit(step)(moments_state(), GRADS)
    assert out["nu"]["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("mode", ["check", "cast", "warn"])
def test_an_input_state_that_breaks_the_policy_raises_in_every_mode_but_off(mode):
    step = state_dtype_invariant(moments_step(), mode=mode, policy=STEP_POLICY)
    with pytest.raises(StateDtypeError) as info:
        jax.jit(step)(adam_like(), GRADS)
    assert [(m.path, m.side) for m in info.value.mismatches] == [
        ("opt_state[0]['mu']['w']", "input"),
        ("opt_state[0]['nu']['w']", "input"),
    ]
    text = str(info.value)
    assert "was given arguments that break its dtype policy (2 mismatches)" in text
    assert "(policy 'opt_state.**.nu.**') -> bfloat16[3] on input" in text
    assert "policy.cast(opt_state, root='opt_state')" in text
    assert all(m.origin is None for m in info.value.mismatches)


def test_off_mode_ignores_the_policy():
    step = state_dtype_invariant(moments_step(drift=True), mode="off", policy=STEP_POLICY)
    (out,) = jax.jit(step)(adam_like(), {"w": jnp.ones(3, jnp.bfloat16)})
    assert out["nu"]["w"].dtype == jnp.bfloat16


def test_other_arguments_are_checked_on_entry():
    step = state_dtype_invariant(moments_step(), mode="check", policy=STEP_POLICY)
    grads = {"w": jnp.ones(3, jnp.bfloat16)}
    with pytest.raises(
        StateDtypeError,
        match=r"grads\['w'\]: float32\[3\] \(policy 'grads\.\*\*'\) -> bfloat16\[3\] on input",
    ) as info:
        jax.jit(step)(moments_state(), grads)
    assert 'mode="cast", which casts them on entry' in str(info.value)
    warned = state_dtype_invariant(moments_step(), mode="warn", policy=STEP_POLICY)
    with pytest.warns(StateDtypeWarning, match="grads"):
        jax.jit(warned)(moments_state(), grads)


def test_cast_mode_casts_other_arguments_on_entry_with_one_conversion_each():
    seen = []

    def step(opt_state, grads):
        seen.append(grads["w"].dtype)
        return opt_state

    guarded = state_dtype_invariant(step, mode="cast", policy=STEP_POLICY)
    state, grads = moments_state(), {"w": jnp.ones(3, jnp.bfloat16)}
    jaxpr = jax.make_jaxpr(guarded)(state, grads)
    assert seen == [jnp.float32]
    assert [e.primitive.name for e in jaxpr.jaxpr.eqns] == ["convert_element_type"]


def test_cast_mode_adds_one_conversion_per_cast_leaf():
    state = moments_state()
    plain = jax.make_jaxpr(moments_step(drift=True))(state, GRADS)
    guarded = state_dtype_invariant(moments_step(drift=True), mode="cast", policy=STEP_POLICY)
    cast = jax.make_jaxpr(guarded)(state, GRADS)
    names = lambda j: [e.primitive.name for e in j.jaxpr.eqns]  # noqa: E731
    assert names(cast) == [*names(plain), "convert_element_type"]


def test_check_mode_jaxpr_is_the_undecorated_functions():
    state = moments_state()
    plain = jax.make_jaxpr(moments_step())(state, GRADS)
    guarded = state_dtype_invariant(moments_step(), mode="check", policy=STEP_POLICY)
    assert str(jax.make_jaxpr(guarded)(state, GRADS)) == str(plain)


def test_leaves_no_rule_governs_keep_the_invariant():
    def step(opt_state, grads):
        (inner,) = opt_state
        return ({**inner, "count": inner["count"].astype(jnp.int16)},)

    guarded = state_dtype_invariant(step, policy=STEP_POLICY)
    with pytest.raises(StateDtypeError) as info:
        guarded(moments_state(), GRADS)
    (mismatch,) = info.value.mismatches
    assert (mismatch.path, mismatch.rule, mismatch.side) == ("opt_state[0]['count']", None, None)
    assert str(mismatch).startswith("opt_state[0]['count']: int32[] -> int16[]  (first at")


def test_strict_mode_turns_cast_into_check():
    step = state_dtype_invariant(moments_step(drift=True), mode="cast", policy=STEP_POLICY)
    with dg.strict(), pytest.raises(StateDtypeError, match="on output"):
        jax.jit(step)(moments_state(), GRADS)


def test_config_mode_applies():
    step = state_dtype_invariant(moments_step(drift=True), policy=STEP_POLICY)
    with dg.mode("cast"):
        (out,) = step(moments_state(), GRADS)
    assert out["nu"]["w"].dtype == jnp.float32


def test_eager_calls_are_governed_every_time():
    step = state_dtype_invariant(moments_step(), policy=STEP_POLICY)
    state = moments_state()
    for _ in range(3):
        state = step(state, GRADS)
    with pytest.raises(StateDtypeError, match="on input"):
        step(adam_like(), GRADS)


def test_a_policy_object_is_shared_by_several_steps():
    policy = Policy(STEP_POLICY)
    first = state_dtype_invariant(moments_step(), policy=policy)
    second = state_dtype_invariant(moments_step(scale=0.25), policy=policy)
    assert first(second(moments_state(), GRADS), GRADS)[0]["nu"]["w"].dtype == jnp.float32


# --------------------------------------------------------------------------------------------
# Transformations and loops


def test_under_vmap_and_grad():
    step = state_dtype_invariant(moments_step(drift=True), mode="cast", policy=STEP_POLICY)
    batched = jax.tree.map(lambda x: jnp.stack([x, x]), (moments_state(), GRADS))
    (out,) = jax.vmap(step)(*batched)
    assert out["nu"]["w"].dtype == jnp.float32

    def loss(grads):
        (out,) = step(moments_state(), grads)
        return out["nu"]["w"].astype(jnp.float32).sum()

    assert jax.grad(loss)(GRADS)["w"].dtype == jnp.float32


def test_in_a_while_loop_body():
    @state_dtype_invariant(mode="cast", policy={"carry[1]": "float32"})
    def body(carry):
        i, x = carry
        return i + 1, (x * 0.5).astype(jnp.bfloat16)

    _, x = jax.jit(lambda c: jax.lax.while_loop(lambda c: c[0] < 3, body, c))(
        (0, jnp.ones(3, jnp.float32))
    )
    assert x.dtype == jnp.float32


@pytest.mark.parametrize("mode", ["check", "cast"])
def test_dg_lax_forms_take_a_policy(mode):
    def body(carry):
        i, x = carry
        return i + 1, (x * 0.5).astype(jnp.bfloat16)

    init = (0, jnp.ones(3, jnp.float32))
    rules = {"carry.1": "float32"}
    if mode == "check":
        with pytest.raises(StateDtypeError, match=r"carry\[1\]: float32\[3\] \(policy 'carry.1'\)"):
            dg.lax.while_loop(lambda c: c[0] < 3, body, init, mode=mode, policy=rules)
    else:
        _, x = dg.lax.while_loop(lambda c: c[0] < 3, body, init, mode=mode, policy=rules)
        assert x.dtype == jnp.float32
    with pytest.raises(StateDtypeError, match="on input"):
        dg.lax.while_loop(lambda c: c[0] < 3, body, init, mode=mode, policy={"carry.1": "bfloat16"})
    with pytest.raises(ValueError, match=r"'carry\.2' matches no leaf"):
        dg.lax.fori_loop(0, 3, lambda i, c: c, init, mode=mode, policy={"carry.2": "float32"})


def test_scan_casts_its_xs_on_entry_and_its_carry_on_exit():
    seen = []

    def f(total, x):
        seen.append(x.dtype)
        return (total + x).astype(jnp.bfloat16), total

    total, _ = dg.lax.scan(
        f,
        jnp.zeros((), jnp.float32),
        jnp.ones(3, jnp.bfloat16),
        policy={"total": "float32", "x": "float32"},
    )
    assert total.dtype == jnp.float32 and seen == [jnp.float32]


def test_cond_and_switch_take_a_policy():
    x = jnp.ones(2, jnp.float32)
    y = dg.lax.cond(True, lambda x: x.astype(jnp.bfloat16), lambda x: x, x, policy={"x": "float32"})
    assert y.dtype == jnp.float32
    branches = [lambda x: x.astype(jnp.float16), lambda x: x]
    assert dg.lax.switch(0, branches, x, policy={"x": "float32"}).dtype == jnp.float32


def test_x64_on_and_off(x64):
    @state_dtype_invariant(mode="check", policy={"state": "float64" if x64 else "float32"})
    def step(state, lr):
        return state - lr * state

    # A float64 lr promotes the state only where x64 holds float64; the rule follows.
    state = jnp.ones(3, jnp.float64 if x64 else jnp.float32)
    assert jax.jit(step)(state, 0.1).dtype == state.dtype
    with pytest.raises(StateDtypeError, match="on input"):
        step(jnp.ones(3, jnp.float16), 0.1)


# --------------------------------------------------------------------------------------------
# Flax NNX, updated in place


def test_nnx_in_place_paths_and_cast_back():
    nnx = pytest.importorskip("flax.nnx")
    optax = pytest.importorskip("optax")
    model = nnx.Linear(4, 1, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)

    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x).astype(jnp.float32) - y) ** 2))(
            model
        )
        optimizer.update(model, jax.tree.map(lambda g: g.astype(jnp.float32), grads))
        return loss

    def guarded(policy, mode="check"):
        return nnx.jit(
            state_dtype_invariant(
                train_step, state=("model", "optimizer"), inplace=True, policy=policy, mode=mode
            )
        )

    batch = jnp.ones((8, 4), jnp.bfloat16), jnp.full((8, 1), 2.0)
    # float32 grads make adamw's mu float32: a bfloat16 rule for mu breaks on output.
    narrow = Policy({"model.**": "bfloat16", "optimizer.opt_state.**.mu.**": "bfloat16"})
    with pytest.raises(
        StateDtypeError,
        match=r"mu\['kernel'\].value: bfloat16\[4,1\] .* -> float32\[4,1\] on output",
    ):
        guarded(narrow)(model, optimizer, *batch)
    guarded(narrow, "cast")(model, optimizer, *batch)
    assert optimizer.opt_state[0].mu["kernel"][...].dtype == jnp.bfloat16
    # The moments adamw builds are bfloat16: a float32 policy breaks on input.
    wide = Policy({"model.**": "bfloat16", "optimizer.opt_state.**.*u.**": "float32"})
    with pytest.raises(StateDtypeError) as info:
        guarded(wide)(model, optimizer, *batch)
    assert "optimizer.opt_state[0].nu['kernel'].value" in {m.path for m in info.value.mismatches}
    fix = "nnx.update(optimizer, policy.cast(nnx.state(optimizer), root='optimizer'))"
    assert fix in str(info.value)
    nnx.update(optimizer, wide.cast(nnx.state(optimizer), root="optimizer"))
    guarded(wide)(model, optimizer, *batch)
    assert optimizer.opt_state[0].nu["kernel"][...].dtype == jnp.float32
    assert model.kernel[...].dtype == jnp.bfloat16


def test_the_policy_must_be_a_policy_or_its_rules():
    with pytest.raises(TypeError, match="mapping from path patterns"):
        state_dtype_invariant(lambda s: s, policy=3)  # type: ignore[arg-type]


def test_no_warning_from_a_policy_that_holds():
    step = state_dtype_invariant(moments_step(), policy=STEP_POLICY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(step)(moments_state(), GRADS)
