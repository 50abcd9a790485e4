"""equinox: a model with non-array leaves, filtered parameters, filter_jit without retracing."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import pytest

from cadence import optimizers as O

eqx = pytest.importorskip("equinox")


class Model(eqx.Module):
    layers: list
    activation: Callable = eqx.field(static=True)
    scale: float  # a Python float: not an array, not trained
    calls: jax.Array  # an integer array: not trained either

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.layers = [eqx.nn.Linear(4, 8, key=k1), eqx.nn.Linear(8, 1, key=k2)]
        self.activation = jax.nn.relu
        self.scale = 2.0
        self.calls = jnp.array(0)

    def __call__(self, x):
        return self.layers[1](self.activation(self.layers[0](x))) * self.scale


X = jnp.linspace(-1, 1, 64).reshape(16, 4)
Y = jnp.sum(X, axis=1, keepdims=True)


def _opt(lr):
    return O.adamw(lr, groups={"**/bias": {"weight_decay": 0.0}})


def test_integer_leaves_point_at_is_inexact_array():
    model = Model(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="eqx.is_inexact_array"):
        _opt(1e-2).init(eqx.filter(model, eqx.is_array))


def test_filter_jit_step_with_hyperparameters_as_arrays_does_not_retrace():
    model = Model(jax.random.PRNGKey(0))
    state = _opt(1e-2).init(eqx.filter(model, eqx.is_inexact_array))
    traces = []

    @eqx.filter_jit
    def step(model, state, opt):
        traces.append(1)

        def loss(m):
            return jnp.mean((jax.vmap(m)(X) - Y) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, state = opt.update(grads, state, params)
        return eqx.apply_updates(model, updates), state, value

    losses = []
    for lr in [1e-2, 5e-3, 2e-3, 1e-3]:
        # Arrays are traced by filter_jit; floats would be static (a trace per value).
        opt = jax.tree.map(jnp.asarray, _opt(lr))
        model, state, loss = step(model, state, opt)
        losses.append(float(loss))
    assert len(traces) == 1
    assert losses[-1] < losses[0]
    assert model.scale == 2.0 and int(model.calls) == 0
    assert float(O.hyperparams(state)["lr"]["default"]) == pytest.approx(1e-3)


def test_partition_and_combine_an_optimizer():
    opt = O.chain(O.clip_by_global_norm(1.0), _opt(1e-2))
    dynamic, static = eqx.partition(opt, eqx.is_array)
    assert eqx.combine(dynamic, static) == opt
    arrays = jax.tree.map(jnp.asarray, opt)
    dynamic, static = eqx.partition(arrays, eqx.is_array)
    assert len(jax.tree.leaves(dynamic)) == len(jax.tree.leaves(opt))
