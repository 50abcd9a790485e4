"""What timm's Lamb and Lars share: a leaf's 2-norm and the guard of their trust ratios."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["guarded", "norm"]


def norm(x: jax.Array) -> jax.Array:
    """The 2-norm of a whole leaf (torch's ``x.norm(2.0)``)."""
    return jnp.sqrt(jnp.sum(x * x))


def guarded(ratio: jax.Array, w_norm: jax.Array, u_norm: jax.Array) -> jax.Array:
    """`ratio`, or 1 where the parameter's or the update's norm is 0 (timm's nested where)."""
    return jnp.where(w_norm > 0, jnp.where(u_norm > 0, ratio, 1.0), 1.0)
