"""Reading hyperparameters the optax way, and O.hyperparams around optax's own combinators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S


def _floats(tree):
    return jax.tree.map(float, tree)


def _run(opt, params, steps=2, **extra):
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(steps):
        _, state = opt.update(grads, state, params, **extra)
    return state


def test_optax_learning_rate_lookups_find_lr():
    opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(S.linear(0.1, 0.0, 10)))
    p = jnp.zeros(2)
    state = jax.jit(lambda s: opt.update(jnp.ones(2), s, p)[1])(opt.init(p))
    adam_state = state.inner[1]
    assert float(adam_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    assert "learning_rate" in adam_state.hyperparams
    assert float(optax.tree_utils.tree_get(state, "learning_rate")) == pytest.approx(0.1)
    assert float(O.hyperparams(state)["learning_rate"]) == pytest.approx(0.1)
    # Stored once: the alias is not a second leaf.
    assert "learning_rate" not in list(adam_state.hyperparams)
    assert len(jax.tree.leaves(adam_state.hyperparams)) == 5


def test_tree_get_count_is_the_optimizer_step_in_a_clipped_chain():
    for clip in (O.clip_by_global_norm(1.0), O.clip_by_value(1.0)):
        opt = O.chain(clip, O.adamw(1e-3))
        state = _run(opt, jnp.zeros(2), steps=3)
        assert int(optax.tree_utils.tree_get(state, "count")) == 3


def test_inject_hyperparams_around_a_cadence_optimizer():
    opt = optax.inject_hyperparams(O.adam)(lr=optax.linear_schedule(0.1, 0.0, 10), b1=0.8)
    state = _run(opt, jnp.zeros(2), steps=3)
    hp = _floats(O.hyperparams(state))
    assert hp["lr"] == pytest.approx(0.08) and hp["b1"] == pytest.approx(0.8)
    assert set(hp) == {"lr", "b1", "b2", "eps", "weight_decay"}


def test_multi_transform_reports_values_by_label():
    params = {"x": jnp.zeros(2), "y": jnp.zeros(2)}
    opt = optax.multi_transform({"a": O.sgd(0.1), "b": O.adam(0.2)}, {"x": "a", "y": "b"})
    hp = _floats(O.hyperparams(_run(opt, params)))
    assert hp["lr"] == pytest.approx({"a": 0.1, "b": 0.2})
    assert hp["b1"] == pytest.approx({"b": 0.9})
    with pytest.raises(ValueError, match="multi_transform"):
        O.hyperparams(opt.init(params), path="x")


def test_partition_reports_values_by_label():
    params = {"h": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    opt = O.partition({"m": O.sgd(0.1), "a": O.adamw(0.2)}, O.rules(("m", "**", 2), ("a",)))
    hp = _floats(O.hyperparams(_run(opt, params)))
    assert hp["lr"] == pytest.approx({"m": 0.1, "a": 0.2})
    assert hp["b2"] == pytest.approx({"a": 0.999})
    with pytest.raises(ValueError, match="by label"):
        O.hyperparams(opt.init(params), path="h")


def test_optax_reduce_on_plateau_after_the_optimizer_scales_lr():
    opt = optax.chain(O.sgd(0.5), optax.contrib.reduce_on_plateau(patience=0, factor=0.1))
    state = opt.init(jnp.zeros(2))
    for loss in [1.0, 2.0, 3.0, 4.0]:
        _, state = opt.update(jnp.ones(2), state, jnp.zeros(2), value=loss)
    scale = float(state[1].scale)
    assert scale < 1.0
    assert float(O.hyperparams(state)["lr"]) == pytest.approx(0.5 * scale)


def test_optax_reduce_on_plateau_before_the_optimizer_is_an_error():
    opt = optax.chain(optax.contrib.reduce_on_plateau(), O.adam(0.5))
    with pytest.raises(ValueError, match="scales the gradients, not the learning rate"):
        O.hyperparams(opt.init(jnp.zeros(2)))


def test_masked_and_multisteps():
    params = {"x": jnp.zeros(2), "y": jnp.zeros(2)}
    opt = optax.MultiSteps(optax.masked(O.adamw(0.3), {"x": True, "y": False}), 2)
    hp = _floats(O.hyperparams(_run(opt, params, steps=2)))
    assert hp["lr"] == pytest.approx(0.3)


def test_path_gives_one_value_per_name_with_or_without_groups():
    params = {"encoder": {"w": jnp.zeros(2), "b": jnp.zeros(2)}, "head": {"w": jnp.zeros(2)}}
    plain = O.adamw(0.1)
    grouped = O.adamw(0.1, groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": 0.01}})
    for opt in (plain, grouped):
        state = jax.jit(lambda s, opt=opt: opt.update(params, s, params)[1])(opt.init(params))
        for path in ("encoder/w", "encoder/b", "head/w"):
            hp = O.hyperparams(state, path=path)
            assert all(v.shape == () for v in hp.values())
    hp = _floats(O.hyperparams(state, path="encoder/b"))
    # First match wins, also after jit (which sorts plain dicts' keys).
    assert hp["weight_decay"] == 0.0 and hp["lr"] == pytest.approx(0.1)
    assert _floats(O.hyperparams(state, path="encoder/w"))["lr"] == pytest.approx(0.01)
    assert _floats(O.hyperparams(state, path="head/w"))["weight_decay"] == pytest.approx(0.01)
