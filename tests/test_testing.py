"""jax_dtypeguard.testing: abstract assertions, Cases, dtype sweeps, the pytest parametrization.

The whole module runs in strict mode (the plugin's marker): the helpers must
behave the same in a test suite that uses `--dtypeguard-strict`.
"""

import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError, state_dtype_invariant
from jax_dtypeguard.testing import (
    DTYPES,
    Case,
    CaseError,
    assert_state_dtype_invariant,
    dtype_sweep,
    parametrize_dtypes,
    x64_for,
)

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.dtypeguard_strict, pytest.mark.check_mode]


class State(NamedTuple):
    w: jax.Array
    count: jax.Array


def sgd(state, grads, lr=0.1):
    return State(state.w - lr * grads, state.count + 1)


def promote(state, value):
    return State(state.w * value, state.count + 1.0)


def f16_state():
    return State(jnp.ones(3, jnp.float16), jnp.int32(0))


def plain(mismatch):
    """A mismatch without its origin (provenance has its own tests)."""
    return f"{mismatch.path}: {mismatch.expected} -> {mismatch.got}"


def test_this_module_runs_in_strict_mode():
    assert dg.config.strict is True


# --- assert_state_dtype_invariant ----------------------------------------------


def test_passes_when_the_state_keeps_its_types():
    assert assert_state_dtype_invariant(sgd, f16_state(), jnp.ones(3, jnp.float16)) is None
    assert_state_dtype_invariant(sgd, f16_state(), jnp.ones(3, jnp.float16), lr=0.5)


def test_lists_every_drifting_leaf_under_the_parameter_name():
    with pytest.raises(StateDtypeError) as error:
        assert_state_dtype_invariant(promote, f16_state(), jnp.float32(2))
    assert [(plain(m), m.kind) for m in error.value.mismatches] == [
        ("state.w: float16[3] -> float32[3]", "dtype"),
        ("state.count: int32[] -> weak float32[]", "dtype"),
        ("state.count: int32[] -> weak float32[]", "weak_type"),
    ]
    assert "promote (tests/test_testing.py:" in str(error.value)


def test_abstract_only_no_host_callbacks_run():
    calls = []

    def step(state):
        jax.debug.callback(lambda x: calls.append(x), state.count)
        return State(state.w * 2, state.count + 1)

    def drifting(state):
        jax.debug.callback(lambda x: calls.append(x), state.count)
        return State(state.w * jnp.float32(2), state.count)

    assert_state_dtype_invariant(step, f16_state())
    with pytest.raises(StateDtypeError):
        assert_state_dtype_invariant(drifting, f16_state())
    assert calls == []
    jax.jit(step)(f16_state())  # the same callback does run when the step runs
    jax.effects_barrier()
    assert len(calls) == 1


def test_abstract_only_no_memory_or_flops_for_huge_states():
    # 40 GB of state and ~2e15 FLOPs if anything were allocated or run.
    big = jax.ShapeDtypeStruct((100_000, 100_000), jnp.float32)

    def step(w):
        return w @ w + jnp.ones((100_000, 100_000), jnp.float32)

    assert_state_dtype_invariant(step, big)
    with pytest.raises(StateDtypeError, match=r"w: float32\[100000,100000\] -> float16"):
        assert_state_dtype_invariant(lambda w: (w @ w).astype(jnp.float16), big)


def test_state_arg_out_kwargs_and_constant_leaves():
    def update(updates, opt_state, params=None, *, name="adam", transform=None):
        assert name == "adam" and transform is jnp.sqrt  # constants pass through as they are
        return updates, State(opt_state.w * params, opt_state.count)

    args = (jnp.ones(3, jnp.float16), jnp.ones(3, jnp.float16))
    assert_state_dtype_invariant(
        update, f16_state(), *args, state_arg=1, out=1, name="adam", transform=jnp.sqrt
    )
    with pytest.raises(StateDtypeError, match=r"opt_state.w: float16\[3\] -> float32\[3\]"):
        assert_state_dtype_invariant(
            update,
            f16_state(),
            args[0],
            jnp.ones(3, jnp.float32),
            state_arg=1,
            out=1,
            transform=jnp.sqrt,
        )


def test_python_scalars_are_traced_as_weak_types():
    # A Python float in the state is a weak float32, as under jit; `+ 1.0` keeps it.
    assert_state_dtype_invariant(lambda s: s + 1.0, 1.0)
    with pytest.raises(StateDtypeError, match=r"weak float32\[\] -> float32\[\]"):
        assert_state_dtype_invariant(lambda s: s + jnp.float32(1), 1.0)


def test_weak_type_argument_is_honoured_even_in_strict_mode():
    weak = jnp.asarray(1.0)
    assert weak.weak_type

    def strengthen(s):
        return s + jnp.float32(1)

    with pytest.raises(StateDtypeError, match="weak float32"):
        assert_state_dtype_invariant(strengthen, weak)
    assert dg.config.strict
    assert_state_dtype_invariant(strengthen, weak, weak_type=False)


def test_configured_mode_does_not_change_the_assertion():
    with dg.strict(False), dg.mode("off"), pytest.raises(StateDtypeError):
        assert_state_dtype_invariant(promote, f16_state(), jnp.float32(2))


def promote_w(state, value):
    return State(state.w * value, state.count + 1)


def test_guards_inside_the_function_follow_the_configuration():
    inner = state_dtype_invariant(promote_w, mode="cast")

    def step(state, value):
        return inner(state, value)

    with dg.strict(False):
        assert_state_dtype_invariant(step, f16_state(), jnp.float32(2))  # the inner cast repairs
    with pytest.raises(StateDtypeError, match="promote_w"):
        assert_state_dtype_invariant(step, f16_state(), jnp.float32(2))  # strict: it checks


def test_errors_of_the_function_pass_through():
    def broken(state):
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        assert_state_dtype_invariant(broken, f16_state())


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: assert_state_dtype_invariant(3, 0), TypeError, "expects a function; got int 3"),
        (
            lambda: assert_state_dtype_invariant(sgd, 0, 1, state_arg=2),
            ValueError,
            r"state_arg=2 must be a position from 0 to 1",
        ),
        (
            lambda: assert_state_dtype_invariant(sgd, 0, state_arg=True),
            TypeError,
            "state_arg must be an int position or a tuple of them; got True",
        ),
        (
            lambda: assert_state_dtype_invariant(sgd, 0, out="w"),
            TypeError,
            "out must be None or an int index; got 'w'",
        ),
        (
            lambda: assert_state_dtype_invariant(sgd, 0, weak_type="yes"),
            TypeError,
            "weak_type must be True or False; got 'yes'",
        ),
    ],
)
def test_misuse(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- Case ------------------------------------------------------------------------


def add_f32_constant(state):
    return state + jnp.asarray(1, jnp.float32)  # promotes float16/bfloat16 only


def ones(dtype):
    return jnp.ones(3, dtype)


def test_case_run_returns_mismatches_per_dtype():
    case = Case("add", add_f32_constant, ones)
    assert [plain(m) for m in case.run("float16")] == ["state: float16[3] -> float32[3]"]
    assert case.run("float32") == []
    assert case.run("float64") == []


def test_case_passes_args_kwargs_state_arg_and_out():
    def update(updates, opt_state, scale=1.0):
        return updates * scale, opt_state * updates

    case = Case(
        "update",
        update,
        make_state=ones,
        make_args=lambda dtype: [jnp.ones(3, jnp.float32)],
        state_arg=1,
        out=1,
        kwargs={"scale": 2.0},
    )
    assert [m.path for m in case.run("bfloat16")] == ["opt_state"]
    assert case.run("float32") == []


def test_case_accepts_dtypes_and_gives_factories_names():
    seen = []
    case = Case("ones", lambda s: s, lambda dtype: seen.append(dtype) or ones(dtype))
    assert case.run(jnp.bfloat16) == []
    assert case.run(np.dtype("float16")) == []
    assert seen == ["bfloat16", "float16"]


def raise_value_error(dtype):
    raise ValueError(f"no {dtype} here")


@pytest.mark.parametrize(
    "case, message, cause",
    [
        (
            Case("adam", add_f32_constant, raise_value_error),
            "Case 'adam' at dtype bfloat16: make_state('bfloat16') raised ValueError: "
            "no bfloat16 here",
            ValueError,
        ),
        (
            Case("adam", add_f32_constant, ones, raise_value_error),
            "Case 'adam' at dtype bfloat16: make_args('bfloat16') raised ValueError: "
            "no bfloat16 here",
            ValueError,
        ),
        (
            Case("adam", add_f32_constant, ones, ones),
            "Case 'adam' at dtype bfloat16: make_args must return a tuple of the other "
            "positional arguments; got ArrayImpl. Wrap a single argument: (x,).",
            None,
        ),
        (
            Case("adam", lambda s: s[10, 10], ones),
            "Case 'adam' at dtype bfloat16: tracing <lambda> raised IndexError: Too many indices",
            IndexError,
        ),
    ],
)
def test_case_errors_name_the_case_and_the_dtype(case, message, cause):
    with pytest.raises(CaseError) as error:
        case.run("bfloat16")
    assert str(error.value).startswith(message)
    assert (error.value.case, error.value.dtype) == ("adam", "bfloat16")
    assert type(error.value.__cause__) is cause or (cause is None and error.value.__cause__ is None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": 1}, "Case name must be a str; got int 1"),
        ({"fn": None}, "Case 'c': fn must be callable; got NoneType None"),
        ({"make_state": "ones"}, "Case 'c': make_state must be callable; got str 'ones'"),
        ({"make_args": ()}, "Case 'c': make_args must be callable"),
        (
            {"state_arg": "0"},
            "Case 'c': state_arg must be an int position or a tuple of them; got '0'",
        ),
        ({"out": 1.0}, "Case 'c': out must be None or an int index; got 1.0"),
        ({"kwargs": [1]}, "Case 'c': kwargs must be a mapping of keyword arguments; got list"),
    ],
)
def test_case_misuse_fails_at_construction(kwargs, match):
    with pytest.raises(TypeError, match=match):
        Case(**{"name": "c", "fn": add_f32_constant, "make_state": ones, **kwargs})


# --- dtype_sweep and x64_for ---------------------------------------------------


def x64_probe(seen):
    def make_state(dtype):
        seen[dtype] = jax.config.jax_enable_x64
        return jnp.ones(3, dtype)

    return Case("probe", add_f32_constant, make_state)


def test_sweep_results_and_x64_only_within_64_bit_runs_restoring_the_callers_setting(x64):
    seen = {}
    results = dtype_sweep(x64_probe(seen))
    assert list(results) == list(DTYPES)
    assert {d: [plain(m) for m in ms] for d, ms in results.items()} == {
        "float16": ["state: float16[3] -> float32[3]"],
        "bfloat16": ["state: bfloat16[3] -> float32[3]"],
        "float32": [],
        "float64": [],
    }
    # The 16/32-bit runs keep the caller's x64 setting; float64 forces it on.
    assert seen == {"float16": x64, "bfloat16": x64, "float32": x64, "float64": True}
    assert jax.config.jax_enable_x64 is x64


def test_sweep_restores_x64_when_a_case_fails(x64):
    case = Case("fails", add_f32_constant, raise_value_error)
    with pytest.raises(CaseError, match="Case 'fails' at dtype float64: make_state"):
        dtype_sweep(case, ["float64"])
    assert jax.config.jax_enable_x64 is x64


def test_sweep_weak_type_dtypes_and_misuse():
    case = Case("weak", lambda s: s + jnp.float32(1), lambda dtype: jnp.asarray(1.0))
    assert [m.kind for m in dtype_sweep(case, "float32")["float32"]] == ["weak_type"]
    assert dtype_sweep(case, ["float32"], weak_type=False) == {"float32": []}
    seen = {}
    with pytest.raises(ValueError, match="unknown dtype 'float128x'; use a dtype name such as"):
        dtype_sweep(x64_probe(seen), ["float16", "float128x"])
    assert seen == {}  # nothing ran
    with pytest.raises(TypeError, match=r"dtype_sweep expects a jax_dtypeguard\.testing\.Case"):
        dtype_sweep(add_f32_constant)


def test_x64_for(x64):
    cases = {"float64": True, "int64": True, "complex128": True, "float32+x64": True}
    cases.update({"float16": x64, "bfloat16": x64, "complex64": x64, "int32": x64})
    for dtype, expected in cases.items():
        with x64_for(dtype):
            assert jax.config.jax_enable_x64 is expected, dtype
        assert jax.config.jax_enable_x64 is x64
    with pytest.raises(ValueError, match="unknown dtype 'f99'"):
        x64_for("f99").__enter__()


# --- parametrize_dtypes in a real pytest run -----------------------------------

SWEPT = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    import pytest

    from jax_dtypeguard.testing import parametrize_dtypes

    @pytest.fixture
    def state(dtype):
        return jnp.ones(2, dtype), jax.config.jax_enable_x64

    @parametrize_dtypes()
    def test_sweep(state, dtype):
        array, fixture_x64 = state
        print(f"\\nSWEPT {dtype} {array.dtype} fixture={fixture_x64} body={jax.config.jax_enable_x64}")
        assert array.dtype == dtype

    class TestMethods:
        @parametrize_dtypes(["float32", "float64"])
        def test_method(self, dtype):
            assert jnp.ones(1, dtype).dtype == dtype

    def test_after():
        assert not jax.config.jax_enable_x64
    """
)


def test_parametrize_dtypes_in_a_real_pytest_run(pytester):
    pytester.makepyfile(test_swept=SWEPT)
    result = pytester.runpytest_subprocess(
        "-s", "-v", "--strict-markers", "-W", "error", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(
        [
            "*test_sweep?float16?*",
            "*test_sweep?bfloat16?*",
            "*test_sweep?float32?*",
            "*test_sweep?float64?*",
            "*TestMethods::test_method?float64? PASSED*",
        ]
    )
    assert sorted(line for line in result.outlines if line.startswith("SWEPT")) == [
        "SWEPT bfloat16 bfloat16 fixture=False body=False",
        "SWEPT float16 float16 fixture=False body=False",
        "SWEPT float32 float32 fixture=False body=False",
        "SWEPT float64 float64 fixture=True body=True",
    ]


def test_parametrize_dtypes_rejects_unknown_dtypes():
    with pytest.raises(ValueError, match="unknown dtype 'float99'"):
        parametrize_dtypes(["float16", "float99"])


@parametrize_dtypes()
def test_parametrize_dtypes_in_this_suite(dtype):
    assert jax.config.jax_enable_x64 is (dtype == "float64")
    assert dtype_sweep(Case("halve", lambda s: s * 0.5, ones), [dtype]) == {dtype: []}


# --- states over several arguments, one factory, static leaves --------------------


def solver_step(fn, y, args, options, state, tags):
    """An Optimistix-shaped step: (y, state) in, (y, state, aux) out."""
    new_state = {"f": fn(y), "count": state["count"] + 1, "history": state["history"]}
    return y - 0.1 * fn(y), new_state, None


def solver_make(dtype):
    y = jnp.ones(3, dtype)
    state = {"f": y, "count": jnp.asarray(0), "history": 10}
    return (y, state), [lambda y: y * 2, None, {}, frozenset()]


def test_a_state_over_several_arguments_and_results():
    case = Case("step", solver_step, make=solver_make, state_arg=(1, 4), out=(0, 1))
    assert dtype_sweep(case, [*DTYPES, "float32+x64"]) == {d: [] for d in [*DTYPES, "float32+x64"]}

    def strengthen(fn, y, args, options, state, tags):
        return y, {**state, "count": state["count"] + jnp.int32(1)}, None

    drifting = Case("strong", strengthen, make=solver_make, state_arg=(1, 4), out=(0, 1))
    (mismatch,) = drifting.run("float32")
    assert (mismatch.path, mismatch.kind) == ("state['count']", "weak_type")


def test_paths_of_each_part_start_with_its_parameters_name():
    def promote(fn, y, args, options, state, tags):
        return y.astype(jnp.float32), {**state, "f": state["f"].astype(jnp.float32)}, None

    case = Case("promote", promote, make=solver_make, state_arg=(1, 4), out=(0, 1))
    assert [m.path for m in case.run("bfloat16") if m.kind == "dtype"] == ["y", "state['f']"]


def test_a_traced_predicate_keeps_python_scalars_static():
    eqx = pytest.importorskip("equinox")

    def history_grows(fn, y, args, options, state, tags):
        return y, {**state, "history": state["history"] + 1}, None

    plain = Case("grows", history_grows, make=solver_make, state_arg=(1, 4), out=(0, 1))
    assert [m.kind for m in plain.run("float32")] == []  # traced: a weak int stays a weak int
    static = Case(
        "grows",
        history_grows,
        make=solver_make,
        state_arg=(1, 4),
        out=(0, 1),
        traced=eqx.is_array,
    )
    (mismatch,) = static.run("float32")
    assert (mismatch.path, mismatch.kind, mismatch.expected, mismatch.got) == (
        "state['history']",
        "structure",
        "10",
        "11",
    )


def test_non_array_leaves_are_static_and_compared_by_equality():
    eqx = pytest.importorskip("equinox")

    def keeps(state):
        return state

    def swaps(state):
        return {**state, "fn": jnp.cos}

    make = lambda dtype: ({"w": jnp.ones(2, dtype), "fn": jnp.sin}, [])  # noqa: E731
    assert Case("keeps", keeps, make=make, traced=eqx.is_array).run("float32") == []
    (mismatch,) = Case("swaps", swaps, make=make, traced=eqx.is_array).run("float32")
    assert (mismatch.path, mismatch.kind) == ("state['fn']", "structure")


def test_make_replaces_make_state_and_make_args():
    case = Case("sgd", sgd_two, make=lambda dtype: (jnp.ones(3, dtype), [jnp.ones(3, dtype)]))
    assert case.run("bfloat16") == []
    assert case.inputs("float16")[0].dtype == jnp.float16


def sgd_two(params, grads):
    return params - 0.1 * grads


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"make_state": None}, "give either make_state .* or make, not neither"),
        ({"make": lambda dtype: (1, ())}, "give either make_state .* or make, not both"),
        ({"state_arg": (0, 0)}, "names a position twice"),
        ({"state_arg": (0, 1), "out": 1}, "out must be a tuple of 2 int indices"),
        ({"traced": "eqx.is_array"}, "traced must be callable"),
    ],
)
def test_new_case_misuse(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Case(**{"name": "c", "fn": add_f32_constant, "make_state": ones, **kwargs})


def test_sweep_takes_float32_with_x64_on(x64):
    seen = {}
    results = dtype_sweep(x64_probe(seen), ["float32", "float32+x64"])
    assert list(results) == ["float32", "float32+x64"]
    assert seen == {"float32": True}  # both runs build float32; the +x64 run came last
    assert jax.config.jax_enable_x64 is x64


def test_float32_with_x64_on_is_where_float64_values_promote():
    def add_float64(state):
        return state + jnp.asarray(1.0, jnp.float64)

    case = Case("add", add_float64, ones)
    assert [m.got for m in dtype_sweep(case, ["float32+x64"])["float32+x64"]] == ["float64[3]"]


def test_the_docs_optimistix_example():
    # docs/testing.md, "States over several arguments": a ```py block, run here.
    eqx = pytest.importorskip("equinox")
    optx = pytest.importorskip("optimistix")
    solver = optx.BFGS(rtol=1e-3, atol=1e-6)

    def loss(y, args):
        return jnp.sum((y - 1.0) ** 2), None

    def make(dtype):
        y0 = jnp.zeros(3, dtype)
        f_struct, aux_struct = jax.eval_shape(lambda: loss(y0, None))
        state = solver.init(loss, y0, None, {}, f_struct, aux_struct, frozenset())
        return (y0, state), [loss, None, {}, frozenset()]

    def step(fn, y, args, options, state, tags):
        return solver.step(fn, y, args, options, state, tags)

    bfgs = Case("bfgs", step, make=make, state_arg=(1, 4), out=(0, 1), traced=eqx.is_array)
    assert dtype_sweep(bfgs, ["bfloat16", "float32", "float32+x64"]) == {
        "bfloat16": [],
        "float32": [],
        "float32+x64": [],
    }
