"""`explain_recompiles`: every extra compile of every jitted function, explained."""

import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_dtypeguard as dg


def _function(report, name):
    found = [f for f in report.functions if f.name.endswith(name)]
    assert len(found) == 1, [f.name for f in report.functions]
    return found[0]


def test_a_python_float_then_an_array_compiles_again_for_weak_type():
    @jax.jit
    def scale(x, lr):
        return x * lr

    with dg.explain_recompiles(quiet=True) as report:
        scale(jnp.ones(3), 0.1)
        scale(jnp.ones(3), 0.2)  # the same aval: no compile
        scale(jnp.ones(3), jnp.float32(0.1))
    function = _function(report, "scale")
    assert function.compiles == 2
    assert function.calls is None
    (recompile,) = function.recompiles
    assert recompile.call_site is not None and recompile.call_site.endswith(
        "test_recompiles.py:" + str(_line_of("scale(jnp.ones(3), jnp.float32(0.1))"))
    )
    (mismatch,) = recompile.mismatches
    assert (mismatch.path, mismatch.kind) == ("lr", "weak_type")
    assert (mismatch.expected, mismatch.got) == ("weak float32[] (Python float)", "float32[]")
    text = str(report)
    assert "lr: weak float32[] (Python float) -> float32[]" in text
    assert "2nd compile at" in text


def _line_of(source: str) -> int:
    with open(__file__) as file:
        for number, line in enumerate(file, start=1):
            if source in line and "_line_of" not in line:
                return number
    raise AssertionError(source)


def test_a_changed_static_argument_is_kind_static_with_both_values():
    def power(x, n):
        return x**n

    jitted = jax.jit(power, static_argnums=1)
    with dg.explain_recompiles(quiet=True) as report:
        jitted(jnp.ones(2), 2)
        jitted(jnp.ones(2), 3)
    (recompile,) = _function(report, "power").recompiles
    (mismatch,) = recompile.mismatches
    assert (mismatch.path, mismatch.kind, mismatch.expected, mismatch.got) == (
        "n",
        "static",
        "2",
        "3",
    )


def test_a_numpy_array_where_a_jax_array_was_is_not_a_recompile():
    @jax.jit
    def double(x):
        return 2 * x

    with dg.explain_recompiles(quiet=True) as report:
        double(jnp.ones(3))
        double(np.ones(3, np.float32))
        double(jnp.ones(3))
    assert _function(report, "double").compiles == 1
    assert "no function compiled more than once" in str(report)


def test_paths_are_in_the_users_argument_names_and_the_closest_compile_is_compared():
    @jax.jit
    def step(state, data):
        return state

    state = {"w": jnp.ones(3), "count": jnp.int32(0)}
    with dg.explain_recompiles(quiet=True) as report:
        step(state, jnp.ones(2))
        step(state, jnp.ones(4))  # data changed shape
        # Against the 1st compile both leaves differ; against the 2nd, only count.
        step({"w": jnp.ones(3), "count": jnp.int16(0)}, jnp.ones(4))
    second, third = _function(report, "step").recompiles
    assert [(m.path, m.kind) for m in second.mismatches] == [("data", "shape")]
    assert [(m.path, m.kind) for m in third.mismatches] == [("state['count']", "dtype")]


def test_max_compiles_raises_at_the_call_that_compiles_once_too_often():
    @jax.jit
    def grow(x):
        return x + 1

    calls = []
    scope = dg.explain_recompiles(max_compiles=2, quiet=True)
    with pytest.raises(dg.RecompileError) as caught, scope as report:
        for n in (1, 2, 2, 3):
            calls.append(n)
            grow(jnp.ones(n))
    assert calls == [1, 2, 2, 3]
    assert isinstance(caught.value, dg.StateDtypeError)
    assert [(m.path, m.kind) for m in caught.value.mismatches] == [("x", "shape")]
    message = str(caught.value)
    assert "grow" in message and "max_compiles=2" in message
    assert "x: float32[2] -> float32[3]" in message
    assert report.exceeded


def test_max_compiles_must_be_a_positive_int():
    with pytest.raises(ValueError, match="max_compiles must be a positive int"):
        dg.explain_recompiles(max_compiles=0)


def test_nothing_is_recorded_outside_the_scope_and_the_scope_is_restored_on_exceptions():
    @jax.jit
    def inc(x):
        return x + 1

    with pytest.raises(ZeroDivisionError), dg.explain_recompiles(quiet=True) as report:
        inc(jnp.ones(1))
        raise ZeroDivisionError
    inc(jnp.ones(2))  # after the scope: not recorded
    assert _function(report, "inc").compiles == 1


def test_nested_scopes_each_see_what_happens_within_them():
    @jax.jit
    def neg(x):
        return -x

    with dg.explain_recompiles(quiet=True) as outer:
        neg(jnp.ones(1))
        with dg.explain_recompiles(quiet=True) as inner:
            neg(jnp.ones(2))
        neg(jnp.ones(3))
    assert _function(outer, "neg").compiles == 3
    assert _function(inner, "neg").compiles == 1  # its first compile within the scope


def test_another_thread_outside_the_scope_is_not_recorded():
    @jax.jit
    def sub(x):
        return x - 1

    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait()
        sub(jnp.ones(5))
        sub(jnp.ones(6))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with dg.explain_recompiles(quiet=True) as report:
        inside.set()
        done.wait()
        sub(jnp.ones(7))
    thread.join()
    assert _function(report, "sub").compiles == 1


def test_the_report_is_printed_to_stderr_unless_quiet(capsys):
    @jax.jit
    def half(x):
        return x / 2

    with dg.explain_recompiles():
        half(jnp.ones(1))
        half(jnp.ones(2))
    assert "half" in capsys.readouterr().err
    with dg.explain_recompiles(quiet=True):
        half(jnp.ones(3))
    assert capsys.readouterr().err == ""


def test_the_decorator_form_gives_each_call_a_scope_of_its_own(capsys):
    @jax.jit
    def cube(x):
        return x**3

    @dg.explain_recompiles()
    def train(n):
        cube(jnp.ones(n))
        cube(jnp.ones(n + 1))

    train(1)
    first = capsys.readouterr().err
    assert "cube" in first and "x: float32[1] -> float32[2]" in first
    train(1)  # compiled before: this scope sees no compile
    assert "nothing compiled" in capsys.readouterr().err


def test_the_json_round_trips_and_carries_what_the_text_shows():
    @jax.jit
    def add(x, y):
        return x + y

    with dg.explain_recompiles(quiet=True) as report:
        add(jnp.ones(2), 1)
        add(jnp.ones(2), jnp.ones(2))
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    (function,) = [f for f in data["functions"] if f["name"].endswith("add")]
    assert function["compiles"] == 2
    (recompile,) = function["recompiles"]
    assert recompile["mismatches"][0]["path"] == "y"
    assert recompile["mismatches"][0]["kind"] in ("shape", "structure")
    assert data["jax"] == jax.__version__


def test_a_function_jitted_anew_each_time_says_so():
    def make():
        return jax.jit(lambda x: x + 1)

    with dg.explain_recompiles(quiet=True) as report:
        make()(jnp.ones(2))
        make()(jnp.ones(2))
    (function,) = [f for f in report.functions if f.name.endswith("<lambda>")]
    (recompile,) = function.recompiles
    assert recompile.mismatches == ()
    assert recompile.note is not None and "new function object" in recompile.note
