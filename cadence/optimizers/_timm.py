"""Arithmetic timm's optimizers share: complements of betas, leaf norms, trust-ratio guards."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ._base import as_float

__all__ = ["complement", "guarded", "norm"]


def complement(opt: Any, name: str, value: jax.Array) -> jax.Array:
    """``1 - value`` for the hyperparameter `name`, rounded as timm's Python arithmetic rounds it.

    timm computes ``1 - beta2`` in double precision and rounds the result
    once. In float32 ``1 - b2`` of the already rounded b2 is off by 1.7e-4
    of itself for b2 = 0.9999 (1.3e-5 for 0.999), which puts float32 runs
    5e-5 away from timm's within 100 updates. For a value that is one of the
    optimizer's numbers (default or group), the double-precision complement
    is taken; a schedule's other values are subtracted in the compute dtype.
    """
    out = 1 - value
    for number in {x for x in opt._all(name) if isinstance(x, float)}:
        out = jnp.where(value == number, as_float(1 - number).astype(out.dtype), out)
    return out


def norm(x: jax.Array) -> jax.Array:
    """The 2-norm of a whole leaf (torch's ``x.norm(2.0)``)."""
    return jnp.sqrt(jnp.sum(x * x))


def guarded(ratio: jax.Array, w_norm: jax.Array, u_norm: jax.Array) -> jax.Array:
    """`ratio`, or 1 where the parameter's or the update's norm is 0 (timm's nested where)."""
    return jnp.where(w_norm > 0, jnp.where(u_norm > 0, ratio, 1.0), 1.0)
