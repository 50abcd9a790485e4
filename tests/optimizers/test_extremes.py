"""Numerics at the edges: huge gradients, NumPy float64 parameters with x64 off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import optimizers as O

# |g| where g * g overflows float32 (from 1.8e19) but (1 - b2) * g * g does not
# (up to 5.8e20 for b2 = 0.999, 1.8e20 for RMSprop's alpha = 0.99): torch's
# addcmul_ multiplies by (1 - b2) first.
HUGE = [2e19, 1e20, 5e20]
LIMIT = {"adam": 5.8e20, "adamw": 5.8e20, "rmsprop": 1.8e20}

BUILD = {
    "adam": (O.adam, "Adam"),
    "adamw": (O.adamw, "AdamW"),
    "rmsprop": (O.rmsprop, "RMSprop"),
}


def _torch_step(name, g, lr):
    torch = pytest.importorskip("torch")
    p = torch.zeros(2, requires_grad=True)
    opt = getattr(torch.optim, BUILD[name][1])([p], lr=lr)
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("name", sorted(BUILD))
@pytest.mark.parametrize("magnitude", HUGE)
@pytest.mark.parametrize("method", ["update", "step"])
def test_huge_gradients_still_move_the_parameters(name, magnitude, method):
    if magnitude > LIMIT[name]:
        pytest.skip("(1 - b2) * g * g overflows float32 here, in torch too")
    lr = 0.01
    opt = BUILD[name][0](lr)
    p = jnp.zeros(2)
    g = np.array([magnitude, -magnitude], np.float32)
    state = opt.init(p)
    if method == "update":
        new = p + opt.update(jnp.asarray(g), state, p)[0]
    else:
        new = jax.jit(opt.step)(jnp.asarray(g), state, p)[0]
    # Adam: the bias-corrected moments give lr * sign(g); RMSprop: lr * g / sqrt(0.01 g^2).
    factor = 10.0 if name == "rmsprop" else 1.0
    np.testing.assert_allclose(new, [-lr * factor, lr * factor], rtol=1e-5)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_huge_gradients_match_torch(name):
    g = np.array([1e20, -1.5e20], np.float32)
    expected = _torch_step(name, g, 0.01)
    opt = BUILD[name][0](0.01)
    p = jnp.zeros(2)
    new = p + opt.update(jnp.asarray(g), opt.init(p), p)[0]
    np.testing.assert_allclose(new, expected, rtol=1e-6)


@pytest.mark.parametrize("opt", [O.flatten(O.adamw(0.1)), O.adamw(0.1), O.adagrad(0.1)])
def test_numpy_float64_params_with_x64_off(opt):
    assert not jax.config.jax_enable_x64
    params = {"w": np.ones((2, 3)), "b": np.zeros(3)}  # NumPy's default float64
    state = opt.init(params)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {jnp.dtype(jnp.float32)}
    grads = jax.tree.map(lambda x: np.full_like(x, 0.5), params)
    new, state = jax.jit(opt.step)(grads, state, params)
    new, state = jax.jit(opt.step)(grads, state, new)
    assert new["w"].dtype == jnp.float32 and float(new["w"][0, 0]) < 1.0
