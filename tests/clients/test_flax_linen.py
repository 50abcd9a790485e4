"""flax linen: a TrainState with a cadence optimizer (chain, groups, schedules)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S

nn = pytest.importorskip("flax.linen")
train_state = pytest.importorskip("flax.training.train_state")


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.relu(nn.Dense(8)(x)))


def _tx():
    schedule = S.warmup(S.cosine(1e-2, 20), 2)
    return O.chain(
        O.clip_by_global_norm(1.0), O.adamw(schedule, groups={"**/bias": {"weight_decay": 0.0}})
    )


def _state(tx):
    model = MLP()
    x = jnp.linspace(-1, 1, 64).reshape(16, 4)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx), x


def test_train_state_steps_without_retracing_for_an_equal_optimizer():
    state, x = _state(_tx())
    y = jnp.sum(x, axis=1, keepdims=True)
    traces = []

    @jax.jit
    def step(state):
        traces.append(1)

        def loss(p):
            return jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), value

    losses = []
    for _ in range(6):
        state, loss = step(state)
        losses.append(float(loss))
    state = state.replace(tx=_tx())  # a new but equal optimizer
    state, _ = step(state)
    assert len(traces) == 1
    assert losses[-1] < losses[0]
    assert int(optax.tree_utils.tree_get(state.opt_state, "count")) == 7
    bias = O.hyperparams(state.opt_state, path="Dense_0/bias")
    assert float(bias["weight_decay"]) == 0.0
    assert float(bias["lr"]) == pytest.approx(float(S.warmup(S.cosine(1e-2, 20), 2)(6)))


def test_reduce_on_plateau_under_apply_gradients_says_what_to_write():
    state, _ = _state(O.reduce_on_plateau(O.sgd(0.1)))
    grads = jax.tree.map(jnp.ones_like, state.params)
    with pytest.raises(ValueError, match="apply_gradients does not pass `value`") as e:
        state.apply_gradients(grads=grads)
    assert "state.tx.update(grads, state.opt_state, state.params, value=loss)" in str(e.value)
    # The two lines it shows work.
    loss = 1.0
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
    state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    assert int(state.step) == 1
