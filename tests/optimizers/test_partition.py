"""`partition`: each leaf to one transformation; each state covers only its own leaves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cadence import checkpoint
from cadence import optimizers as O

RULES = O.rules(("adamw", "embed/**"), ("adamw", "head/**"), ("sgd", "**", 2), ("adamw",))


def params():
    rng = np.random.default_rng(0)
    shapes = {"embed": {"w": (6, 3)}, "h0": {"w": (3, 3), "b": (3,)}, "head": {"w": (3, 2)}}
    return {
        k: {n: jnp.asarray(rng.standard_normal(s), jnp.float32) for n, s in d.items()}
        for k, d in shapes.items()
    }


def grads(k):
    rng = np.random.default_rng(10 + k)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params())


def opt():
    return O.partition(
        {
            "sgd": O.sgd(0.1, momentum=0.9),
            "adamw": O.adamw(1e-2, weight_decay=0.1, groups={"h0/b": {"weight_decay": 0.0}}),
        },
        RULES,
    )


def test_each_state_covers_only_its_leaves():
    state = opt().init(params())
    assert sorted(state.inner["sgd"].momentum_buffer) == ["h0/w"]
    assert sorted(state.inner["adamw"].mu) == ["embed/w", "h0/b", "head/w"]


def test_updates_are_each_transformation_on_its_own_leaves():
    tx, p = opt(), params()
    state = tx.init(p)
    sgd, adamw = O.sgd(0.1, momentum=0.9), O.adamw(1e-2, weight_decay=0.1)
    bias = O.adamw(1e-2, weight_decay=0.0)
    alone = {"sgd": sgd.init(p["h0"]["w"]), "adamw": adamw.init(p), "bias": bias.init(p)}
    for k in range(3):
        g = grads(k)
        updates, state = jax.jit(tx.update)(g, state, p)
        # (All jitted: XLA rounds a compiled program the same way.)
        u_sgd, alone["sgd"] = jax.jit(sgd.update)(g["h0"]["w"], alone["sgd"], p["h0"]["w"])
        u_adamw, alone["adamw"] = jax.jit(adamw.update)(g, alone["adamw"], p)
        u_bias, alone["bias"] = jax.jit(bias.update)(g, alone["bias"], p)
        np.testing.assert_array_equal(updates["h0"]["w"], u_sgd)
        np.testing.assert_array_equal(updates["embed"]["w"], u_adamw["embed"]["w"])
        np.testing.assert_array_equal(updates["head"]["w"], u_adamw["head"]["w"])
        # The group pattern matched the same path as on the whole tree.
        np.testing.assert_array_equal(updates["h0"]["b"], u_bias["h0"]["b"])
        p = optax.apply_updates(p, updates)


def test_step_equals_update_then_apply():
    tx, p = opt(), params()
    s1 = s2 = tx.init(p)
    p1 = p2 = p

    @jax.jit
    def by_update(g, state, params):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for k in range(3):
        p1, s1 = jax.jit(tx.step)(grads(k), s1, p1)
        p2, s2 = by_update(grads(k), s2, p2)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_leaf_without_a_label_is_named():
    tx = O.partition({"sgd": O.sgd(0.1)}, O.rules(("sgd", "**", 2)))
    with pytest.raises(ValueError, match=r"no label for the parameter at 'h0/b'"):
        tx.init(params())


def test_a_label_without_a_transformation_is_named():
    tx = O.partition({"sgd": O.sgd(0.1)}, lambda path, leaf: "muon" if leaf.ndim == 2 else "sgd")
    with pytest.raises(ValueError, match=r"'embed/w' is labelled 'muon', which names no"):
        tx.init(params())


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: O.partition({}, RULES), TypeError),
        (lambda: O.partition({"a": O.sgd(0.1)}, "not a function"), TypeError),
        (lambda: O.partition({1: O.sgd(0.1)}, RULES), TypeError),
        (lambda: O.rules("adamw"), TypeError),
        (lambda: O.rules(("adamw", "**", "two")), TypeError),
        (lambda: O.rules(("", "**")), TypeError),
    ],
)
def test_bad_arguments_are_refused(make, error):
    with pytest.raises(error):
        make()


def test_config_round_trip_with_rules():
    tx = opt()
    config = tx.to_config()
    assert config["rules"][2] == ["sgd", "**", [2]]
    assert O.from_config(config) == tx
    fn = O.partition({"sgd": O.sgd(0.1)}, lambda path, leaf: "sgd")
    with pytest.raises(ValueError, match="label_fn is a Python function"):
        fn.to_config()
    with pytest.raises(ValueError, match="rules"):
        O.from_config({"type": "partition", "transforms": {"a": {"type": "sgd", "lr": 0.1}}})


def test_state_follows_the_parameters_shardings():
    mesh = jax.make_mesh((1,), ("model",))
    sharded = NamedSharding(mesh, P("model"))
    p = jax.tree.map(lambda x: jax.device_put(x, sharded), params())
    shardings = O.state_shardings(opt(), p)
    assert shardings.inner["sgd"].momentum_buffer["h0/w"] == sharded
    assert shardings.inner["adamw"].nu["embed/w"] == sharded
    assert shardings.inner["adamw"].count == NamedSharding(mesh, P())


def test_checkpoint_resume_is_bit_identical(tmp_path):
    tx, p = opt(), params()
    state = tx.init(p)
    step = jax.jit(tx.step)
    for k in range(2):
        p, state = step(grads(k), state, p)
    checkpoint.save(tmp_path, 2, p, state, optimizer=tx)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == tx
    rp, rs = restored.params, restored.opt_state
    for k in range(2, 4):
        p, state = step(grads(k), state, p)
        rp, rs = step(grads(k), rs, rp)
    for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves((rp, rs)), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
