"""Accurate building blocks shared by the primitives.

The reference libraries compute in Python float64; we compute in float32 by
default. These helpers keep float32 results within a few ulp of the float64
reference, including near the zeros of a cosine, where the textbook
``0.5 * (1 + cos(pi * p))`` loses all relative precision.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._base import as_float


def div(num: jax.Array, den: ArrayLike) -> jax.Array:
    """``num / den``, correctly rounded even when `den` is a compile-time constant.

    XLA rewrites a division by a constant as a multiplication by its rounded
    reciprocal, so ``(10 - t) / 10`` is not exactly 1 at ``t = 0`` and
    ``floor(970 / 97)`` can come out as 9. Adding ``0 * num`` (which XLA may
    not fold for floats) keeps the divisor a runtime value and the division a
    true one.
    """
    num = as_float(num)
    return num / (as_float(den) + 0 * num)


def floor_div(t: jax.Array, c: float) -> jax.Array:
    """``floor(t / c)``, exact for integer-valued `t` and `c` on every backend.

    The quotient is corrected with products, which are exact for integers
    below 2**24 (float32), so an approximate division (as on TPU) cannot put a
    step on the wrong side of a multiple of `c`.
    """
    c = float(c)  # a step count of any size, never an int32 constant
    q = jnp.floor(div(t, c))
    q = jnp.where(q * c > t, q - 1, q)
    return jnp.where((q + 1) * c <= t, q + 1, q)


def cos_fractions(
    num: jax.Array, den: ArrayLike, cycles: ArrayLike = 0.5, rest: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``f = 0.5 * (1 + cos(2 pi cycles num / den))`` and ``1 - f``, each to a few ulp.

    With ``u = cycles * num / den`` half-turns, ``f = cos(pi u)**2`` and
    ``1 - f = sin(pi u)**2``. Reducing ``cycles * num`` modulo ``den`` before
    dividing keeps the phase exact for integer steps; near a zero of either
    value it is computed from the distance to that zero, so both keep their
    relative precision (the complement is what a rising cosine needs near its
    start).

    `rest`, if given, is ``den - num`` computed more accurately than the
    subtraction would be (k-decay's ``T**k - t**k``); with the half cosine
    (``cycles == 0.5``) and ``0 <= num <= den`` it sets the distance to the
    end, where the value is smallest.
    """
    num = as_float(num)
    den = as_float(den)
    a = as_float(cycles) * num
    n = jnp.round(div(a, den))
    r = jnp.abs(a - n * den)
    near_peak = r <= 0.25 * den
    x = jnp.pi * div(r, den)  # accurate while r is small
    y = jnp.pi * div(0.5 * den - r, den)  # accurate while r is near den / 2
    if rest is not None and isinstance(cycles, float) and cycles == 0.5:
        y = jnp.pi * div(0.5 * rest, den)
    f = jnp.where(near_peak, jnp.cos(x) ** 2, jnp.sin(y) ** 2)
    rest = jnp.where(near_peak, jnp.sin(x) ** 2, jnp.cos(y) ** 2)
    return f, rest


def cos_fraction(num: jax.Array, den: ArrayLike, cycles: ArrayLike = 0.5) -> jax.Array:
    """``0.5 * (1 + cos(2 pi cycles num / den))``, accurate to a few ulp (`cos_fractions`)."""
    return cos_fractions(num, den, cycles)[0]


def blend(a: ArrayLike, b: ArrayLike, wa: jax.Array, wb: jax.Array) -> jax.Array:
    """``a * wa + b * wb`` for weights with ``wa + wb = 1``, each computed accurately.

    Unlike ``b + (a - b) * wa`` it does not cancel: a ramp from 0.001 to 0.1
    starts at 0.001 to float32's last bit, not 2e-6 off, and it is exactly `a`
    at ``wa = 1`` and exactly `b` at ``wb = 1``.
    """
    return as_float(a) * wa + as_float(b) * wb


def power(base: ArrayLike, exponent: jax.Array) -> jax.Array:
    """``base ** exponent`` for a hyperparameter base and a float exponent.

    For a concrete base the logarithm is taken in float64 on the host and split
    into a 12-bit head and a tail, so that ``head * exponent`` is exact for
    integer exponents below 4096: e.g. ``0.99 ** 1000`` keeps float32 precision
    instead of amplifying the rounding of 0.99 (or of the product) a
    thousandfold.
    """
    if isinstance(base, numbers.Real) and not isinstance(base, bool) and base > 0:
        log = math.log(base)
        mantissa, exp = math.frexp(log)
        head = math.ldexp(round(mantissa * 4096) / 4096, exp)
        tail = log - head
        # The barrier keeps XLA from folding exp(a) * exp(b) back into exp(a + b),
        # which would round the exponent and undo the split.
        big = jax.lax.optimization_barrier(jnp.exp(as_float(head) * exponent))
        # |tail| <= |log| / 4096, so |tail * exponent| > 80 only where `big`
        # is already 0 or inf: clipping there changes no finite value and keeps
        # 0 * inf (NaN) from arising at huge steps.
        return big * jnp.exp(jnp.clip(as_float(tail) * exponent, -80.0, 80.0))
    return jnp.power(as_float(base), exponent)


def times(a: ArrayLike, x: jax.Array) -> jax.Array:
    """``a * x``, and exactly 0 where ``a == 0`` even if `x` overflowed to inf.

    A growing power (``rate > 1``) reaches inf at huge steps; a zero factor
    must keep the product at its true value 0 rather than NaN.
    """
    a = as_float(a)
    return jnp.where(a == 0, jnp.zeros_like(x), a * x)


def pow_unless_one(x: jax.Array, exponent: ArrayLike) -> jax.Array:
    """``x ** exponent``, exactly ``x`` when the exponent is 1 (pow is inexact)."""
    exponent = as_float(exponent)
    safe = jnp.where(x > 0, x, 1)
    return jnp.where(exponent == 1, x, jnp.where(x > 0, safe**exponent, 0))


def safe_sqrt(x: jax.Array) -> jax.Array:
    """``sqrt(max(x, 0))`` whose gradient at 0 is 0 rather than inf (NaN under where)."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)
