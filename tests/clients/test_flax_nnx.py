"""flax NNX: an MLP on scikit-learn's digits trained with nnx.Optimizer and parameter groups."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S

nnx = pytest.importorskip("flax.nnx")
datasets = pytest.importorskip("sklearn.datasets")


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(64, 16, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


@pytest.fixture(scope="module")
def digits():
    x, y = datasets.load_digits(return_X_y=True)
    return jnp.asarray(x[:128] / 16.0, jnp.float32), jnp.asarray(y[:128])


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def test_mlp_on_digits_trains_with_groups(digits):
    x, y = digits
    model = MLP(nnx.Rngs(0))
    tx = O.adamw(
        jnp.float32(1e-2),  # a concrete array: stored as the float 0.01 (flax wants static data)
        weight_decay=0.1,
        groups={"*/bias": {"weight_decay": 0.0}, "out/**": {"lr": S.cosine(5e-3, 20)}},
    )
    assert tx.lr == 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false "matches no parameter"
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(_loss)(model, x, y)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(12)]
    assert losses[-1] < 0.8 * losses[0]
    hp = O.hyperparams(optimizer.opt_state)
    assert float(hp["weight_decay"]["*/bias"]) == 0.0
    assert float(hp["lr"]["out/**"]) == pytest.approx(float(S.cosine(5e-3, 20)(11)))
    # One value per name for a given parameter, whether or not groups exist.
    out_bias = O.hyperparams(optimizer.opt_state, path="out/bias")
    assert float(out_bias["weight_decay"]) == 0.0 and float(out_bias["lr"]) == pytest.approx(0.01)
    assert float(O.hyperparams(optimizer.opt_state, path="out/kernel")["weight_decay"]) == (
        pytest.approx(0.1)
    )


def test_a_bias_group_means_the_same_parameter_at_init_and_update():
    model = MLP(nnx.Rngs(0))
    model.hidden.bias[...] = jnp.ones(16)
    tx = O.adamw(0.1, weight_decay=0.5, groups={"*/bias": {"weight_decay": 0.0}})
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    kernel = np.asarray(model.hidden.kernel[...])
    zero = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    optimizer.update(model, zero)
    np.testing.assert_array_equal(model.hidden.bias[...], 1.0)  # was 0.95: decayed
    np.testing.assert_allclose(model.hidden.kernel[...], kernel * 0.95, rtol=1e-6)


def test_group_values_reach_init_through_variables():
    model = MLP(nnx.Rngs(0))
    tx = O.adagrad(groups={"*/bias": {"initial_accumulator_value": 5.0}})
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    np.testing.assert_array_equal(optimizer.opt_state.sum["hidden"]["bias"][...], 5.0)
    np.testing.assert_array_equal(optimizer.opt_state.sum["hidden"]["kernel"][...], 0.0)


def test_a_pattern_through_the_variable_warns_at_this_line():
    model = MLP(nnx.Rngs(0))
    tx = O.adamw(groups={"*/bias/value": {"weight_decay": 0.0}})
    with pytest.warns(UserWarning, match="matches no parameter") as record:
        nnx.Optimizer(model, tx, wrt=nnx.Param)
    assert record[0].filename == __file__


def test_learning_rate_the_optax_way(digits):
    x, y = digits
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, O.adamw(S.linear(0.01, 0.0, 10)), wrt=nnx.Param)
    grads = nnx.grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    lr = optax.tree_utils.tree_get(optimizer.opt_state, "learning_rate")
    assert float(lr[...]) == pytest.approx(0.01)
    assert float(O.hyperparams(optimizer.opt_state)["lr"]) == pytest.approx(0.01)
