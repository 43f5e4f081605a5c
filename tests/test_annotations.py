"""Annotations: jaxtyping + beartype checks, deep through state fields, in one memo."""
# jaxtyping dimension strings are not forward references:
# ruff: noqa: F722, F821, UP045

import dataclasses
import os
import subprocess
import sys
import textwrap
import types
import warnings
from collections import namedtuple
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import jaxtyping
import pytest
from jaxtyping import Array, Bool, Float, Float32, Int, Key, PyTree, Shaped

from jax_dtypeguard import StateDtypeError, _annotations, state_dtype_invariant

# Annotation checks are check-mode behaviour: the whole module runs in strict mode.
pytestmark = [pytest.mark.dtypeguard_strict, pytest.mark.check_mode]


class State(NamedTuple):
    mu: Float32[Array, "n"]
    count: Int[Array, ""]


class Info(NamedTuple):
    value: Float[Array, ""]
    steps: Optional[Int[Array, ""]]


class AdamLike(NamedTuple):
    count: Int[Array, ""]
    mu: Float[Array, "n"]
    nu: Float[Array, "n"]


class EmptyLike(NamedTuple):
    pass


class LinesearchLike(NamedTuple):
    info: Info
    history: list[Float[Array, "n"]]


def make_state(n=3, dtype=jnp.float32):
    return State(jnp.zeros(n, dtype), jnp.array(0, jnp.int32))


def annotation_mismatches(error):
    return [(m.path, m.expected, m.got) for m in error.mismatches if m.kind == "annotation"]


def test_checker_for_is_none_without_annotations():
    def step(state, x):
        return state

    assert _annotations.checker_for(step, "state") is None
    assert _annotations.checker_for(lambda state: state, "state") is None


def test_a_valid_call_passes_eagerly_and_under_jit():
    @state_dtype_invariant
    def step(state: State, x: Float[Array, "n"]) -> State:
        return State(state.mu + x, state.count + 1)

    state = make_state()
    assert step(state, jnp.ones(3)).count == 1
    assert jax.jit(step)(state, jnp.ones(3)).count == 1


def test_wrong_dtype_in_an_input_field():
    @state_dtype_invariant
    def step(state: State) -> State:
        return state

    with pytest.raises(StateDtypeError) as info:
        step(make_state(dtype=jnp.float16))
    assert ("state.mu", "Float32[Array, 'n']", "float16[3]") in annotation_mismatches(info.value)
    assert all(m.kind == "annotation" for m in info.value.mismatches)


def test_wrong_shape_in_an_input_field_contradicting_a_dimension():
    @state_dtype_invariant
    def step(state: State, x: Float[Array, "n"]) -> State:
        return state

    with pytest.raises(StateDtypeError) as info:
        step(make_state(4), jnp.ones(3))
    assert annotation_mismatches(info.value) == [("x", "Float[Array, 'n']", "float32[3] where n=4")]


def test_a_dimension_bound_by_an_argument_and_contradicted_by_a_state_field():
    @state_dtype_invariant(state="state")
    def step(x: Float[Array, "n"], state: State) -> State:
        return state

    with pytest.raises(StateDtypeError) as info:
        step(jnp.ones(3), make_state(4))
    paths = annotation_mismatches(info.value)
    assert ("state.mu", "Float32[Array, 'n']", "float32[4] where n=3") in paths
    assert ("return.mu", "Float32[Array, 'n']", "float32[4] where n=3") in paths


def test_wrong_dtype_in_an_output_field():
    @state_dtype_invariant
    def step(state: State) -> State:
        return State(state.mu.astype(jnp.float16), state.count)

    with pytest.raises(StateDtypeError) as info:
        step(make_state())
    assert [m.kind for m in info.value.mismatches] == ["dtype", "annotation"]
    assert annotation_mismatches(info.value) == [
        ("return.mu", "Float32[Array, 'n']", "float16[3] where n=3")
    ]


def test_wrong_shape_in_an_output_field_of_a_returned_tuple():
    @state_dtype_invariant(out=1)
    def update(updates: Float[Array, "n"], state: AdamLike) -> tuple[Float[Array, "n"], AdamLike]:
        return updates[:2], state

    state = AdamLike(jnp.array(0), jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(StateDtypeError) as info:
        update(jnp.ones(3), state)
    assert annotation_mismatches(info.value) == [
        ("return[0]", "Float[Array, 'n']", "float32[2] where n=3")
    ]


def test_the_output_state_is_checked_against_its_field_hints_even_unannotated():
    # No return annotation: the returned state's fields are still checked by
    # their class's hints, in the memo that the input bound.
    @state_dtype_invariant(mode="off")
    def plain(state: State):
        return state

    @state_dtype_invariant
    def step(state: State, n: int):
        return State(jnp.zeros(n), state.count)

    wrong = make_state(dtype=jnp.float16)
    assert plain(wrong) is wrong  # mode "off": nothing runs, the annotation is not checked
    with pytest.raises(StateDtypeError) as info:
        step(make_state(3), 5)
    assert ("return.mu", "Float32[Array, 'n']", "float32[5] where n=3") in annotation_mismatches(
        info.value
    )


def test_nested_optax_like_chain_state():
    chain = (
        AdamLike(jnp.array(0), jnp.zeros(3), jnp.zeros(3)),
        EmptyLike(),
        LinesearchLike(
            Info(jnp.array(1.0), None), [jnp.zeros(3), jnp.zeros(3), jnp.zeros(3, jnp.int32)]
        ),
    )

    @state_dtype_invariant(state="opt_state", out=1)
    def update(updates: Float[Array, "n"], opt_state, params=None):
        return updates, opt_state

    with pytest.raises(StateDtypeError) as info:
        update(jnp.ones(3), chain)
    assert annotation_mismatches(info.value) == [
        ("opt_state[2].history[2]", "Float[Array, 'n']", "int32[3] where n=3"),
        ("return[1][2].history[2]", "Float[Array, 'n']", "int32[3] where n=3"),
    ]

    bad = (chain[0]._replace(nu=jnp.zeros(4)), chain[1], chain[2])
    with pytest.raises(StateDtypeError) as info:
        update(jnp.ones(3), bad)
    got = annotation_mismatches(info.value)
    assert ("opt_state[0].nu", "Float[Array, 'n']", "float32[4] where n=3") in got


def test_optional_fields():
    @state_dtype_invariant
    def step(info: Info) -> Info:
        return info

    step(Info(jnp.array(1.0), None))
    step(Info(jnp.array(1.0), jnp.array(2)))
    with pytest.raises(StateDtypeError) as info:
        step(Info(jnp.array(1.0), jnp.array(2.0)))
    assert ("info.steps", "Optional[Int[Array, '']]", "weak float32[]") in annotation_mismatches(
        info.value
    )


def test_x_or_none_fields_written_with_a_bar():
    class Carry(NamedTuple):
        best: Float[Array, "n"] | None

    @state_dtype_invariant
    def step(carry: Carry) -> Carry:
        return carry

    step(Carry(None))
    step(Carry(jnp.zeros(2)))
    with pytest.raises(StateDtypeError) as info:
        step(Carry(jnp.zeros((2, 2))))
    assert ("carry.best", "Float[Array, 'n'] | None", "float32[2,2]") in annotation_mismatches(
        info.value
    )


def test_every_element_of_lists_and_dicts_is_checked():
    @state_dtype_invariant
    def step(state: dict[str, list[Float[Array, "n"]]]) -> dict[str, list[Float[Array, "n"]]]:
        return state

    good = {"a": [jnp.zeros(2)] * 5, "b": [jnp.zeros(2)]}
    step(good)
    bad = {"a": [jnp.zeros(2)] * 4 + [jnp.zeros(3)], "b": [jnp.zeros(2)]}
    with pytest.raises(StateDtypeError) as info:
        step(bad)
    assert annotation_mismatches(info.value)[0] == (
        "state['a'][4]",
        "Float[Array, 'n']",
        "float32[3] where n=2",
    )


@pytest.mark.parametrize(
    "hint, good, bad, got",
    [
        (Float[Array, "a b"], jnp.zeros((2, 3)), jnp.zeros(2), "float32[2]"),
        (Float32[Array, "..."], jnp.zeros(2), jnp.zeros(2, jnp.bfloat16), "bfloat16[2]"),
        (Int[Array, "a"], jnp.zeros(2, jnp.int8), jnp.zeros(2), "float32[2]"),
        (Bool[Array, ""], jnp.array(True), jnp.array(1), "weak int32[]"),
        (Shaped[Array, "2 3"], jnp.zeros((2, 3), jnp.int8), jnp.zeros((3, 2)), "float32[3,2]"),
        (Key[Array, ""], jax.random.key(0), jnp.zeros((), jnp.uint32), "uint32[]"),
        (PyTree[Float[Array, "k"]], {"a": jnp.zeros(2)}, {"a": jnp.zeros(2, int)}, "dict"),
        (Float[Array, ""], jnp.array(1.0), 1.0, "weak float32[] (Python float)"),
    ],
    ids=["Float", "Float32", "Int", "Bool", "Shaped", "Key", "PyTree", "Python-float"],
)
def test_jaxtyping_array_kinds(hint, good, bad, got):
    class Holder(NamedTuple):
        x: hint

    @state_dtype_invariant
    def step(state: Holder) -> Holder:
        return state

    step(Holder(good))
    with pytest.raises(StateDtypeError) as info:
        step(Holder(bad))
    path, expected, found = annotation_mismatches(info.value)[0]
    assert path == "state.x"
    assert expected == _annotations.hint_text(hint)
    assert found.startswith(got)


def test_non_array_hints_go_to_beartype():
    class Config(NamedTuple):
        lr: float
        name: str
        sizes: tuple[int, ...]

    @state_dtype_invariant
    def step(state: State, config: Config) -> State:
        return state

    step(make_state(), Config(0.1, "a", (1, 2)))
    with pytest.raises(StateDtypeError) as info:
        step(make_state(), Config(0.1, "a", (1, "2")))
    assert annotation_mismatches(info.value) == [("config.sizes[1]", "int", "'2'")]


def test_a_state_of_the_wrong_class():
    @state_dtype_invariant
    def step(state: State) -> State:
        return state

    with pytest.raises(StateDtypeError) as info:
        step(AdamLike(jnp.array(0), jnp.zeros(3), jnp.zeros(3)))
    assert annotation_mismatches(info.value)[0] == ("state", "State", "AdamLike")


def test_dataclass_state():
    @jax.tree_util.register_dataclass
    @dataclasses.dataclass
    class Params:
        w: Float[Array, "n m"]
        b: Float[Array, "m"]

    @state_dtype_invariant
    def step(params: Params, x: Float[Array, "m"]) -> Params:
        return params

    step(Params(jnp.zeros((2, 3)), jnp.zeros(3)), jnp.zeros(3))
    with pytest.raises(StateDtypeError) as info:
        step(Params(jnp.zeros((2, 3)), jnp.zeros(2)), jnp.zeros(3))
    assert ("params.b", "Float[Array, 'm']", "float32[2] where n=2, m=3") in annotation_mismatches(
        info.value
    )


def test_equinox_module_state():
    eqx = pytest.importorskip("equinox")

    class Linear(eqx.Module):
        weight: Float[Array, "out in"]
        bias: Float[Array, "out"]
        inner: State

    @state_dtype_invariant
    def step(model: Linear, x: Float[Array, "in"]) -> Linear:
        return model

    model = Linear(jnp.zeros((2, 3)), jnp.zeros(2), make_state(2))
    step(model, jnp.zeros(3))
    bad = Linear(jnp.zeros((2, 3)), jnp.zeros(2), make_state(2, jnp.float16))
    with pytest.raises(StateDtypeError) as info:
        step(bad, jnp.zeros(3))
    assert ("model.inner.mu", "Float32[Array, 'n']", "float16[2] where out=2, in=3") in (
        annotation_mismatches(info.value)
    )


def test_flax_struct_state():
    struct = pytest.importorskip("flax.struct")

    @struct.dataclass
    class TrainState:
        step: Int[Array, ""]
        params: dict[str, Float[Array, "d"]]
        name: str = struct.field(pytree_node=False, default="run")

    @state_dtype_invariant
    def update(state: TrainState) -> TrainState:
        return state.replace(step=state.step + 1)

    good = TrainState(jnp.array(0), {"w": jnp.zeros(4), "b": jnp.zeros(4)})
    assert int(update(good).step) == 1
    bad = TrainState(jnp.array(0), {"b": jnp.zeros(4), "w": jnp.zeros(5)})
    with pytest.raises(StateDtypeError) as info:
        jax.jit(update)(bad)
    assert annotation_mismatches(info.value)[0] == (
        "state.params['w']",
        "Float[Array, 'd']",
        "float32[5] where d=4",
    )


class StringHinted(NamedTuple):
    mu: "Float[Array, 'n']"
    count: "Int[Array, '']"


def test_string_hints():
    @state_dtype_invariant
    def step(state: "StringHinted", x: "Float[Array, 'n']") -> "StringHinted":
        return state

    state = StringHinted(jnp.zeros(3), jnp.array(0))
    step(state, jnp.zeros(3))
    with pytest.raises(StateDtypeError) as info:
        step(state, jnp.zeros(2))
    assert annotation_mismatches(info.value) == [("x", "Float[Array, 'n']", "float32[2] where n=3")]


def test_from_future_import_annotations(monkeypatch):
    source = textwrap.dedent(
        """
        from __future__ import annotations
        from typing import NamedTuple
        import jax.numpy as jnp
        from jaxtyping import Array, Float
        from jax_dtypeguard import state_dtype_invariant

        class Carry(NamedTuple):
            x: Float[Array, "n"]
            best: Float[Array, "n"] | None

        @state_dtype_invariant
        def step(carry: Carry, y: Float[Array, "n"]) -> Carry:
            return Carry(carry.x + y, None)
        """
    )
    module = types.ModuleType("future_annotations_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, "<future>", "exec"), module.__dict__)
    step, carry = module.step, module.Carry
    assert step.__annotations__["carry"] == "Carry"  # strings indeed
    step(carry(jnp.zeros(2), None), jnp.ones(2))
    with pytest.raises(StateDtypeError) as info:
        step(carry(jnp.zeros(2), jnp.zeros(2, jnp.int32)), jnp.ones(2))
    assert annotation_mismatches(info.value) == [
        ("carry.best", "Float[Array, 'n'] | None", "int32[2] where n=2")
    ]


def test_under_jit_vmap_and_while_loop():
    @state_dtype_invariant
    def body(state: State) -> State:
        return State(state.mu * 2, state.count + 1)

    def run(state):
        return jax.lax.while_loop(lambda s: s.count < 3, body, state)

    assert int(jax.jit(run)(make_state()).count) == 3
    batched = jax.vmap(body)(State(jnp.zeros((5, 3)), jnp.zeros(5, jnp.int32)))
    assert batched.mu.shape == (5, 3)

    bad = make_state(dtype=jnp.bfloat16)
    expected = r"state\.mu: Float32\[Array, 'n'\] -> bfloat16\[3\]"
    with pytest.raises(StateDtypeError, match=expected):
        jax.jit(run)(bad)
    with pytest.raises(StateDtypeError, match=expected):
        jax.jit(body)(bad)
    with pytest.raises(StateDtypeError, match=expected):
        jax.vmap(body)(State(jnp.zeros((5, 3), jnp.bfloat16), jnp.zeros(5, jnp.int32)))


def test_vmap_sees_per_example_shapes():
    @state_dtype_invariant(state="state")
    def step(x: Float[Array, "n"], state: State) -> State:
        return state

    # Batched over the leading axis: per example, x has 3 and mu has 3.
    jax.vmap(step)(jnp.zeros((4, 3)), State(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32)))
    with pytest.raises(StateDtypeError, match="where n=3"):
        jax.vmap(step)(jnp.zeros((4, 3)), State(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32)))


def test_annotations_false_skips_the_check():
    @state_dtype_invariant(annotations=False)
    def step(state: State) -> State:
        return state

    assert step.__dtypeguard__.annotations is None
    step(make_state(dtype=jnp.float16))


def test_jaxtyping_config_disable_in_process():
    @state_dtype_invariant
    def step(state: State) -> State:
        return state

    bad = make_state(dtype=jnp.float16)
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        step(bad)
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
    with pytest.raises(StateDtypeError):
        step(bad)


def test_jaxtyping_disable_environment_variable():
    source = textwrap.dedent(
        """
        from typing import NamedTuple
        import jax.numpy as jnp
        from jaxtyping import Array, Float32
        from jax_dtypeguard import state_dtype_invariant, StateDtypeError

        class S(NamedTuple):
            mu: Float32[Array, "n"]

        @state_dtype_invariant
        def step(state: S) -> S:
            return state

        try:
            step(S(jnp.zeros(2, jnp.float16)))
        except StateDtypeError:
            print("checked")
        else:
            print("unchecked")
        """
    )
    outputs = {}
    for value in ("0", "1"):
        env = dict(os.environ, JAXTYPING_DISABLE=value, JAX_PLATFORMS="cpu")
        done = subprocess.run(
            [sys.executable, "-c", source], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        outputs[value] = done.stdout.strip()
    assert outputs == {"0": "checked", "1": "unchecked"}


class BadHints(NamedTuple):
    fine: Float[Array, "n"]
    unknown: "Undefined[Array, 'n']"
    odd: 3  # not a type


def test_bad_hints_warn_once_and_the_rest_is_still_checked():
    @state_dtype_invariant
    def step(state: BadHints) -> BadHints:
        return state

    good = BadHints(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    with pytest.warns(UserWarning) as records:
        step(good)
        step(BadHints(jnp.zeros(2), jnp.zeros(3), jnp.zeros(2)))  # a new signature
        jax.jit(step)(good)
    messages = [str(r.message) for r in records]
    assert len(messages) == 2, messages
    assert any("BadHints.unknown" in m and "Undefined" in m for m in messages)
    assert any("BadHints.odd" in m for m in messages)
    assert all("goes unchecked" in m for m in messages)
    with pytest.raises(StateDtypeError) as info:
        step(BadHints(jnp.zeros(2, jnp.int32), jnp.zeros(2), jnp.zeros(2)))
    assert annotation_mismatches(info.value)[0][0] == "state.fine"


def test_an_unresolvable_parameter_hint_warns_once():
    @state_dtype_invariant
    def step(state: "Missing", x: Float[Array, "n"]):
        return state

    with pytest.warns(UserWarning, match="parameter 'state' of .*step.*'Missing'") as records:
        step(make_state(), jnp.zeros(3))
        step(make_state(4), jnp.zeros(4))
    assert len(records) == 1
    with pytest.raises(StateDtypeError):  # x and the state's fields are still checked
        step(make_state(dtype=jnp.float16), jnp.zeros(3))


def test_a_state_class_without_hints_warns_once():
    Plain = namedtuple("Plain", ["a", "b"])

    @state_dtype_invariant
    def step(state: Plain, x: Float[Array, "n"]) -> Plain:
        return state

    with pytest.warns(UserWarning, match="Plain.*no annotations") as records:
        step(Plain(jnp.zeros(1), State(jnp.zeros(2), jnp.array(0))), jnp.zeros(2))
        step(Plain(jnp.zeros(1), State(jnp.zeros(3), jnp.array(0))), jnp.zeros(3))
    assert len(records) == 1
    # Records inside a hint-less one are still checked by their own hints.
    with pytest.raises(StateDtypeError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step(Plain(jnp.zeros(1), State(jnp.zeros(2, jnp.float16), jnp.array(0))), jnp.zeros(2))
    assert annotation_mismatches(info.value)[0][0] == "state.b.mu"


def test_eager_calls_are_checked_once_per_signature(monkeypatch):
    @state_dtype_invariant
    def step(state: State, lr: float) -> State:
        return state

    checker = step.__dtypeguard__.annotations
    calls = []
    original = checker.check
    monkeypatch.setattr(checker, "check", lambda *a: calls.append(1) or original(*a))
    state = make_state()
    for i in range(5):
        step(state, 0.1 * i)
    assert len(calls) == 1
    step(make_state(4), 0.1)  # a new shape: a new check
    assert len(calls) == 2
    jax.jit(lambda s: step(s, 0.1))(state)  # traced: always checked
    assert len(calls) == 3
    with pytest.raises(StateDtypeError):  # a cached violation still raises
        step(make_state(dtype=jnp.float16), 0.1)
    with pytest.raises(StateDtypeError):
        step(make_state(dtype=jnp.float16), 0.1)
    assert len(calls) == 4


def test_the_message_of_an_annotation_violation():
    @state_dtype_invariant(state="state")
    def step(x: Float[Array, "n"], state: State) -> State:
        return state

    with pytest.raises(StateDtypeError) as info:
        step(jnp.zeros(3), make_state(4, jnp.float16))
    message = str(info.value)
    lines = message.splitlines()
    assert "step (" in lines[0] and "does not match its annotations (2 mismatches):" in lines[0]
    assert lines[1:] == [
        "  state.mu: Float32[Array, 'n'] -> float16[4] where n=3  [annotation]",
        "  return.mu: Float32[Array, 'n'] -> float16[4] where n=3  [annotation]",
        "Hint: pass and return values that match the function's annotations.",
    ]


def test_a_violation_never_dumps_a_large_array():
    @state_dtype_invariant
    def step(state: State) -> State:
        return state

    with pytest.raises(StateDtypeError) as info:
        step(State(jnp.zeros((1000, 1000)), jnp.array(0)))
    assert len(str(info.value)) < 600
    assert "float32[1000,1000]" in str(info.value)


def test_the_memo_is_fresh_per_call():
    @state_dtype_invariant
    def step(state: State) -> State:
        return state

    step(make_state(3))
    step(make_state(5))  # "n" is not remembered across calls
    with jaxtyping.jaxtyped("context"):  # nor leaked into an enclosing memo
        assert isinstance(jnp.zeros(3), Float[Array, "n"])
        step(make_state(7))
        assert not isinstance(jnp.zeros(4), Float[Array, "n"])


def test_jaxtyping_private_memo_api():
    # The one private jaxtyping API we use (for the bindings in messages).
    # If this fails, jaxtyping moved `jaxtyping._storage.get_shape_memo`.
    assert _annotations._get_shape_memo is not None
    with jaxtyping.jaxtyped("context"):
        assert _annotations.dimension_bindings() == {}
        assert isinstance(jnp.zeros((2, 3, 4)), Float[Array, "a *rest"])
        bindings = _annotations.dimension_bindings()
    assert bindings == {"a": 2, "*rest": (3, 4)}


def test_hint_text():
    assert _annotations.hint_text(Float[Array, "n"]) == "Float[Array, 'n']"
    assert _annotations.hint_text(Optional[State]) == "Optional[State]"
    assert _annotations.hint_text(tuple[State, int]) == "tuple[State, int]"
    assert _annotations.hint_text(Float32[Array, "n"] | None) == "Float32[Array, 'n'] | None"


def test_real_optax_annotations_check_without_warnings():
    optax = pytest.importorskip("optax")
    from optax._src import base

    tx = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(0.1))
    params = {"w": jnp.zeros(3), "b": [jnp.zeros(2)]}

    @state_dtype_invariant(state="opt_state", out=1)
    def update(
        updates: base.Updates, opt_state: base.OptState, params: base.Params | None = None
    ) -> tuple[base.Updates, base.OptState]:
        return tx.update(updates, opt_state, params)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, state = update(params, tx.init(params))
        _, state = jax.jit(update)(params, state)
    assert int(state[0].count) == 2


def test_python_scalar_hints_accept_what_jit_makes_of_python_scalars():
    @state_dtype_invariant
    def step(state: Float[Array, " n"], lr: float, steps: int, flag: bool) -> Float[Array, " n"]:
        return state * lr

    state = jnp.ones(3)
    assert jax.jit(step)(state, 0.5, 3, True).shape == (3,)
    assert jax.vmap(step, in_axes=(0, None, None, None))(jnp.ones((2, 3)), 0.5, 3, True).shape == (
        2,
        3,
    )
    with pytest.raises(StateDtypeError, match=r"lr: float -> "):
        jax.jit(step)(state, jnp.ones(3), 3, True)  # not a scalar
    with pytest.raises(StateDtypeError, match=r"lr: float -> "):
        jax.jit(step)(state, jnp.float32(0.5), 3, True)  # a strong array, not a Python float
    with pytest.raises(StateDtypeError, match=r"steps: int -> "):
        jax.jit(step)(state, 0.5, 3.0, True)
