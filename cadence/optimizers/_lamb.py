"""LAMB: timm's Lamb, Adam's step scaled per leaf by a trust ratio, with global norm clipping."""

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
from ._timm import guarded, norm
from ._transforms import global_norm

__all__ = ["LambState", "lamb"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class LambState(NamedTuple):
    """`lamb` state: the first and second moments."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict[str, Any]


@transformation_type
class lamb(Optimizer):
    """LAMB (layer-wise adaptive Adam for large batches): timm's ``Lamb``.

    .. math::
        c &= \\max\\big(\\lVert (\\lVert g_1 \\rVert, \\dots, \\lVert g_k \\rVert)
             \\rVert / \\text{max\\_grad\\_norm},\\ 1\\big), \\quad g \\leftarrow g / c \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g \\ \\text{(or } + g
               \\text{ without grad\\_averaging)}, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g^2 \\\\
        u_t &= \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon}
               + \\lambda p_{t-1}, \\quad
        r_t = \\frac{\\lVert p_{t-1} \\rVert}{\\lVert u_t \\rVert}
              \\ (1 \\text{ if either norm is } 0;\\ \\min(r_t, 1) \\text{ with trust\\_clip}) \\\\
        p_t &= p_{t-1} - \\eta\\, r_t\\, u_t

    The clipping divisor `c` is one number for the whole tree: the norm of
    every gradient leaf of every group, divided by ``max_grad_norm`` and
    floored at 1 (timm's formula; torch's ``clip_grad_norm_`` multiplies by
    ``max_norm / (norm + 1e-6)`` instead, see `clip_by_global_norm`);
    ``max_grad_norm=None`` does not clip. The trust ratio uses whole-leaf
    norms and applies only to the leaves of groups whose weight decay is not
    0, unless ``always_adapt``; ``bias_correction=False`` drops the two bias
    corrections. The flags apply to every group. Matches timm 1.0's ``Lamb``
    (its default single-tensor path on CPU; its foreach path, the default on
    GPUs, folds the bias corrections into other scalars: the same math,
    rounded differently).

    timm options not offered: ``caution``, ``decoupled_decay`` and
    ``corrected_weight_decay`` (the decay is L2, as timm's default).

    Where optax differs (``optax.lamb``): it has no global gradient clipping,
    applies the trust ratio to every leaf (its ``mask`` only skips the decay),
    and its weight decay defaults to 0. Measured in float64 over 120 updates
    of the parity problems (largest gap to timm, relative to the largest
    parameter): with the same numbers, clipping off and decay on every leaf,
    optax agrees with timm to 2e-16; against timm's defaults (``max_grad_norm
    =1.0``, which clips these gradients) ``optax.lamb(0.01,
    weight_decay=0.01)`` is 21% away.

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1) (timm's ``betas[0]``).
        b2: decay of the second moment, in [0, 1) (timm's ``betas[1]``).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: L2 coefficient added to the step before the trust ratio (>= 0).
        bias_correction: divide the moments by :math:`1 - \\beta^t`.
        grad_averaging: weigh the gradient by :math:`1 - \\beta_1` in the first moment.
        max_grad_norm: the global gradient norm above which every gradient is
            scaled down (> 0), or None; one number for every group (timm reads
            it from the defaults only), not a schedule.
        trust_clip: clip the trust ratio at 1 (LAMBC).
        always_adapt: apply the trust ratio to leaves without weight decay too.
        state_dtype: dtype of the moments (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.lamb(0.1, weight_decay=0.0, always_adapt=True)
        >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
        >>> grads = {"w": jnp.array([30.0, 0.0]), "b": jnp.array([40.0])}  # global norm 50
        >>> updates, state = opt.update(grads, opt.init(params), params)
        >>> # w moves by lr times its norm (5), b (norm 0) by lr
        >>> optax.apply_updates(params, updates)
        {'b': Array([-0.1], dtype=float32), 'w': Array([2.5, 4. ], dtype=float32)}

    References:
        timm.optim.Lamb (timm 1.0), after NVIDIA's FusedLAMB; You et al.,
        "Large Batch Optimization for Deep Learning: Training BERT in 76
        minutes", ICLR 2020.
    """

    reference: ClassVar[str] = "timm.optim.Lamb"
    State = LambState
    elementwise = False  # the trust ratio takes whole-leaf norms

    lr: Hyper = field(HYPER, 1e-3, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.999, check=UNIT)
    eps: Hyper = field(HYPER, 1e-6, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.01, check=NONNEG)
    bias_correction: bool = field(BOOL, True)
    grad_averaging: bool = field(BOOL, True)
    max_grad_norm: float | None = field(MAYBE_FLOAT, 1.0, check=NONNEG)
    trust_clip: bool = field(BOOL, False)
    always_adapt: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def _validate(self) -> None:
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"lamb: max_grad_norm must be > 0 or None, got {self.max_grad_norm}")

    def buffers(self) -> tuple[str, ...]:
        return ("mu", "nu")

    def needs_params(self) -> str:
        return "when always_adapt is True (the trust ratio)" if self.always_adapt else ""

    def global_scalars(self, grads):
        if self.max_grad_norm is None:
            return {}
        total = global_norm([jnp.asarray(g) for g in grads])
        return {"clip": jnp.maximum(total / self.max_grad_norm, 1.0)}

    def scalars(self, hp, count):
        t = as_float(count) + 1
        one = jnp.ones_like(t)
        return hp | {
            "-lr": -hp["lr"],
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            "bc1": 1 - hp["b1"] ** t if self.bias_correction else one,
            "bc2_sqrt": jnp.sqrt(1 - hp["b2"] ** t) if self.bias_correction else one,
            # timm adapts the leaves of a group whose weight decay is not 0.
            "adapt": (hp["weight_decay"] != 0) | self.always_adapt,
        }

    def kernel(self, p, g, bufs, s, keep):
        if "clip" in s:
            g = g / s["clip"]
        if self.grad_averaging:
            mu = torch_lerp(bufs["mu"], g, s["1-b1"])
        else:
            mu = s["b1"] * bufs["mu"] + g
        mu = keep("mu", mu)
        # (1 - b2) * g first, as torch's addcmul_.
        nu = keep("nu", s["b2"] * bufs["nu"] + (s["1-b2"] * g) * g)
        update = (mu / s["bc1"]) / (jnp.sqrt(nu) / s["bc2_sqrt"] + s["eps"])
        if p is not None:
            update = update + s["weight_decay"] * p
            w_norm, u_norm = norm(p), norm(update)
            ratio = guarded(w_norm / u_norm, w_norm, u_norm)
            if self.trust_clip:
                ratio = jnp.minimum(ratio, 1.0)
            update = update * jnp.where(s["adapt"], ratio, 1.0)
        return s["-lr"] * update, {"mu": mu, "nu": nu}
