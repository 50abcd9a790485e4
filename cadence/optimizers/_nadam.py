"""NAdam: torch.optim.NAdam, with its momentum schedule's running product as shared state."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import BOOL, DTYPE, GROUPS, HYPER, NONNEG, UNIT, as_float, field, transformation_type
from ._leaf import lerp
from ._optimizer import Optimizer
from ._optimizers import _decay

__all__ = ["NAdamState", "nadam"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class NAdamState(NamedTuple):
    """`nadam` state: the moments, and per group the product of the momentum schedule."""

    count: jax.Array
    mu: Any
    nu: Any
    mu_product: tuple[jax.Array, ...]
    hyperparams: dict[str, Any]


def _momentum(hp: dict[str, jax.Array], t: jax.Array) -> jax.Array:
    """torch's momentum cache at update `t` (1-based): ``b1 (1 - 0.96^(t psi) / 2)``."""
    return hp["b1"] * (1.0 - 0.5 * 0.96 ** (t * hp["momentum_decay"]))


@transformation_type
class nadam(Optimizer):
    """Adam with Nesterov momentum and a momentum schedule: torch.optim.NAdam.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1} \\ \\text{(or } p_{t-1} \\leftarrow
               p_{t-1}(1 - \\eta\\lambda) \\text{ when decoupled)} \\\\
        \\mu_t &= \\beta_1 (1 - \\tfrac12 0.96^{t\\psi}), \\quad
               \\Pi_t = \\prod_{i \\le t} \\mu_i \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        d_t = \\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon \\\\
        p_t &= p_{t-1} - \\eta \\frac{1 - \\mu_t}{1 - \\Pi_t} \\frac{g_t}{d_t}
               - \\eta \\frac{\\mu_{t+1}}{1 - \\Pi_t \\mu_{t+1}} \\frac{m_t}{d_t}

    The product :math:`\\Pi_t` is one scalar per parameter group in the state
    (``mu_product``), as torch keeps it beside each parameter. optax's
    ``nadam`` (``adam(nesterov=True)``) keeps :math:`\\beta_1` constant (no
    ``momentum_decay``, no product) and bias-corrects as Adam does: from the
    same start at lr 0.01 in float64 it is 0.66% of the largest parameter
    away from torch after one update, 2.6% after five.

    torch keeps ``mu_product`` in its default dtype: a float64 run in torch
    matches this one only under ``torch.set_default_dtype(torch.float64)``
    (otherwise torch rounds the product to float32 at every update).

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1) (torch's ``betas[0]``).
        b2: decay of the second moment, in [0, 1) (torch's ``betas[1]``).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: weight decay (>= 0): L2 added to the gradient, or
            decoupled and scaled by lr with ``decoupled_weight_decay``.
        momentum_decay: :math:`\\psi`, the momentum schedule's decay (>= 0).
        decoupled_weight_decay: decay the parameters as AdamW does (NAdamW).
        state_dtype: dtype of the moments (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.nadam(0.1)
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> updates, state = opt.update({"w": jnp.array([3.0, -0.5])}, opt.init(params), params)
        >>> optax.apply_updates(params, updates)["w"]
        Array([ 0.8944, -0.8944], dtype=float32)
        >>> state.mu_product
        (Array(0.4501, dtype=float32),)

    References:
        torch.optim.NAdam (PyTorch 2.x); Dozat, "Incorporating Nesterov
        Momentum into Adam", 2016.
    """

    reference: ClassVar[str] = "torch.optim.NAdam"
    State = NAdamState
    shared = ("mu_product",)
    eight_bit: ClassVar[dict[str, str]] = {"mu": "signed", "nu": "unsigned"}

    lr: Hyper = field(HYPER, 2e-3, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.999, check=UNIT)
    eps: Hyper = field(HYPER, 1e-8, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    momentum_decay: Hyper = field(HYPER, 4e-3, check=NONNEG)
    decoupled_weight_decay: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def buffers(self) -> tuple[str, ...]:
        return ("mu", "nu")

    def init_shared(self, hp):
        return {"mu_product": 1.0}

    def advance(self, hp, count, shared):
        t = as_float(count) + 1
        return {"mu_product": shared["mu_product"] * _momentum(hp, t)}

    def scalars(self, hp, count):
        t = as_float(count) + 1
        mu, mu_next = _momentum(hp, t), _momentum(hp, t + 1)
        product = hp["mu_product"]  # already times mu (`advance`)
        return hp | {
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            # torch divides by 1 - b2^t inside the square root; XLA turns
            # that division into a product with the reciprocal in some
            # programs and not others (see `adam`): the product with rsqrt,
            # written out, rounds the same everywhere, the single-pass loop
            # included.
            "1/bc2_sqrt": jax.lax.rsqrt(1 - hp["b2"] ** t),
            "-grad_step": -hp["lr"] * (1 - mu) / (1 - product),
            "-momentum_step": -hp["lr"] * mu_next / (1 - product * mu_next),
            "1-lr*wd": 1 - hp["lr"] * hp["weight_decay"],
        }

    def kernel(self, p, g, bufs, s, keep):
        if p is not None and not self.decoupled_weight_decay:
            g = g + s["weight_decay"] * p
        mu = keep("mu", lerp(bufs["mu"], g, s["1-b1"]))
        nu = keep("nu", s["b2"] * bufs["nu"] + s["1-b2"] * (g * g))
        denom = jnp.sqrt(nu) * s["1/bc2_sqrt"] + s["eps"]
        # torch adds the two terms to the parameter one after the other.
        update = s["-grad_step"] * (g / denom) + s["-momentum_step"] * (mu / denom)
        if p is not None and self.decoupled_weight_decay:
            update = update + _decay(p, s)
        return update, {"mu": mu, "nu": nu}
