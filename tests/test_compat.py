"""Fails loudly if JAX moves a private API that jax_dtypeguard relies on."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dtypeguard import _compat


def test_private_weak_cast_is_where_we_expect_it():
    from jax._src.lax import lax as lax_internal

    assert callable(lax_internal._convert_element_type), "JAX moved _convert_element_type"


@pytest.mark.parametrize("weak_type", [True, False])
def test_convert_element_type_sets_dtype_and_weak_type(weak_type):
    def cast(x):
        return _compat.convert_element_type(x, np.dtype("float16"), weak_type)

    out = jax.eval_shape(cast, jnp.ones(3, jnp.float32))
    assert out.dtype == jnp.float16
    assert out.weak_type is weak_type
    jaxpr = jax.make_jaxpr(cast)(jnp.ones(3, jnp.float32))
    assert [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns] == ["convert_element_type"]


def test_convert_element_type_restores_weak_type_of_same_dtype():
    out = jax.eval_shape(lambda x: _compat.convert_element_type(x, x.dtype, True), jnp.ones(2))
    assert out.weak_type


def test_get_aval_types_python_scalars_as_weak():
    assert _compat.get_aval(1.0).weak_type
    assert not _compat.get_aval(np.float32(1.0)).weak_type


def test_enable_x64_restores_the_callers_setting():
    before = _compat.x64_enabled()
    with _compat.enable_x64(not before):
        assert _compat.x64_enabled() is (not before)
        with _compat.enable_x64(before):
            assert _compat.x64_enabled() is before
        assert _compat.x64_enabled() is (not before)
    assert _compat.x64_enabled() is before


def test_explicit_sharding_is_none_without_explicit_axes():
    assert _compat.explicit_sharding(_compat.get_aval(jnp.ones((2, 2)))) is None


def test_flatten_up_to_compares_node_data():
    assert _compat._FLATTEN_UP_TO_IS_EXACT, "JAX's flatten_up_to no longer compares node data"


@pytest.mark.parametrize(
    ("tree", "other"),
    [
        ({"a": 1.0}, {"b": 1.0}),
        ((1.0, 2.0), [1.0, 2.0]),
        ({"a": None}, {"a": 1.0}),
        (jax.tree_util.Partial(jnp.sin, 1.0), jax.tree_util.Partial(jnp.cos, 1.0)),
    ],
    ids=["dict keys", "node type", "None", "node data"],
)
def test_flatten_like_is_none_where_nodes_differ(tree, other):
    assert _compat.flatten_like(jax.tree_util.tree_structure(tree), other) is None


def test_flatten_like_gives_the_values_at_leaf_positions():
    treedef = jax.tree_util.tree_structure({"a": 0.0, "b": (0.0, 0.0)})
    x = jnp.ones(2)
    assert _compat.flatten_like(treedef, {"a": x, "b": (1, (x, x))}) == [x, 1, (x, x)]


# --- jaxpr access for provenance: each fails loudly if JAX renames what it reads -------------


def eqn_of(fn, *args, primitive):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    [eqn] = [e for e in jaxpr.eqns if e.primitive.name == primitive]
    return eqn


def test_is_literal_tells_literals_from_variables():
    eqn = eqn_of(lambda x: x + 1.0, jnp.ones(3), primitive="add")
    assert [_compat.is_literal(atom) for atom in eqn.invars] == [False, True]


def test_open_jaxpr_of_closed_and_open_jaxprs():
    closed = jax.make_jaxpr(lambda x: x * 2)(1.0)
    assert _compat.open_jaxpr(closed) is closed.jaxpr
    assert _compat.open_jaxpr(closed.jaxpr) is closed.jaxpr
    assert _compat.open_jaxpr(3) is None


def test_call_jaxpr_params_name_jit_and_custom_jvp_bodies():
    inner = jax.jit(lambda x: x * 2)
    eqn = jax.make_jaxpr(lambda x: inner(x))(1.0).jaxpr.eqns[0]
    assert any(name in eqn.params for name in _compat.CALL_JAXPR_PARAMS), eqn.params

    @jax.custom_jvp
    def f(x):
        return x * 2

    f.defjvp(lambda p, t: (f(*p), t[0]))
    eqn = jax.make_jaxpr(f)(1.0).jaxpr.eqns[0]
    assert any(name in eqn.params for name in _compat.CALL_JAXPR_PARAMS), eqn.params


def test_cond_branches():
    eqn = eqn_of(
        lambda p, x: jax.lax.cond(p, lambda y: y + 1, lambda y: y * 2, x),
        True,
        1.0,
        primitive="cond",
    )
    false, true = _compat.cond_branches(eqn)  # index 0 is the false branch
    assert [e.primitive.name for e in false.eqns] == ["mul"]
    assert [e.primitive.name for e in true.eqns] == ["add"]


def test_while_loop_layout():
    limit, step = jnp.float32(10), jnp.float32(2)
    eqn = eqn_of(
        lambda x, i: jax.lax.while_loop(
            lambda c: c[0] < limit, lambda c: (c[0] * step, c[1] + 1), (x, i)
        ),
        jnp.float32(1),
        jnp.int32(0),
        primitive="while",
    )
    layout = _compat.loop_layout(eqn)
    assert (layout.skip, layout.consts, layout.carries) == (1, 1, 2)
    assert len(layout.body.invars) == len(eqn.invars) - layout.skip
    assert [e.primitive.name for e in layout.body.eqns] == ["mul", "add"]


def test_scan_layout():
    scale = jnp.float32(3)
    eqn = eqn_of(
        lambda c, xs: jax.lax.scan(lambda c, x: (c * scale + x, c), c, xs),
        jnp.float32(0),
        jnp.ones(4),
        primitive="scan",
    )
    layout = _compat.loop_layout(eqn)
    assert (layout.skip, layout.consts, layout.carries) == (0, 1, 1)
    assert len(layout.body.invars) == 3  # the constant, the carry, the slice


def test_jaxtyping_shape_memo_accessor():
    jaxtyping = pytest.importorskip("jaxtyping")
    from jaxtyping import Array, Float

    assert _compat.get_shape_memo is not None, "jaxtyping moved _storage.get_shape_memo"
    with jaxtyping.jaxtyped("context"):
        assert isinstance(jnp.zeros((2, 3)), Float[Array, "a b"])
        single = _compat.get_shape_memo()[0]
    assert single == {"a": 2, "b": 3}


def test_every_jit_trace_goes_through_the_point_the_recompile_explainer_observes():
    from jax._src import pjit

    module, name, original = _compat._jit_trace_point()
    assert module is pjit and callable(original), "JAX moved the function jit traces through"
    seen = []

    def observe(trace, run):
        seen.append(trace)
        result = run()
        seen.append(_compat.traced_jaxpr(result))
        return result

    def scale(x, n, *, bias):
        return x * n + bias

    jitted = jax.jit(scale, static_argnums=1)
    installed = getattr(module, name)  # explain_recompiles' observer, if an earlier test set it
    _compat.observe_jit_traces(observe)
    try:
        jitted(jnp.ones(2), 3, bias=1.0)
        jitted(jnp.ones(2), 3, bias=2.0)  # jit's cache: not traced
        jitted(np.ones(2, np.float32), 3, bias=2.0)  # a new dispatch entry, no trace
    finally:
        setattr(module, name, installed)
    trace, jaxpr = seen[0], seen[-1]  # between them: the traces of jnp's jitted functions
    assert [t.fun for t in seen if isinstance(t, _compat.JitTrace) and t.fun is scale] == [scale]
    assert trace.fun is scale
    assert trace.args[1] == 3 and set(trace.kwargs) == {"bias"}
    assert trace.static_argnums == (1,)
    assert trace.signature is not None and list(trace.signature.parameters) == ["x", "n", "bias"]
    assert not trace.primitive
    assert jaxpr.jaxpr.invars[0].aval.shape == (2,)


def test_eager_operations_are_jits_of_one_primitive():
    from jax._src import pjit

    module, name, _ = _compat._jit_trace_point()
    installed = getattr(module, name)  # explain_recompiles' observer, if an earlier test set it
    seen = []
    _compat.observe_jit_traces(lambda trace, run: (seen.append(trace), run())[1])
    try:
        jnp.ones(17) * 2.5  # eager: each primitive jitted on its own
    finally:
        setattr(module, name, installed)
    assert module is pjit
    assert any(trace.primitive for trace in seen)


def test_compile_events_are_named_as_jax_records_them():
    events = _compat.compile_events()
    assert set(events.values()) == {"trace", "lower", "compile"}, "JAX renamed its events"
    recorded, listening = [], [True]
    _compat.listen_to_durations(lambda event, seconds, **kw: listening and recorded.append(event))
    jax.jit(lambda x: x - 7)(jnp.ones(19))
    listening.clear()
    assert {events[e] for e in recorded if e in events} >= {"lower", "compile"}


def test_equinox_loop_internals_are_where_guard_loops_patches_them():
    """`guard_loops` wraps the `common_rewrite` that Equinox's internal while loop calls in
    each of its loop modules: if Equinox moves or reshapes it, this fails, not a user's loop."""
    eqxi = pytest.importorskip("equinox.internal")
    assert _compat.equinox_loop_imported(), "equinox.internal no longer imports its _loop"
    original = _compat.equinox_common_rewrite()
    assert callable(original), "Equinox moved equinox.internal._loop.common.common_rewrite"
    parameters = list(inspect.signature(original).parameters)
    assert parameters[:3] == ["cond_fun", "body_fun", "init_val"], parameters
    rewrites = _compat.equinox_loop_rewrites()
    assert set(rewrites) == {"loop", "bounded", "checkpointed"}, "Equinox's loop modules moved"
    assert all(rewrite is original for rewrite in rewrites.values())

    # It returns (cond_fun, body_fun, init_val, ...) for JAX: the body at index 1.
    rewritten = original(lambda x: x < 3, lambda x: x + 1, jnp.int32(0), None, None, False)
    cond_fun, body_fun, init_val = rewritten[:3]
    assert jax.lax.while_loop(cond_fun, body_fun, init_val)[-1] == 3

    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    _compat.set_equinox_loop_rewrite("bounded", wrapper)
    try:
        assert _compat.equinox_loop_rewrites()["bounded"] is wrapper
        out = eqxi.while_loop(lambda x: x < 3, lambda x: x + 1, 0, max_steps=5, kind="bounded")
        assert out == 3 and calls, "Equinox's bounded loop no longer calls common_rewrite"
    finally:
        _compat.set_equinox_loop_rewrite("bounded", original)
    assert _compat.equinox_loop_rewrites()["bounded"] is original
