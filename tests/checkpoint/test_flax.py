"""flax NNX states (trees of nnx.Variable) save and restore, with and without `*_like`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S

nnx = pytest.importorskip("flax.nnx")

TX = O.adamw(S.warmup(S.cosine(1e-2, 20), 2), weight_decay=0.1)
X = jnp.linspace(-1.0, 1.0, 15).reshape(5, 3)
Y = jnp.stack([X.sum(1), X[:, 0] - X[:, 2]], axis=1)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 4, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


@nnx.jit
def train_step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
    optimizer.update(model, grads)


def fresh(seed: int):
    model = MLP(nnx.Rngs(seed))
    return model, nnx.Optimizer(model, TX, wrt=nnx.Param)


def assert_same_bytes(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_nnx_model_and_optimizer_state_resume_bit_identically(tmp_path):
    model, optimizer = fresh(0)
    for _ in range(3):
        train_step(model, optimizer)
    params = nnx.state(model, nnx.Param)
    checkpoint.save(tmp_path, 3, params, optimizer.opt_state, optimizer=TX)

    # The checkpoint alone: plain dicts of arrays and cadence's own state.
    alone = checkpoint.restore(tmp_path)
    assert alone.step == 3 and alone.optimizer == TX
    assert isinstance(alone.params, dict)
    assert_same_bytes(alone.params, nnx.to_pure_dict(params))
    assert_same_bytes(alone.opt_state, nnx.as_pure(optimizer.opt_state))
    assert int(alone.opt_state.count) == 3

    # Into a new model's Variables, and into an abstract model's (eval_shape).
    model_b, optimizer_b = fresh(1)
    into = checkpoint.restore(
        tmp_path,
        params_like=nnx.state(model_b, nnx.Param),
        opt_state_like=optimizer_b.opt_state,
    )
    assert isinstance(into.params, nnx.State)
    assert all(
        isinstance(v, nnx.Param)
        for v in jax.tree.leaves(into.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    )
    nnx.update(model_b, into.params)
    nnx.update(optimizer_b.opt_state, nnx.state(into.opt_state))
    abstract = nnx.eval_shape(lambda: MLP(nnx.Rngs(2)))
    shaped = checkpoint.restore(tmp_path, params_like=nnx.state(abstract, nnx.Param))
    assert_same_bytes(nnx.as_pure(shaped.params), nnx.to_pure_dict(params))

    # A third run rebuilt from the checkpoint alone.
    model_c, optimizer_c = fresh(3)
    state_c = nnx.state(model_c, nnx.Param)
    nnx.replace_by_pure_dict(state_c, alone.params)
    nnx.update(model_c, state_c)
    nnx.update(optimizer_c.opt_state, nnx.state(alone.opt_state))

    for _ in range(3):
        for m, o in ((model, optimizer), (model_b, optimizer_b), (model_c, optimizer_c)):
            train_step(m, o)
    for other in (model_b, model_c):
        assert_same_bytes(nnx.state(other, nnx.Param), nnx.state(model, nnx.Param))
