"""Adamax: torch.optim.Adamax, Adam with an infinity norm in place of the second moment."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

# torch's classics register first: the registry (README table, tests) keeps
# the order of definition, and this module's name sorts before theirs.
from . import _optimizers  # noqa: F401
from ._base import as_float
from ._declare import hyper, optimizer_type
from ._leaf import lerp
from ._optimizer import Optimizer

__all__ = ["AdamaxState", "adamax"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class AdamaxState(NamedTuple):
    """`adamax` state: the first moment and torch's ``exp_inf``, the decayed infinity norm."""

    count: jax.Array
    mu: Any
    exp_inf: Any
    hyperparams: dict[str, Any]


@optimizer_type
class adamax(Optimizer):
    """Adamax: torch.optim.Adamax.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1}, \\quad
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t \\\\
        u_t &= \\max(\\beta_2 u_{t-1}, |g_t| + \\epsilon), \\quad
        p_t = p_{t-1} - \\frac{\\eta}{1 - \\beta_1^t} \\frac{m_t}{u_t}

    eps is added to :math:`|g_t|` inside the maximum, as torch does (so
    :math:`u_t \\ge \\epsilon` and no eps is added to the denominator), and the
    bias correction of :math:`m_t` divides the learning rate. A NaN in the
    gradient propagates into the norm, as in torch.

    optax's ``adamax`` computes the same thing (eps inside the maximum, the
    first moment bias-corrected), without weight decay: measured in float64
    on the closed-loop fit of ``tests/reference/adaptive_cases.py`` (lr
    0.02, default betas and eps), 3.6e-16 of the largest parameter from torch
    after 200 updates (rounding).

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1) (torch's ``betas[0]``).
        b2: decay of the infinity norm, in [0, 1) (torch's ``betas[1]``).
        eps: added to :math:`|g_t|` in the norm (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        state_dtype: dtype of the buffers (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adamax(0.1)
        >>> params = jnp.array([1.0, -1.0])
        >>> state = opt.init(params)
        >>> for grad in ([3.0, -0.5], [1.0, 0.0]):
        ...     updates, state = opt.update(jnp.array(grad), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params.tolist(), state.exp_inf.tolist()
        ([0.835, -0.8526], [2.997, 0.4995])

    References:
        torch.optim.Adamax (PyTorch 2.13); Kingma & Ba, 2015, section 7.
    """

    reference: ClassVar[str] = "torch.optim.Adamax"
    State = AdamaxState
    per_leaf = ("mu", "exp_inf")
    eight_bit: ClassVar[dict[str, str]] = {"mu": "signed", "exp_inf": "unsigned"}

    lr: Hyper = hyper(2e-3, check="nonneg")
    b1: Hyper = hyper(0.9, check="unit")
    b2: Hyper = hyper(0.999, check="unit")
    eps: Hyper = hyper(1e-8, check="nonneg")
    weight_decay: Hyper = hyper(0.0, check="nonneg")

    def scalars(self, hp, count):
        t = as_float(count) + 1
        return hp | {"1-b1": 1 - hp["b1"], "-clr": -(hp["lr"] / (1 - hp["b1"] ** t))}

    def kernel(self, p, g, bufs, s, keep):
        if p is not None:
            g = g + s["weight_decay"] * p
        mu = keep("mu", lerp(bufs["mu"], g, s["1-b1"]))
        norm = keep("exp_inf", jnp.maximum(s["b2"] * bufs["exp_inf"], jnp.abs(g) + s["eps"]))
        # torch's addcdiv_: the quotient first, then the scaled step.
        return s["-clr"] * (mu / norm), {"mu": mu, "exp_inf": norm}
