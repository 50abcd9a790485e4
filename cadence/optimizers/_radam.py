"""RAdam: torch.optim.RAdam, with the variance rectification switched on where torch switches."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import as_float
from ._declare import flag, hyper, optimizer_type
from ._leaf import lerp
from ._optimizer import Optimizer
from ._optimizers import _decay

__all__ = ["RAdamState", "radam", "rho"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``

# torch rectifies the update once the approximated SMA is longer than this.
THRESHOLD = 5.0


class RAdamState(NamedTuple):
    """`radam` state: the first and second moments."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict[str, Any]


def rho(b2: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The maximum length of the approximated SMA, and its length at update `t` (1-based).

    In float64, torch's own formula, ``rho_inf - 2 t b2^t / (1 - b2^t)``,
    which torch evaluates in Python floats (doubles): the rectification
    switches at the same update. In float32 that formula subtracts two
    numbers of about ``2 / (1 - b2)`` and keeps a few bits (at b2 = 0.9999
    it is 0.8 off at t = 5, where the true value is 4.9996); here it is
    written without the cancellation, as
    ``(2 / L) (D1 + D2) - 1`` with ``L = -log(b2)``, ``D1 = L / (1 - b2) - 1``
    and ``D2 = 1 - x / expm1(x)``, ``x = t L`` (each a sum of positive terms
    for small arguments), accurate to a few float32 roundings.
    """
    b2, t = jnp.asarray(b2), jnp.asarray(t, jnp.result_type(b2))
    rho_inf = 2 / (1 - b2) - 1
    if b2.dtype == jnp.float64:
        bias_correction2 = 1 - b2**t
        return rho_inf, rho_inf - 2 * t * (b2**t) / bias_correction2
    e = 1 - b2
    log = -jnp.log1p(-e)
    # D1 = (L - e) / e = e/2 + e^2/3 + ...: the series where it converges fast.
    es = jnp.minimum(e, 0.25)
    series1 = sum(es ** (k - 1) / k for k in range(2, 18))
    d1 = jnp.where(e < 0.25, series1, log / e - 1)
    # D2 = (expm1(x) - x) / expm1(x), with expm1(x) - x = x^2/2! + x^3/3! + ...
    x = t * log
    xs = jnp.minimum(x, 1.0)
    factorial, series2 = 1.0, jnp.zeros_like(xs)
    for k in range(2, 14):
        factorial *= k
        series2 = series2 + xs**k / factorial
    d2 = jnp.where(x < 1.0, series2 / (xs + series2), 1 - x / jnp.expm1(x))
    return rho_inf, (2 / log) * (d1 + d2) - 1


@optimizer_type
class radam(Optimizer):
    """Rectified Adam: torch.optim.RAdam.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1} \\ \\text{(or } p_{t-1} \\leftarrow
               p_{t-1}(1 - \\eta\\lambda) \\text{ when decoupled)} \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2 \\\\
        \\rho_\\infty &= \\frac{2}{1 - \\beta_2} - 1, \\quad
        \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1 - \\beta_2^t}, \\quad
        r_t = \\sqrt{\\frac{(\\rho_t - 4)(\\rho_t - 2)\\rho_\\infty}
                          {(\\rho_\\infty - 4)(\\rho_\\infty - 2)\\rho_t}} \\\\
        p_t &= p_{t-1} - \\frac{\\eta\\, m_t}{1 - \\beta_1^t} \\cdot
               \\begin{cases} r_t \\frac{\\sqrt{1 - \\beta_2^t}}{\\sqrt{v_t} + \\epsilon}
               & \\rho_t > 5 \\\\ 1 & \\text{otherwise} \\end{cases}

    The first updates (while :math:`\\rho_t \\le 5`: five of them for any
    :math:`\\beta_2 \\ge 0.9`) are SGD with momentum; the adaptive, rectified
    step takes over at the update where torch's does (`rho`: torch's own
    formula in float64, a cancellation-free form of it in float32).

    optax's ``radam`` differs in the rectified step: it divides by the
    bias-corrected :math:`\\sqrt{v_t / (1 - \\beta_2^t)}` plus eps, where torch
    adds eps to :math:`\\sqrt{v_t}` before the correction (eps is in effect
    :math:`1 / \\sqrt{1 - \\beta_2^t}` times larger in torch); it switches at
    :math:`\\rho_t \\ge 5`, evaluates :math:`\\rho_t` with torch's formula in
    float32 when x64 is off, and has no weight decay. Measured in float64 on
    the closed-loop fit of ``tests/reference/adaptive_cases.py`` (lr 0.01,
    default betas): 9.5e-9 of the largest parameter from torch after 200
    updates with eps 1e-8, 9.4e-5 with eps 1e-4.

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1) (torch's ``betas[0]``).
        b2: decay of the second moment, in [0, 1) (torch's ``betas[1]``).
        eps: added to :math:`\\sqrt{v_t}` (>= 0).
        weight_decay: weight decay (>= 0): L2 added to the gradient, or
            decoupled and scaled by lr with ``decoupled_weight_decay``.
        decoupled_weight_decay: decay the parameters as AdamW does.
        state_dtype: dtype of the moments (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.radam(0.1)
        >>> params = jnp.array([1.0, -1.0])
        >>> state = opt.init(params)
        >>> for _ in range(6):
        ...     updates, state = opt.update(jnp.array([3.0, -0.5]), state, params)
        ...     params = optax.apply_updates(params, updates)
        ...     print(params.tolist())
        [0.7, -0.95]
        [0.4, -0.9]
        [0.1, -0.85]
        [-0.2, -0.8]
        [-0.5, -0.75]
        [-0.5026, -0.7474]

    References:
        torch.optim.RAdam (PyTorch 2.13); Liu et al., "On the Variance of the
        Adaptive Learning Rate and Beyond", 2020.
    """

    reference: ClassVar[str] = "torch.optim.RAdam"
    State = RAdamState
    per_leaf = ("mu", "nu")
    eight_bit: ClassVar[dict[str, str]] = {"mu": "signed", "nu": "unsigned"}

    lr: Hyper = hyper(1e-3, check="nonneg")
    b1: Hyper = hyper(0.9, check="unit")
    b2: Hyper = hyper(0.999, check="unit")
    eps: Hyper = hyper(1e-8, check="nonneg")
    weight_decay: Hyper = hyper(0.0, check="nonneg")
    decoupled_weight_decay: bool = flag(False)

    def scalars(self, hp, count):
        t = as_float(count) + 1
        rho_inf, rho_t = rho(hp["b2"], t)
        rectify = rho_t > THRESHOLD
        rect_squared = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        return hp | {
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            # A product with the reciprocal, not a division by the scalar:
            # XLA makes that substitution in some programs and not in others
            # (see `adam`), which would set `step` and `update` apart.
            "1/bc1": 1 / (1 - hp["b1"] ** t),
            # The adaptive step's weight, sqrt(1 - b2^t) times the
            # rectification term (one square root: XLA then keeps one scalar
            # per group between the loops, not the steps to rho_t), and 0
            # before the switch (the term is NaN while rho_t < 4); the plain
            # step's weight is read from it (see `kernel`).
            "adaptive": jnp.sqrt(jnp.where(rectify, (1 - hp["b2"] ** t) * rect_squared, 0.0)),
            "1-lr*wd": 1 - hp["lr"] * hp["weight_decay"],
        }

    def kernel(self, p, g, bufs, s, keep):
        if p is not None and not self.decoupled_weight_decay:
            g = g + s["weight_decay"] * p
        mu = keep("mu", lerp(bufs["mu"], g, s["1-b1"]))
        # (1 - b2) * g first, as torch's addcmul_ (see `adam`).
        nu = keep("nu", s["b2"] * bufs["nu"] + (s["1-b2"] * g) * g)
        # torch's order: (m / bc1) * lr, times sqrt(bc2) / (sqrt(v) + eps)
        # (Python's ``scalar / tensor`` is a reciprocal times the scalar) and
        # the rectification term. The two branches are blended by the scalars
        # (``adaptive * 0 + 1`` before the switch) rather than selected: XLA's
        # backend splits a loop on a loop-invariant select and fuses products
        # into sums differently in each half. (With eps 0, a gradient that
        # has been exactly 0 makes the blend NaN before the switch, and
        # torch's step NaN after it.)
        step = (mu * s["1/bc1"]) * s["lr"]
        plain = jnp.where(s["adaptive"] > 0, 0.0, 1.0)
        update = -(step * ((1 / (jnp.sqrt(nu) + s["eps"])) * s["adaptive"] + plain))
        if p is not None and self.decoupled_weight_decay:
            update = update + _decay(p, s)
        return update, {"mu": mu, "nu": nu}
