"""Flax NNX: training steps that update the model and the optimizer in place."""

# ruff: noqa: F821  (jaxtyping's dimension names are strings, not forward references)

import jax
import jax.numpy as jnp
import pytest

from jax_dtypeguard import StateDtypeError, state_dtype_invariant

nnx = pytest.importorskip("flax.nnx")
optax = pytest.importorskip("optax")
from jax_dtypeguard.optax import invariant  # noqa: E402


class MLP(nnx.Module):
    def __init__(self, dtype, rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.out = nnx.Linear(8, 1, rngs=rngs, param_dtype=dtype, dtype=dtype)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def loss_fn(model, x, y):
    return jnp.mean((model(x).astype(jnp.float32) - y) ** 2)


def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)  # float32 grads
    optimizer.update(model, grads)
    return loss


def make(dtype=jnp.bfloat16, tx=None):
    model = MLP(dtype, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx or optax.adamw(1e-3), wrt=nnx.Param)
    batch = jnp.ones((16, 4), dtype), jnp.ones((16, 1))
    return model, optimizer, batch


def dtypes_of(node):
    leaves = jax.tree.leaves(nnx.state(node))
    return {x.dtype.name for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)}


def test_unguarded_step_silently_promotes_the_optimizer_state():
    model, optimizer, batch = make()
    nnx.jit(train_step)(model, optimizer, *batch)
    assert dtypes_of(optimizer) == {"bfloat16", "float32"}


def test_check_mode_names_the_moments_and_the_line():
    model, optimizer, batch = make()
    guarded = state_dtype_invariant(train_step, state=("model", "optimizer"), inplace=True)
    with pytest.raises(StateDtypeError) as info:
        nnx.jit(guarded)(model, optimizer, *batch)
    paths = {m.path for m in info.value.mismatches}
    assert "optimizer.opt_state[0].mu['hidden']['kernel'].value" in paths
    assert all(m.path.startswith("optimizer.opt_state[0].mu") for m in info.value.mismatches)
    origin = info.value.mismatches[0].origin
    assert origin is not None and origin.file is not None and "optax" in origin.file
    assert "its states 'model', 'optimizer'" in str(info.value)


def test_cast_mode_keeps_bfloat16_and_compiles_once():
    model, optimizer, batch = make()
    traces = []

    def counted(model, optimizer, x, y):
        traces.append(1)
        return train_step(model, optimizer, x, y)

    guarded = state_dtype_invariant(
        counted, state=("model", "optimizer"), inplace=True, mode="cast"
    )
    step = nnx.jit(guarded)
    losses = [float(step(model, optimizer, *batch)) for _ in range(4)]
    assert len(traces) == 1
    assert losses[-1] < losses[0]
    assert dtypes_of(optimizer) == dtypes_of(model) == {"bfloat16"}


def test_cast_mode_eagerly_writes_the_cast_values_back():
    model, optimizer, batch = make()
    guarded = state_dtype_invariant(
        train_step, state=("model", "optimizer"), inplace=True, mode="cast"
    )
    guarded(model, optimizer, *batch)
    assert dtypes_of(optimizer) == {"bfloat16"}


def test_check_mode_jaxpr_is_the_undecorated_steps():
    model, optimizer, batch = make(jnp.float32)
    guarded = state_dtype_invariant(train_step, state=("model", "optimizer"), inplace=True)

    def functional(step):
        graphdef, state = nnx.split((model, optimizer))

        def run(state, x, y):
            m, o = nnx.merge(graphdef, state)
            loss = step(m, o, x, y)
            return loss, nnx.state((m, o))

        return str(jax.make_jaxpr(run)(state, *batch))

    assert functional(guarded) == functional(train_step)


def test_a_module_that_is_no_pytree_is_guarded_through_its_nnx_state():
    # Before Flax 0.11 no module was a pytree; `pytree=False` still builds one.
    try:

        class Scale(nnx.Module, pytree=False):
            def __init__(self):
                self.w = nnx.Param(jnp.ones(3, jnp.bfloat16))

    except TypeError:
        pytest.skip("this Flax has no pytree=False modules")
    assert jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(Scale()))

    def step(model, grad):
        model.w.set_value(model.w.get_value() + grad)

    grad = jnp.ones(3, jnp.float32)
    with pytest.raises(
        StateDtypeError, match=r"model\['w'\]\.value: bfloat16\[3\] -> float32\[3\]"
    ):
        state_dtype_invariant(step, inplace=True)(Scale(), grad)
    cast_step = state_dtype_invariant(step, inplace=True, mode="cast")
    eager, jitted = Scale(), Scale()
    cast_step(eager, grad)
    nnx.jit(cast_step)(jitted, grad)
    assert eager.w.get_value().dtype == jitted.w.get_value().dtype == jnp.bfloat16
    assert float(eager.w.get_value()[0]) == 2.0


def test_invariant_as_the_nnx_optimizers_transformation():
    model, optimizer, batch = make(tx=invariant(optax.adamw(1e-3)))
    step = nnx.jit(train_step)
    for _ in range(3):
        step(model, optimizer, *batch)
    assert dtypes_of(optimizer) == dtypes_of(model) == {"bfloat16"}


def learning_rates(optimizer):
    entries = jax.tree_util.tree_flatten_with_path(nnx.state(optimizer))[0]
    return [x for path, x in entries if "learning_rate" in jax.tree_util.keystr(path)]


def test_invariant_keeps_an_injected_hyperparameters_type():
    tx = invariant(optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3))
    model, optimizer, batch = make(jnp.float32, tx=tx)
    (before,) = learning_rates(optimizer)
    nnx.jit(train_step)(model, optimizer, *batch)
    (after,) = learning_rates(optimizer)
    assert (after.dtype, after.weak_type) == (before.dtype, before.weak_type)


def test_a_model_passed_without_inplace_says_how_to_guard_it():
    model, optimizer, batch = make()
    with pytest.raises(TypeError, match=r"inplace=True"):
        state_dtype_invariant(train_step)(model, optimizer, *batch)


def test_in_place_dict_state():
    @state_dtype_invariant(inplace=True, mode="cast")
    def step(state, lr):
        state["w"] = state["w"] - lr * state["w"]
        return None

    state = {"w": jnp.ones(2, jnp.float16)}
    step(state, jnp.float32(0.1))
    assert state["w"].dtype == jnp.float16
    with pytest.raises(StateDtypeError, match=r"state\['w'\]: float16\[2\] -> float32\[2\]"):
        state_dtype_invariant(step.__wrapped__, inplace=True)(state, jnp.float32(0.1))


def test_cast_mode_inside_nnx_fori_loop_and_scan():
    model, optimizer, (x, y) = make()
    guarded = state_dtype_invariant(
        train_step, state=("model", "optimizer"), inplace=True, mode="cast"
    )

    @nnx.jit
    def epochs(model, optimizer):
        def body(i, carry):
            guarded(*carry, x, y)
            return carry

        return nnx.fori_loop(0, 3, body, (model, optimizer))

    epochs(model, optimizer)
    assert dtypes_of(optimizer) == {"bfloat16"}

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def scan_step(carry, batch):
        return carry, guarded(*carry, batch, y[:4])

    _, losses = scan_step((model, optimizer), x.reshape(4, 4, 4))
    assert losses.shape == (4,) and dtypes_of(optimizer) == {"bfloat16"}


def test_an_nnx_modules_annotated_fields_are_checked():
    from jaxtyping import Array, Float

    class Scaled(nnx.Module):
        weight: nnx.Param[Float[Array, "n"]]
        offset: Float[Array, "n"]

        def __init__(self, n, m):
            self.weight = nnx.Param(jnp.ones(n))
            self.offset = jnp.ones(m)

    @state_dtype_invariant(inplace=True)
    def step(model: Scaled, x: Float[Array, "n"]):
        model.weight[...] = model.weight[...] * x
        return None

    step(Scaled(3, 3), jnp.ones(3))
    with pytest.raises(StateDtypeError) as info:
        step(Scaled(3, 4), jnp.ones(3))
    (mismatch,) = info.value.mismatches
    assert (mismatch.path, mismatch.kind) == ("model.offset", "annotation")
    assert "n=3" in mismatch.got
