"""Adadelta: torch.optim.Adadelta, with the learning rate scaling each delta."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

# torch's classics register first: the registry (README table, tests) keeps
# the order of definition, and this module's name sorts before theirs.
from . import _optimizers  # noqa: F401
from ._declare import hyper, optimizer_type
from ._optimizer import Optimizer

__all__ = ["AdadeltaState", "adadelta"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class AdadeltaState(NamedTuple):
    """`adadelta` state: torch's ``square_avg`` (of gradients) and ``acc_delta`` (of deltas)."""

    count: jax.Array
    square_avg: Any
    acc_delta: Any
    hyperparams: dict[str, Any]


@optimizer_type
class adadelta(Optimizer):
    """Adadelta: torch.optim.Adadelta.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1}, \\quad
        v_t = \\rho v_{t-1} + (1 - \\rho) g_t^2 \\\\
        \\Delta_t &= \\frac{\\sqrt{u_{t-1} + \\epsilon}}{\\sqrt{v_t + \\epsilon}} g_t, \\quad
        u_t = \\rho u_{t-1} + (1 - \\rho) \\Delta_t^2, \\quad
        p_t = p_{t-1} - \\eta \\Delta_t

    The learning rate scales the step only: the accumulated :math:`u_t`
    holds the unscaled deltas, as in torch (``lr=1.0`` is the paper's
    method).

    optax's ``adadelta`` takes the same deltas (eps inside both square
    roots, the unscaled delta accumulated), without weight decay: measured
    in float64 on the closed-loop fit of ``tests/reference/adaptive_cases.py``
    (lr 1.0, rho 0.9, eps 1e-6), 3.8e-16 of the largest parameter from torch
    after 200 updates (rounding).

    Args:
        lr: scale of each delta (>= 0).
        rho: decay of both running averages, in [0, 1).
        eps: added inside both square roots (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        state_dtype: dtype of the buffers (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adadelta()
        >>> params = jnp.array([1.0, -1.0])
        >>> updates, state = opt.update(jnp.array([3.0, -0.5]), opt.init(params), params)
        >>> optax.apply_updates(params, updates).tolist()
        [0.9968, -0.9968]

    References:
        torch.optim.Adadelta (PyTorch 2.13); Zeiler, "ADADELTA: An Adaptive
        Learning Rate Method", 2012.
    """

    reference: ClassVar[str] = "torch.optim.Adadelta"
    State = AdadeltaState
    per_leaf = ("square_avg", "acc_delta")
    eight_bit: ClassVar[dict[str, str]] = {"square_avg": "unsigned", "acc_delta": "unsigned"}

    lr: Hyper = hyper(1.0, check="nonneg")
    rho: Hyper = hyper(0.9, check="unit")
    eps: Hyper = hyper(1e-6, check="nonneg")
    weight_decay: Hyper = hyper(0.0, check="nonneg")

    def scalars(self, hp, count):
        return hp | {"-lr": -hp["lr"], "1-rho": 1 - hp["rho"]}

    def kernel(self, p, g, bufs, s, keep):
        if p is not None:
            g = g + s["weight_decay"] * p
        # (1 - rho) * g first, as torch's addcmul_ (see `adam`).
        square_avg = keep("square_avg", s["rho"] * bufs["square_avg"] + (s["1-rho"] * g) * g)
        # torch divides sqrt(u + eps) by sqrt(v + eps); XLA rewrites a division
        # by a square root into a product with rsqrt, which rounds otherwise
        # (and which the single-pass loop cannot reproduce): one square root
        # of the quotient instead, within a rounding of torch's.
        ratio = jnp.sqrt((bufs["acc_delta"] + s["eps"]) / (square_avg + s["eps"]))
        delta = ratio * g
        acc_delta = keep("acc_delta", s["rho"] * bufs["acc_delta"] + (s["1-rho"] * delta) * delta)
        # -lr scales the gradient rather than the delta: with lr 1 (the
        # default) XLA drops a product by -1 and fuses ratio * g into the
        # parameter's sum, which the single-pass loop would not know.
        return ratio * (s["-lr"] * g), {"square_avg": square_avg, "acc_delta": acc_delta}
