"""ADOPT: timm's Adopt, Adam with the update normalised by the previous second moment."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import (
    BOOL,
    DTYPE,
    GROUPS,
    HYPER,
    MAYBE_FLOAT,
    NONNEG,
    UNIT,
    as_float,
    field,
    transformation_type,
)
from ._leaf import torch_lerp
from ._optimizer import Optimizer

__all__ = ["AdoptState", "adopt"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class AdoptState(NamedTuple):
    """`adopt` state: the first moment of the normalised gradient and the second moment."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict[str, Any]


@transformation_type
class adopt(Optimizer):
    """ADOPT (Adam normalised by the previous second moment): timm's ``Adopt``.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1} \\ \\text{(L2; or, when decoupled, }
               p_{t-1} \\leftarrow p_{t-1} - \\eta\\lambda p_{t-1} \\text{ for } t > 1) \\\\
        t = 1:&\\quad v_1 = g_1^2, \\quad p_1 = p_0 \\ \\text{(no step)} \\\\
        t > 1:&\\quad \\hat g_t = \\mathrm{clip}\\Big(
               \\frac{g_t}{\\max(\\sqrt{v_{t-1}}, \\epsilon)}, \\pm (t - 1)^{c}\\Big), \\quad
               m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) \\hat g_t \\\\
        &\\quad p_t = p_{t-1} - \\eta\\, m_t, \\quad
               v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2

    The gradient is divided by the second moment of the *previous* updates
    (so the first update only initialises it), and the normalised gradient
    is clipped to :math:`\\pm (t-1)^c` (``clip_exp``; None: no clipping).
    `weight_decay` is L2 (added to the gradient, also on the first update)
    unless ``decoupled``, where the parameters shrink by :math:`\\eta\\lambda`
    from the second update on. Matches timm 1.0's ``Adopt`` (its default
    single-tensor path on CPU; its foreach path computes the same).

    In float32, ``1 - b2`` is computed from the rounded b2 (as every
    cadence and optax optimizer does), where timm rounds the double-precision
    difference: for b2 = 0.9999 the two differ by 1.7e-4 of themselves, and
    on the parity problem's random gradients the float32 parameters are
    8e-6 (of the largest) away from timm's after 120 updates with the
    defaults, where b2 = 0.999 gives 2e-6 (float64 agrees to 1e-15).

    timm options not offered: ``caution`` (Cautious Optimizers' mask),
    ``corrected_weight_decay`` (decay scaled by lr²/max lr), ``maximize``
    (use ``O.chain(optax.scale(-1.0), opt)``), complex parameters, and
    per-parameter first steps (a parameter without gradient for a while).

    Where optax differs (``optax.contrib.adopt``): its clipping bound is
    :math:`(t-1)^{1/4}` by default (``clip_value_fn``) where timm's is
    :math:`(t-1)^{0.333}`, and it has no weight decay. Measured in float64
    over 120 updates of the parity problems (largest gap to timm, relative
    to the largest parameter): with timm's exponent passed as
    ``clip_value_fn`` they agree to 2e-16; with optax's default exponent
    (lr 0.01) it is 6.3% away.

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1) (timm's ``betas[0]``).
        b2: decay of the second moment, in [0, 1) (timm's ``betas[1]``).
        eps: lower bound of the denominator :math:`\\sqrt{v}` (>= 0).
        clip_exp: exponent of the clipping bound :math:`(t-1)^c` (>= 0), or
            None to not clip; one number for every group, not a schedule
            (timm lets a group set its own).
        weight_decay: L2 coefficient, or decoupled decay with ``decoupled`` (>= 0).
        decoupled: decay the parameters (scaled by lr) instead of adding L2.
        state_dtype: dtype of the moments (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adopt(0.1)
        >>> params = jnp.array([1.0, -1.0])
        >>> state = opt.init(params)
        >>> for g in ([2.0, -0.5], [1.0, 1.0]):
        ...     updates, state = opt.update(jnp.array(g), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> # the first update only set v = g², the second moved by lr (1 - b1) clip(g / |g_1|, ±1)
        >>> params
        Array([ 0.995, -1.01 ], dtype=float32)

    References:
        timm.optim.Adopt (timm 1.0); Taniguchi et al., "ADOPT: Modified Adam
        Can Converge with Any β2 with the Optimal Rate", NeurIPS 2024.
    """

    reference: ClassVar[str] = "timm.optim.Adopt"
    State = AdoptState

    lr: Hyper = field(HYPER, 1e-3, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.9999, check=UNIT)
    eps: Hyper = field(HYPER, 1e-6, check=NONNEG)
    clip_exp: float | None = field(MAYBE_FLOAT, 0.333, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    decoupled: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def buffers(self) -> tuple[str, ...]:
        return ("mu", "nu")

    def scalars(self, hp, count):
        first = count == 0
        later = {
            # The first update moves nothing (the first moment stays 0).
            "-lr": jnp.where(first, 0.0, -hp["lr"]),
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            # timm adds -lr * wd times the parameter (no decay on the first update).
            "-lr*wd": jnp.where(first, 0.0, -hp["lr"] * hp["weight_decay"]),
            "first": first,
        }
        if self.clip_exp is not None:
            later["clip"] = as_float(count) ** self.clip_exp  # (t - 1)^c for update t
        return hp | later

    def kernel(self, p, g, bufs, s, keep):
        if p is not None and not self.decoupled:
            g = g + s["weight_decay"] * p
        first = s["first"]
        normed = g / jnp.maximum(jnp.sqrt(bufs["nu"]), s["eps"])
        if self.clip_exp is not None:
            normed = jnp.minimum(jnp.maximum(normed, -s["clip"]), s["clip"])
        # The first update leaves the first moment (zero) and the parameter alone.
        mu = keep("mu", jnp.where(first, bufs["mu"], torch_lerp(bufs["mu"], normed, s["1-b1"])))
        update = s["-lr"] * mu
        if p is not None and self.decoupled:
            update = update + s["-lr*wd"] * p
        # (1 - b2) * g first, as torch's addcmul_; the first update adds g².
        later = s["b2"] * bufs["nu"] + (s["1-b2"] * g) * g
        nu = keep("nu", jnp.where(first, bufs["nu"] + g * g, later))
        return update, {"mu": mu, "nu": nu}
