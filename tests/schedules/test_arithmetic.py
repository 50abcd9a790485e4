"""Arithmetic with JAX and NumPy scalars, concrete or traced, on either side of a schedule.

``jnp.float32(2.0) * S.cosine(1.0, 100)`` raised "unsupported operand type(s)":
a jax Array defers to the schedule for an unknown type, and the schedule then
refused anything but a Python number.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import schedules as S

BASE = S.cosine(1.0, 100)
COSINE_50 = 0.5  # cos(pi / 2) half-way: 0.5 * (1 + 0)
SCALARS = [jnp.float32(2.0), jnp.array(2.0), jnp.int32(2), np.float32(2.0), np.array(2.0), 2]


@pytest.mark.parametrize("x", SCALARS, ids=lambda x: type(x).__name__)
def test_scalars_on_either_side(x: object) -> None:
    for s in (x * BASE, BASE * x, BASE / x, x + BASE, BASE - x, x - BASE):
        assert isinstance(s, S.Schedule)
    np.testing.assert_allclose((x * BASE)(50), 2.0 * COSINE_50, rtol=1e-6)
    np.testing.assert_allclose((BASE * x)(50), 2.0 * COSINE_50, rtol=1e-6)
    np.testing.assert_allclose((x - BASE)(50), 2.0 - COSINE_50, rtol=1e-6)
    np.testing.assert_allclose((x / (BASE + 1.0))(50), 2.0 / 1.5, rtol=1e-6)


def test_concrete_scalars_become_plain_numbers() -> None:
    # So the result prints, compares and round-trips like `2.0 * s`.
    s = jnp.float32(2.0) * BASE
    assert s == 2.0 * BASE
    assert repr(s) == repr(2.0 * BASE)
    assert S.from_config(S.to_config(s)) == s
    hash(s)


def test_traced_scalars_under_vmap_jit_and_grad() -> None:
    peaks = jnp.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(jax.vmap(lambda p: (p * BASE)(50))(peaks), peaks * 0.5, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda p: (BASE * p)(50))(peaks), peaks * 0.5, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda p: (p - BASE)(50))(2.0), 1.5, rtol=1e-6)
    grad = jax.grad(lambda p: (p * S.cosine(1.0, 100))(10))(1.0)
    np.testing.assert_allclose(grad, 0.5 * (1 + np.cos(np.pi * 0.1)), rtol=1e-6)
    grad = jax.grad(lambda p: (S.cosine(1.0, 100) / p)(50))(2.0)
    np.testing.assert_allclose(grad, -0.5 / 4.0, rtol=1e-6)


def test_non_scalar_and_non_real_operands_are_refused() -> None:
    with pytest.raises(TypeError, match="must be a scalar, got shape \\(3,\\)"):
        jnp.arange(3.0) * BASE
    with pytest.raises(TypeError, match="must be a scalar"):
        BASE * np.ones(2)
    with pytest.raises(TypeError, match="must be real"):
        BASE * jnp.array(True)
    with pytest.raises(TypeError, match="must be real"):
        BASE + jnp.array(1 + 2j)
    with pytest.raises(TypeError):
        BASE * "2"
    with pytest.raises(ValueError, match="division by zero"):
        BASE / jnp.float32(0.0)
    with pytest.raises(ValueError, match="must be finite"):
        jnp.float32(jnp.inf) * BASE
