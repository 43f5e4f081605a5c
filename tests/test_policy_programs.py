"""Dtype policies on real mixed-precision programs: Optax, Flax NNX, line searches."""

import warnings

import jax
import jax.numpy as jnp
import pytest

import jax_dtypeguard as dg
from jax_dtypeguard import StateDtypeError
from jax_dtypeguard._compat import enable_x64

optax = pytest.importorskip("optax")
from jax_dtypeguard.optax import invariant  # noqa: E402

MOMENTS = {"opt_state.**.mu.**": "float32", "opt_state.**.nu.**": "float32"}


def dtypes(tree):
    return {x.dtype.name for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def regression(key=0):
    """A small least-squares problem: bfloat16 params, float32 data."""
    kx, kw = jax.random.split(jax.random.key(key))
    x = jax.random.normal(kx, (64, 8))
    w_true = jax.random.normal(kw, (8, 1))
    params = {"w": jnp.zeros((8, 1), jnp.bfloat16), "b": jnp.zeros((1,), jnp.bfloat16)}
    return params, x, x @ w_true


def loss_fn(params, x, y):
    prediction = x @ params["w"].astype(jnp.float32) + params["b"].astype(jnp.float32)
    return jnp.mean((prediction - y) ** 2)


def test_the_footgun_plain_adamw_keeps_nu_in_bfloat16_and_turns_mu_float32():
    params, x, y = regression()
    tx = optax.adamw(1e-2)
    state = tx.init(params)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), jax.grad(loss_fn)(params, x, y))
    updates, state = tx.update(grads, state, params)
    assert dtypes(state[0].mu) == {"float32"} and dtypes(state[0].nu) == {"bfloat16"}
    assert dtypes(updates) == {"float32"}


def test_adamw_with_float32_moments_trains_under_jit_compiling_once():
    params, x, y = regression()
    tx = invariant(optax.adamw(1e-2), policy=MOMENTS)
    opt_state = tx.init(params)
    assert dtypes(opt_state[0].mu) == dtypes(opt_state[0].nu) == {"float32"}
    traces = []

    @jax.jit
    def train_step(params, opt_state):
        traces.append(1)  # runs once per trace
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, updates, loss

    losses = []
    for _ in range(300):
        params, opt_state, updates, loss = train_step(params, opt_state)
        losses.append(float(loss))
    assert len(traces) == 1
    assert losses[-1] < 0.05 * losses[0]
    assert dtypes(updates) == dtypes(params) == {"bfloat16"}
    assert dtypes(opt_state[0].mu) == dtypes(opt_state[0].nu) == {"float32"}


def test_a_plain_state_given_to_a_policy_optimizer_names_init():
    params, x, y = regression()
    tx = invariant(optax.adamw(1e-2), policy=MOMENTS)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), jax.grad(loss_fn)(params, x, y))
    with pytest.raises(StateDtypeError) as info:
        jax.jit(tx.update)(grads, optax.adamw(1e-2).init(params), params)
    text = str(info.value)
    assert text.startswith("invariant(adamw) (")
    assert (
        "opt_state[0].nu['w']: float32[8,1] (policy 'opt_state.**.nu.**') -> bfloat16[8,1] on input"
        in text
    )
    assert "policy.cast(opt_state, root='opt_state')" in text
    assert "invariant(adamw).init(params)" in text


def test_check_mode_reports_updates_that_break_their_rule():
    params, x, y = regression()
    tx = invariant(optax.adamw(1e-2), mode="check", policy={**MOMENTS, "updates.**": "float32"})
    opt_state = tx.init(params)
    bf16_grads = jax.grad(loss_fn)(params, x, y)
    with pytest.raises(
        StateDtypeError,
        match=r"updates\['w'\]: float32\[8,1\] \(policy 'updates.\*\*'\) -> bfloat16\[8,1\] on input",
    ):
        tx.update(bf16_grads, opt_state, params)


def test_a_rule_for_nothing_in_update_is_a_value_error():
    params, x, y = regression()
    tx = invariant(
        optax.adam(1e-2), policy={"opt_state.**.nu.**": "float32", "opt_sate.**": "float32"}
    )
    opt_state = tx.init(params)
    grads = jax.grad(loss_fn)(params, x, y)
    with pytest.raises(
        ValueError, match=r"'opt_sate.\*\*' matches no leaf .*\(opt_state, updates, params\)"
    ):
        tx.update(grads, opt_state, params)


def test_inject_hyperparams_keeps_its_hyperparameters_float32():
    params, x, y = regression()
    # Unguarded: inject_hyperparams stores the hyperparameters in the params' dtype.
    plain = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, b2=0.999)
    assert plain.init(params).hyperparams["b2"] == 1.0  # 0.999 rounded to bfloat16
    tx = invariant(
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, b2=0.999),
        policy={"opt_state.hyperparams.**": "float32", **MOMENTS},
    )
    opt_state = tx.init(params)
    assert opt_state.hyperparams["b2"].dtype == jnp.float32
    assert opt_state.hyperparams["b2"] == jnp.float32(0.999)
    traces = []

    @jax.jit
    def train_step(params, opt_state):
        traces.append(1)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(
            jax.tree.map(lambda g: g.astype(jnp.float32), grads), opt_state, params
        )
        return optax.apply_updates(params, updates), opt_state, loss

    first = None
    for _ in range(200):
        params, opt_state, loss = train_step(params, opt_state)
        first = first if first is not None else float(loss)
    assert len(traces) == 1 and float(loss) < 0.1 * first
    assert dtypes(opt_state.hyperparams) == {"float32"}
    assert opt_state.hyperparams["b2"] == jnp.float32(0.999)
    assert dtypes(params) == {"bfloat16"}


def test_nnx_optimizer_with_a_policy_transformation():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(8, 1, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    optimizer = nnx.Optimizer(model, invariant(optax.adamw(1e-2), policy=MOMENTS), wrt=nnx.Param)
    assert dtypes(nnx.state(optimizer)["opt_state"]) == {"float32"}
    _, x, y = regression()
    policy = dg.Policy(
        {
            "model.**": "bfloat16",
            "optimizer.opt_state.**.mu.**": "float32",
            "optimizer.opt_state.**.nu.**": "float32",
        }
    )
    traces = []

    @nnx.jit
    @dg.state_dtype_invariant(state=("model", "optimizer"), inplace=True, policy=policy)
    def train_step(model, optimizer, x, y):
        traces.append(1)
        loss, grads = nnx.value_and_grad(
            lambda m: jnp.mean((m(x.astype(jnp.bfloat16)).astype(jnp.float32) - y) ** 2)
        )(model)
        optimizer.update(model, jax.tree.map(lambda g: g.astype(jnp.float32), grads))
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(200)]
    assert len(traces) == 1 and losses[-1] < 0.1 * losses[0]
    assert dtypes(nnx.state(model)) == {"bfloat16"}
    assert dtypes(nnx.state(optimizer)["opt_state"]) == {"float32"}


def quadratic(params):
    return jnp.sum((params.astype(jnp.float64) - 2.0) ** 2)


def lbfgs_run(tx, steps=5):
    params = jnp.ones(3, jnp.float16)
    opt_state = tx.init(params)
    for _ in range(steps):
        value, grad = jax.value_and_grad(quadratic)(params)
        grad = grad.astype(jnp.float64)  # float64 grads, as a float64 loss gives them
        updates, opt_state = tx.update(
            grad, opt_state, params, value=value, grad=grad, value_fn=quadratic
        )
        params = optax.apply_updates(params, updates)
    return params, opt_state


def test_lbfgs_float16_params_fed_float64_grads_today_warns():
    with enable_x64(True), pytest.warns(Warning, match="scatter inputs have incompatible types"):
        lbfgs_run(invariant(optax.lbfgs()), steps=1)


def test_lbfgs_with_an_updates_rule_casts_grads_on_entry():
    with enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("error")  # no float64 value reaches the float16 memory
        params, opt_state = lbfgs_run(invariant(optax.lbfgs(), policy={"updates.**": "float16"}))
        assert float(quadratic(params)) < 1e-3
    assert params.dtype == jnp.float16
    assert dtypes(opt_state[0].diff_params_memory) == {"float16"}
