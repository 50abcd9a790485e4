"""`adopt`, `lamb` and `lars` beyond trajectory parity: arguments, params, global norm, resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O

from .examples import OPTIMIZERS, grads, params


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: O.lamb(max_grad_norm=0.0), ValueError, "max_grad_norm must be > 0 or None"),
        (lambda: O.lamb(max_grad_norm=-1.0), ValueError, "max_grad_norm must be >= 0"),
        (lambda: O.lamb(max_grad_norm="1"), TypeError, "max_grad_norm must be a number"),
        (lambda: O.lamb(b2=1.0), ValueError, r"b2 must be in \[0, 1\)"),
        (lambda: O.lamb(trust_clip=1), TypeError, "trust_clip"),
        (lambda: O.adopt(clip_exp=-0.5), ValueError, "clip_exp must be >= 0"),
        (lambda: O.adopt(eps=-1e-6), ValueError, "eps must be >= 0"),
        (lambda: O.adopt(decoupled="yes"), TypeError, "decoupled"),
        (lambda: O.lars(nesterov=True), ValueError, "nesterov needs momentum > 0"),
        (lambda: O.lars(0.1, 0.9, 0.1, nesterov=True), ValueError, "and dampening 0"),
        (lambda: O.lars(trust_coeff=-1e-3), ValueError, "trust_coeff must be >= 0"),
        (lambda: O.lars(lr=-1.0), ValueError, "lr must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_by_name(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize("make", [O.lamb, O.lars], ids=["lamb", "lars"])
def test_always_adapt_needs_params_and_says_so(make):
    g = {"w": jnp.ones(3)}
    plain = make(0.1, weight_decay=0.0)
    plain.update(g, plain.init(g))  # no decay, no trust ratio: no params needed
    adapt = make(0.1, weight_decay=0.0, always_adapt=True)
    with pytest.raises(ValueError, match="params are required when always_adapt is True"):
        adapt.update(g, adapt.init(g))
    with pytest.raises(ValueError, match="params are required when weight_decay is not 0"):
        make(0.1, weight_decay=0.1).update(g, plain.init(g))


def test_lamb_clips_by_the_norm_of_every_group():
    # Leaves in different groups: timm's norm spans all of them (3-4-5).
    opt = O.lamb(0.1, weight_decay=0.0, max_grad_norm=1.0, groups={"b": {"lr": 0.2}})
    unclipped = O.lamb(0.1, weight_decay=0.0, max_grad_norm=None, groups={"b": {"lr": 0.2}})
    p = {"a": jnp.ones(1), "b": jnp.ones(1)}
    g = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    state, ref_state = opt.init(p), unclipped.init(p)
    for _ in range(2):
        u, state = opt.update(g, state, p)
        ref, ref_state = unclipped.update(jax.tree.map(lambda x: x / 5.0, g), ref_state, p)
        for a, b in zip(
            jax.tree.leaves((u, state)), jax.tree.leaves((ref, ref_state)), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_lamb_adapts_only_leaves_with_weight_decay_unless_always_adapt():
    p = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([3.0, 4.0])}
    g = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([1.0, 0.0])}
    groups = {"b": {"weight_decay": 0.0}}
    opt = O.lamb(0.1, weight_decay=1e-9, max_grad_norm=None, groups=groups)
    u, _ = opt.update(g, opt.init(p), p)
    # w: the Adam step (1, 0) scaled to |w| = 5; b: the Adam step itself.
    np.testing.assert_allclose(u["w"], [-0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(u["b"], [-0.1, 0.0], atol=1e-6)
    always = O.lamb(0.1, weight_decay=1e-9, max_grad_norm=None, always_adapt=True, groups=groups)
    u, _ = always.update(g, always.init(p), p)
    np.testing.assert_allclose(u["b"], [-0.5, 0.0], atol=1e-6)


def test_a_clipping_chain_hands_lamb_the_clipped_gradients():
    # clip_by_global_norm before lamb in a chain: `step` defers the
    # coefficient to lamb's kernels, and lamb's own global norm must see
    # the clipped gradients, as `update` does (eps 1 keeps the scale).
    opt = O.chain(O.clip_by_global_norm(0.5), O.lamb(0.1, eps=1.0, max_grad_norm=0.25))
    p = params()
    by_step = jax.jit(lambda p, s, g: opt.step(g, s, p))
    state = opt.init(p)
    ref_p, ref_state = p, state
    for k in range(3):
        p, state = by_step(p, state, grads(k))
        u, ref_state = opt.update(grads(k), ref_state, ref_p)
        ref_p = optax.apply_updates(ref_p, u)
    for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves((ref_p, ref_state)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adopt_first_update_only_sets_the_second_moment():
    opt = O.adopt(0.1, weight_decay=0.5, decoupled=True)
    p = jnp.array([1.0, -2.0])
    g = jnp.array([3.0, 0.5])
    u, state = opt.update(g, opt.init(p), p)
    np.testing.assert_array_equal(u, jnp.zeros(2))  # no step, no decay yet
    np.testing.assert_array_equal(state.nu, g * g)
    np.testing.assert_array_equal(state.mu, jnp.zeros(2))
    u, _ = opt.update(g, state, p)
    # Second update: g / |g| clipped to (t - 1)^c = 1, decay lr * wd.
    np.testing.assert_allclose(u, -0.1 * 0.1 * jnp.ones(2) - 0.05 * p, rtol=1e-6)


@pytest.mark.parametrize("name", ["adopt_decoupled", "lamb_groups", "lars_clip"])
def test_checkpoint_resume_is_bit_identical(name, tmp_path):
    opt = OPTIMIZERS[name]

    def grads_at(k, p):
        return jax.tree.map(lambda x: jnp.cos(x * (k + 1)), p)

    step = jax.jit(lambda p, s, g: opt.step(g, s, p))
    p, state = params(), opt.init(params())
    for k in range(2):
        p, state = step(p, state, grads_at(k, p))
    checkpoint.save(tmp_path, 2, p, state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    resumed = (restored.params, restored.opt_state)
    for k in range(2, 4):
        p, state = step(p, state, grads_at(k, p))
        resumed = step(*resumed, grads_at(k, resumed[0]))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves((p, state)), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
