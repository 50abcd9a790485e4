"""Building blocks: chain, clip_by_global_norm (torch's clip_grad_norm_), clip_by_value."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S


def _tree(scale, dtype=np.float64):
    rng = np.random.default_rng(int(scale * 1000) % 2**31)
    return {
        "a": (rng.standard_normal((3, 4)) * scale).astype(dtype),
        "b": [(rng.standard_normal(5) * scale).astype(dtype), np.asarray(scale, dtype)],
    }


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf, 3.0])
@pytest.mark.parametrize("scale", [1e-3, 0.3, 1.0, 40.0])
def test_clip_by_global_norm_matches_torch(norm_type, scale, x64):
    torch = pytest.importorskip("torch")
    grads = _tree(scale)
    tensors = [torch.tensor(x) for x in jax.tree.leaves(grads)]
    for t in tensors:
        t.grad = t.clone()
    total = torch.nn.utils.clip_grad_norm_(tensors, 1.5, norm_type)
    clip = O.clip_by_global_norm(1.5, norm_type)
    out, state = clip.update(jax.tree.map(jnp.asarray, grads), clip.init(grads))
    np.testing.assert_allclose(float(state.norm), float(total), rtol=1e-14)
    for ours, t in zip(jax.tree.leaves(out), tensors, strict=True):
        np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-14, atol=1e-300)


def test_clip_by_global_norm_closed_form_and_dtypes():
    g = {"x": jnp.array([3.0, 4.0], jnp.bfloat16), "y": jnp.array([0.0], jnp.float32)}
    clip = O.clip_by_global_norm(1.0)
    out, state = clip.update(g, clip.init(g))
    assert out["x"].dtype == jnp.bfloat16 and out["y"].dtype == jnp.float32
    assert state.norm.dtype == jnp.float32 and float(state.norm) == 5.0
    np.testing.assert_allclose(np.asarray(out["x"], np.float32), [0.6, 0.8], rtol=1e-2)
    # Under the limit: multiplied by max_norm / (norm + 1e-6) clamped at 1, i.e. unchanged.
    small, _ = clip.update({"x": jnp.array([0.3]), "y": jnp.array([0.4])}, clip.init(g))
    assert float(small["x"][0]) == float(jnp.float32(0.3))
    empty, state = clip.update({}, clip.init({}))
    assert empty == {} and float(state.norm) == 0.0


def test_clip_by_global_norm_with_a_scheduled_limit():
    clip = O.clip_by_global_norm(S.piecewise((1,), (1.0, 0.5)))
    g = jnp.array([3.0, 4.0])
    state = clip.init(g)
    first, state = clip.update(g, state)
    second, state = clip.update(g, state)
    np.testing.assert_allclose(jnp.linalg.norm(first), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(second), 0.5, rtol=1e-6)
    assert float(O.hyperparams(state)["max_norm"]) == 0.5


def test_clip_by_value_matches_torch():
    torch = pytest.importorskip("torch")
    grads = _tree(3.0, np.float32)
    tensors = [torch.tensor(x) for x in jax.tree.leaves(grads)]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_value_(tensors, 0.7)
    clip = O.clip_by_value(0.7)
    out, _ = clip.update(jax.tree.map(jnp.asarray, grads), clip.init(grads))
    for ours, t in zip(jax.tree.leaves(out), tensors, strict=True):
        np.testing.assert_array_equal(ours, t.grad.numpy())


def test_chain_applies_in_order_and_passes_extra_arguments():
    seen = []

    def record(updates, state, params=None, **extra):
        seen.append(extra)
        return updates, state

    spy = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), record)
    opt = O.chain(O.clip_by_value(1.0), spy, O.sgd(0.5))
    u, state = opt.update(jnp.array([4.0, -0.5]), opt.init(jnp.zeros(2)), value=3.0)
    np.testing.assert_array_equal(u, [-0.5, 0.25])
    assert seen == [{"value": 3.0}]
    assert len(state.inner) == 3 and isinstance(state.inner[1], optax.EmptyState)
    assert O.chain().update(jnp.ones(1), O.chain().init(jnp.ones(1)))[0] == jnp.ones(1)


def test_chain_rejects_a_foreign_state_and_cannot_serialize_optax_parts():
    opt = O.chain(O.sgd(0.1))
    with pytest.raises(ValueError, match="ChainState"):
        opt.update(jnp.ones(1), (O.sgd(0.1).init(jnp.ones(1)),))
    with pytest.raises(ValueError, match="txs\\[0\\]"):
        O.chain(optax.scale(2.0), O.sgd(0.1)).to_config()
    with pytest.raises(TypeError, match="transformation"):
        O.chain(O.sgd(0.1), 3.0)


def test_reduce_on_plateau_gets_its_value_through_optax_chain():
    # optax passes extra arguments only to GradientTransformationExtraArgs: ours are.
    opt = optax.chain(optax.identity(), O.reduce_on_plateau(O.sgd(1.0), patience=0))
    state = opt.init(jnp.zeros(1))
    for value in (1.0, 2.0, 3.0):
        _, state = opt.update(jnp.ones(1), state, jnp.zeros(1), value=value)
    assert float(state[1].scale) == pytest.approx(0.01)
