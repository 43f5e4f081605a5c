"""`explain_recompiles`: every extra compile of every jitted function, explained."""

import gc
import json
import threading
import weakref

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
    assert message.endswith("Hint: keep shapes fixed (pad or bucket them).")
    assert report.exceeded


def test_eager_jax_numpy_calls_in_two_dtypes_are_eager_compiles_not_recompiles():
    # jnp.sum runs JAX's own jitted _reduce_sum: one compile per dtype, by design.
    with dg.explain_recompiles(max_compiles=1, quiet=True) as report:
        jnp.sum(jnp.ones((11, 13)))  # a shape no other test sums: its first compile here
        jnp.sum(jnp.ones((11, 13), jnp.float16))
        jax.jit(lambda x: x + 1)(1.0)
    assert not report.exceeded
    assert [(f.compiles, f.recompiles) for f in report.functions] == [(1, ())]
    text = str(report)
    assert text.startswith("jax_dtypeguard.explain_recompiles: no function compiled more than once")
    assert "_reduce_sum" not in text
    eager = report.to_dict()["eager_compiles"]["count"]
    assert eager >= 2 and "Eager JAX calls (operations, and JAX's own" in text


def test_a_jitted_guarded_function_is_the_users_not_an_eager_helper():
    # Its code lives in this package, whose own frames are internal elsewhere.
    step = jax.jit(dg.state_dtype_invariant(lambda x: x * 2))
    with dg.explain_recompiles(max_compiles=1, quiet=True) as report:
        step(jnp.ones(2))
        with pytest.raises(dg.RecompileError):
            step(jnp.ones(3))
    assert [f.compiles for f in report.functions] == [2]


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


def _lbfgs_program(jit_init):
    optax = pytest.importorskip("optax")

    def f(x):
        return jnp.sum((x - 1.0) ** 2)

    opt = optax.lbfgs()
    params = jnp.zeros(3)

    @jax.jit
    def step(params, state):
        value, grad = optax.value_and_grad_from_state(f)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(params, updates), state

    def run():
        state = (jax.jit(opt.init) if jit_init else opt.init)(params)
        p = params
        for _ in range(3):
            p, state = step(p, state)

    return run


_LBFGS_LEAVES = {
    "state[2].info.num_linesearch_steps": ("weak int32[]", "int32[]", "optax/_src/numerics.py"),
    "state[2].info.decrease_error": ("weak float32[]", "float32[]", "optax/_src/linesearch.py"),
    "state[2].info.curvature_error": ("weak float32[]", "float32[]", "optax/_src/linesearch.py"),
}


def test_lbfgs_compiles_twice_and_the_report_names_the_three_info_leaves_with_optaxs_lines():
    run = _lbfgs_program(jit_init=False)
    with dg.explain_recompiles(quiet=True) as report:
        run()
    step = _function(report, "step")
    assert step.compiles == 2
    (recompile,) = step.recompiles
    found = {m.path: m for m in recompile.mismatches}
    assert set(found) == set(_LBFGS_LEAVES)
    for path, (expected, got, file) in _LBFGS_LEAVES.items():
        m = found[path]
        assert (m.kind, m.expected, m.got) == ("weak_type", expected, got)
        # Where the step's first compile made the leaf strong: Optax's line.
        assert m.origin is not None and m.origin.file == file and m.origin.line is not None
    assert "_compute_decrease_error" in str(found["state[2].info.decrease_error"].origin)
    text = str(report)
    assert "step (" in text and "2 compiles" in text
    assert "state[2].info.decrease_error: weak float32[] -> float32[]  (first at" in text


def test_lbfgs_with_a_jitted_init_also_names_where_init_built_the_weak_leaves():
    run = _lbfgs_program(jit_init=True)
    with dg.explain_recompiles(quiet=True) as report:
        run()
    (recompile,) = _function(report, "step").recompiles
    earlier = dict(recompile.earlier_origins)
    assert set(earlier) == set(_LBFGS_LEAVES)
    assert all(o.file is not None and o.file.startswith("optax/") for o in earlier.values())
    assert "the earlier values of state[2].info.num_linesearch_steps, " in str(report)
    assert "constants that chain.<locals>.init_fn (optax/" in str(report)


def test_eqx_filter_jit_step_of_an_mlp_in_the_users_argument_names():
    eqx = pytest.importorskip("equinox")
    optax = pytest.importorskip("optax")
    model = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.PRNGKey(0))
    opt = optax.sgd(1e-2)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def train_step(model, opt_state, x, scale):
        grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(model)
        updates, opt_state = opt.update(grads, opt_state)
        updates = jax.tree.map(lambda u: u * scale, updates)
        return eqx.apply_updates(model, updates), opt_state

    x = jnp.ones((3, 2))
    with dg.explain_recompiles(quiet=True) as report:
        model, opt_state = train_step(model, opt_state, x, 1.0)
        model, opt_state = train_step(model, opt_state, x, 1.0)
        model, opt_state = train_step(model, opt_state, x, 0.5)  # a static float changed
        model, opt_state = train_step(model, opt_state, x.astype(jnp.bfloat16), 0.5)
        bias = model.layers[0].bias
        half = eqx.tree_at(lambda m: m.layers[0].bias, model, bias.astype(jnp.bfloat16))
        train_step(half, opt_state, x.astype(jnp.bfloat16), 0.5)
    function = _function(report, "train_step")
    assert function.location is not None and "test_recompiles.py" in function.location
    second, third, fourth = function.recompiles
    assert [(m.path, m.kind, m.expected, m.got) for m in second.mismatches] == [
        ("scale", "static", "1.0", "0.5")
    ]
    assert [(m.path, m.kind) for m in third.mismatches] == [("x", "dtype")]
    assert [(m.path, m.kind) for m in fourth.mismatches] == [("model.layers[0].bias", "dtype")]


def test_nnx_jit_step_with_an_optimizer_in_the_users_argument_names():
    nnx = pytest.importorskip("flax.nnx")
    optax = pytest.importorskip("optax")
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    with dg.explain_recompiles(quiet=True) as report:
        train_step(model, optimizer, jnp.ones((4, 2)))
        train_step(model, optimizer, jnp.ones((4, 2)))
        model.kernel.set_value(model.kernel.get_value().astype(jnp.bfloat16))
        train_step(model, optimizer, jnp.ones((4, 2)))
    function = _function(report, "train_step")
    assert function.compiles == 2
    (recompile,) = function.recompiles
    assert ("model.kernel.value", "dtype") in [(m.path, m.kind) for m in recompile.mismatches]


def test_jitted_functions_retraced_inside_a_recompile_are_one_footnote():
    def make_inner():
        @jax.jit
        def inner(x):
            return x * 2

        return inner

    @jax.jit
    def outer(x):
        return make_inner()(x) + 1  # a closure jitted anew at each trace of outer

    with dg.explain_recompiles(quiet=True) as report:
        outer(jnp.ones(2))
        outer(jnp.ones(3))
    names = [f.name for f in report.functions]
    assert not any(name.endswith("inner") for name in names)  # not compiled on its own
    text = str(report)
    assert "Not shown: 1 jitted function called inside them" in text
    assert "make_inner.<locals>.inner" in text
    assert report.to_dict()["nested_retraced"] == [
        "test_jitted_functions_retraced_inside_a_recompile_are_one_footnote.<locals>.make_inner.<locals>.inner"
    ]


@pytest.mark.skipif(
    not hasattr(getattr(jax.sharding, "AxisType", None), "Explicit")
    or not hasattr(jax.sharding, "reshard")
    or len(jax.devices()) < 8,
    reason="needs explicit sharding (jax.sharding.AxisType.Explicit) and 8 devices",
)
def test_a_step_that_returns_another_sharding_compiles_again_for_kind_sharding():
    P = jax.sharding.PartitionSpec
    explicit = jax.sharding.AxisType.Explicit
    mesh = jax.make_mesh((8,), ("x",), axis_types=(explicit,))
    use = jax.set_mesh if hasattr(jax, "set_mesh") else jax.sharding.use_mesh
    with use(mesh):
        state = jax.device_put(jnp.ones((8, 4)), P("x", None))

        @jax.jit
        def reshards(state):
            return jax.sharding.reshard(state * 2, P(None, None))

        with dg.explain_recompiles(quiet=True) as report:
            reshards(reshards(state))
    (recompile,) = _function(report, "reshards").recompiles
    (mismatch,) = recompile.mismatches
    assert (mismatch.path, mismatch.kind) == ("state", "sharding")
    assert "P('x', None)" in mismatch.expected and "P(None, None)" in mismatch.got


def test_a_trace_inside_a_transformation_is_not_a_compile_and_jaxprs_are_unchanged():
    @jax.jit
    def square(x):
        return x * x

    expected = str(jax.make_jaxpr(square)(jnp.ones(3)))
    with dg.explain_recompiles(quiet=True) as report:
        jaxpr = str(jax.make_jaxpr(square)(jnp.ones(3)))
        jax.eval_shape(square, jnp.ones(5))
    assert jaxpr == expected
    assert report.functions == []


def test_the_origin_is_the_line_where_the_previous_compile_made_the_leaf_strong():
    @jax.jit
    def tick(state):
        count = state["count"] + jnp.ones((), jnp.int32)  # weak + int32: strong int32
        return {"count": count, "total": state["total"] * 2}

    state = {"count": 0, "total": jnp.ones(2)}
    with dg.explain_recompiles(quiet=True) as report:
        for _ in range(3):
            state = tick(state)
    function = _function(report, "tick")
    assert function.compiles == 2
    (recompile,) = function.recompiles
    (mismatch,) = recompile.mismatches
    assert (mismatch.path, mismatch.kind) == ("state['count']", "weak_type")
    assert mismatch.expected == "weak int32[] (Python int)"
    origin = mismatch.origin
    assert origin is not None and origin.file == "tests/test_recompiles.py"
    assert origin.line == _line_of('count = state["count"] + jnp.ones((), jnp.int32)')
    assert origin.function is not None and origin.function.endswith("tick")


def test_make_jaxpr_and_eval_shape_trace_without_compiling():
    @jax.jit
    def cube(x):
        return x**3

    with dg.explain_recompiles(quiet=True) as report:
        jax.make_jaxpr(cube)(jnp.ones(2))
        jax.eval_shape(cube, jnp.ones(3))
        cube(jnp.ones(4))
    assert _function(report, "cube").compiles == 1


def test_an_argument_passed_by_keyword_then_by_position_says_so():
    @jax.jit
    def shift(x, by):
        return x + by

    with dg.explain_recompiles(quiet=True) as report:
        shift(jnp.ones(2), by=jnp.ones(2))
        shift(jnp.ones(2), jnp.ones(2))
    (recompile,) = _function(report, "shift").recompiles
    assert recompile.mismatches == ()
    assert recompile.note is not None and recompile.note.startswith(
        "argument by passed by keyword in one call and by position in the other"
    )


def test_a_compile_without_a_trace_in_the_scope_is_counted_from_jaxs_events():
    @jax.jit
    def triple(x):
        return 3 * x

    lowered = triple.lower(jnp.ones(6))  # traced before the scope
    with dg.explain_recompiles(quiet=True) as report:
        lowered.compile()  # compiled within it, without a trace
    data = report.to_dict()
    assert data["untraced_compiles"]["count"] == 1
    assert data["functions"] == []
    assert "1 compile without a trace by jit in this scope" in str(report)


def test_a_scope_keeps_no_program_it_compiled_alive():
    # JAX frees a dead function's jaxpr, and with it the lowering and executable that its
    # caches keep for that jaxpr; explaining the compiles must not hold them.
    @jax.jit
    def consume(x):
        return x.sum()

    def make(k):
        constant = jnp.arange(64.0 + k)
        return jax.jit(lambda: constant * 2), weakref.ref(constant)

    constants = []
    with dg.explain_recompiles(quiet=True) as report:
        for k in range(3):
            produce, constant = make(k)
            consume(produce())  # a new shape: consume compiles again, fed what produce returned
            constants.append(constant)
            del produce
        gc.collect()
        alive_inside = [c() is not None for c in constants]
    gc.collect()
    alive_after = [c() is not None for c in constants]
    assert {f.name: f.compiles for f in report.functions}[consume.__wrapped__.__qualname__] == 3
    assert alive_inside == [False, False, True]  # the latest compile's sources: its provenance
    assert alive_after == [False, False, False]


def test_a_scope_holds_a_static_argument_only_while_it_can_equal_a_later_one():
    # A function compares by identity: once dead, no later argument can equal it, so the
    # scope need not keep it, nor the arrays it closes over, once JAX's caches let it go.
    def make(k):
        constant = jnp.arange(64.0 + k)
        return (lambda: constant), weakref.ref(constant)

    constants = []
    with dg.explain_recompiles(quiet=True) as report:
        for k in range(3):
            scale, constant = make(k)
            jax.jit(lambda f, x: f() * x, static_argnums=0)(scale, 2.0)
            constants.append(constant)
            del scale
        jax.clear_caches()
        gc.collect()
        alive = [c() is not None for c in constants]
    assert alive == [False, False, False]
    (function,) = report.functions
    assert function.compiles == 3
    (mismatch,) = function.recompiles[-1].mismatches
    assert (mismatch.path, mismatch.kind) == ("f", "static")
    assert mismatch.expected == mismatch.got
    assert mismatch.got.startswith("function test_a_scope_holds")  # by name, not by repr
