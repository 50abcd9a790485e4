"""O.hyperparams: the values the last update used, through chains, wrappers and groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S

from .examples import OPTIMIZERS, grads, params


def _floats(tree):
    return jax.tree.map(float, tree)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_one_entry_per_float_hyperparameter_under_its_argument_name(name):
    from cadence.optimizers._base import hyper_fields

    opt = OPTIMIZERS[name]
    hp = O.hyperparams(opt.init(params()))
    assert set(hp) == set(hyper_fields(type(opt)))
    for value in jax.tree.leaves(hp):
        assert value.dtype == jnp.float32 and value.shape == ()


def test_values_of_the_last_update_by_schedule():
    lr = S.linear(1.0, 0.0, 4)
    opt = O.adam(lr, b1=S.constant(0.8))
    p = jnp.zeros(2)
    state = opt.init(p)
    history = []
    for _ in range(5):
        _, state = opt.update(jnp.ones(2), state, p)
        history.append(_floats(O.hyperparams(state)))
    assert [h["lr"] for h in history] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert history[0] == {
        "lr": 1.0,
        "b1": pytest.approx(0.8),
        "b2": pytest.approx(0.999),
        "eps": pytest.approx(1e-8),
        "weight_decay": 0.0,
    }


def test_through_chain_wrappers_and_groups_inside_jit():
    inner = O.adamw(
        S.linear(0.1, 0.0, 10), groups={"*/b": {"weight_decay": 0.0}, "head/**": {"lr": 0.01}}
    )
    opt = O.chain(
        O.clip_by_global_norm(1.0),
        # Inside accumulate, the plateau logic steps once per update, not per micro-batch.
        O.accumulate(O.reduce_on_plateau(O.skip_nonfinite(inner), patience=0, factor=0.5), 2),
    )
    p = params()
    step = jax.jit(lambda s, g, v: opt.update(g, s, p, value=v))
    state = opt.init(p)
    for k, v in enumerate([3.0, 3.0, 2.0, 2.0, 5.0, 5.0, 6.0, 6.0]):
        _, state = step(state, grads(k), v)
    hp = jax.jit(O.hyperparams)(state)
    assert set(hp) == {"max_norm", "lr", "b1", "b2", "eps", "weight_decay"}
    assert set(hp["lr"]) == {"default", "*/b", "head/**"}
    # 4 updates: the schedule gave lr(3) = 0.07; the plateau halved the 4th (worse value 5).
    assert float(hp["lr"]["default"]) == pytest.approx(0.07 * 0.5)
    assert float(hp["lr"]["head/**"]) == pytest.approx(0.01 * 0.5)
    assert float(hp["weight_decay"]["*/b"]) == 0.0
    assert float(hp["weight_decay"]["default"]) == pytest.approx(0.01)
    assert _floats(O.hyperparams(state)) == _floats(hp)


def test_through_optax_chain_multisteps_and_inject_hyperparams():
    p = jnp.zeros(1)
    opt = optax.MultiSteps(optax.chain(O.clip_by_value(0.5), O.sgd(0.1)), 2)
    hp = O.hyperparams(opt.init(p))
    assert _floats(hp) == pytest.approx(
        {"v": 0.5, "lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0}
    )
    injected = optax.inject_hyperparams(optax.sgd)(learning_rate=0.3)
    assert _floats(O.hyperparams(injected.init(p)))["learning_rate"] == pytest.approx(0.3)


def test_a_name_reported_twice_is_an_error():
    opt = O.chain(O.sgd(0.1), O.adam())
    with pytest.raises(ValueError, match="'lr'"):
        O.hyperparams(opt.init(jnp.zeros(1)))


def test_bf16_params_report_float32_values():
    opt = O.adam(1e-3, b2=0.999)
    p = jnp.zeros(3, jnp.bfloat16)
    _, state = opt.update(jnp.ones(3, jnp.bfloat16), opt.init(p), p)
    b2 = O.hyperparams(state)["b2"]
    assert b2.dtype == jnp.float32 and float(b2) == float(np.float32(0.999))
