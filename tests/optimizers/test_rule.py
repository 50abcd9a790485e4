"""An optimizer is a rule: what a user-defined one gets from the library.

The optimizer is the README's ("Write your own optimizer"), run from the
README itself, so the documented example is what is tested.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cadence import checkpoint
from cadence import optimizers as O
from cadence.optimizers import _native

from ..test_readme import README
from .test_step import native_calls

_SECTION = README.read_text().split("### Write your own optimizer", 1)[1]
_CODE = re.search(r"```python\n(.*?)```", _SECTION, flags=re.S).group(1)


@pytest.fixture(scope="module")
def signum():
    namespace = {"__name__": "readme_custom_optimizer"}
    exec(
        compile(_CODE, "README.md (Write your own optimizer)", "exec", dont_inherit=True), namespace
    )
    return namespace["signum"]


def tree():
    rng = np.random.default_rng(0)
    return {
        "layer": {
            "w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal(3), jnp.float32),
        }
    }


def test_the_definition_is_at_most_40_lines():
    start = _CODE.index("@O.optimizer_type")
    end = _CODE.index("opt = signum(")
    assert len(_CODE[start:end].strip().splitlines()) <= 40


def test_validation_config_and_registry(signum):
    with pytest.raises(ValueError, match="momentum must be in"):
        signum(momentum=1.5)
    with pytest.raises(TypeError, match="lr"):
        signum(lr="fast")
    opt = signum(0.1, groups={"*/b": {"lr": 0.01}})
    assert O.from_config(opt.to_config()) == opt
    assert O.optimizers()["signum"] is signum
    assert repr(opt).startswith("signum(lr=0.1, momentum=0.9, weight_decay=0.0, state_dtype=None")


def test_arithmetic_groups_and_hyperparams(signum):
    opt = signum(0.1, momentum=0.5, weight_decay=0.5, groups={"*/b": {"weight_decay": 0.0}})
    p = tree()
    g = jax.tree.map(lambda x: jnp.full_like(x, -2.0), p)
    updates, state = opt.update(g, opt.init(p), p)
    # mu = 0.5 * -2 = -1: step +lr; w decays by lr * wd, b (group) does not.
    np.testing.assert_allclose(updates["layer"]["w"], 0.1 - 0.05 * p["layer"]["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["layer"]["b"], jnp.full(3, 0.1))
    hp = O.hyperparams(state)
    assert float(hp["weight_decay"]["*/b"]) == 0.0
    assert float(hp["lr"]["default"]) == pytest.approx(0.1)


def test_step_is_one_generated_pass_per_leaf(signum):
    opt = signum(0.1, weight_decay=0.1)
    p = tree()
    if _native.available():
        assert native_calls(opt, p) == 2

    @jax.jit
    def by_update(g, s, p):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    s1 = s2 = opt.init(p)
    p1 = p2 = p
    for k in range(3):
        g = jax.tree.map(lambda x, k=k: jnp.sin(x * (k + 1)), p)
        p1, s1 = jax.jit(opt.step)(g, s1, p1)
        p2, s2 = by_update(g, s2, p2)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_is_sharded_like_the_parameters(signum):
    mesh = jax.make_mesh((1,), ("model",))
    sharded = NamedSharding(mesh, P("model"))
    p = jax.tree.map(lambda x: jax.device_put(x, sharded), tree())
    shardings = O.state_shardings(signum(0.1), p)
    assert shardings.mu["layer"]["w"] == sharded
    assert shardings.count == NamedSharding(mesh, P())


def test_checkpoint_resume_is_bit_identical(signum, tmp_path):
    opt = signum(0.1, weight_decay=0.1)
    p = tree()
    state = opt.init(p)
    step = jax.jit(opt.step)
    grads = [jax.tree.map(lambda x, k=k: jnp.cos(x + k), p) for k in range(4)]
    for g in grads[:2]:
        p, state = step(g, state, p)
    checkpoint.save(tmp_path, 2, p, state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    rp, rs = restored.params, restored.opt_state
    for g in grads[2:]:
        p, state = step(g, state, p)
        rp, rs = step(g, rs, rp)
    for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves((rp, rs)), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize(
    "make",
    [lambda m: O.sgd(0.1, momentum=m), lambda m: O.rmsprop(0.01, momentum=m)],
    ids=["sgd", "rmsprop"],
)
def test_a_vmapped_sweep_can_include_momentum_zero(make):
    p = jnp.array([1.0, -2.0])
    grads = [jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0]), jnp.array([0.1, 0.3])]

    def train(m):
        opt = make(m)
        state, q = opt.init(p), p
        for g in grads:
            u, state = opt.update(g, state, q)
            q = optax.apply_updates(q, u)
        return q

    swept = jax.vmap(train)(jnp.array([0.0, 0.9]))
    np.testing.assert_allclose(swept[0], train(0.0), rtol=1e-6)
    np.testing.assert_allclose(swept[1], train(0.9), rtol=1e-6)


@O.optimizer_type
class normalized(O.Optimizer):
    """A whole-leaf rule that leaves `elementwise` at its default: the update is mu / |mu|."""

    reference = "a test of the kernel generator"
    per_leaf = ("mu",)
    lr: float = O.hyper(0.1, check="nonneg")

    def kernel(self, p, g, bufs, s, keep):
        mu = keep("mu", bufs["mu"] + g)
        return -s["lr"] * mu / jnp.linalg.norm(mu), {"mu": mu}


def test_a_whole_leaf_rule_gets_no_generated_loop():
    # Traced on a vector, its norm shows as a reduction: the generator
    # refuses it (on a scalar it would have passed for |mu|), and `step` runs
    # XLA's program, with the same numbers as `update`.
    opt, p = normalized(), tree()
    assert native_calls(opt, p) == 0
    g = jax.tree.map(jnp.ones_like, p)
    new, _ = jax.jit(opt.step)(g, opt.init(p), p)
    np.testing.assert_allclose(new["layer"]["b"], p["layer"]["b"] - 0.1 / np.sqrt(3), rtol=1e-6)
