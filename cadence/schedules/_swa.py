"""`swa`: torch's SWALR, the learning rate of stochastic weight averaging."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _base as B
from ._base import Schedule, as_float, field, schedule_type
from ._numerics import blend, cos_fractions, div

__all__ = ["swa"]

_ANNEALS = ("cos", "linear")


@schedule_type
class swa(Schedule):
    """Anneal from `init` to `swa_lr` over `steps`, then hold `swa_lr`: torch's SWALR.

    .. math::
        v(t) = swa\\_lr \\cdot a(\\min(t / steps, 1)) + init \\cdot (1 - a(\\min(t / steps, 1)))

    with ``a(x) = (1 - cos(pi x)) / 2`` (``anneal="cos"``) or ``a(x) = x``
    (``"linear"``). torch's ``SWALR(optimizer, swa_lr, anneal_epochs,
    anneal_strategy)`` anneals from the lr the optimizer has when the
    scheduler is built (`init`); its k-th ``step()`` sets the value at step
    k. With ``steps=0`` torch sets `swa_lr` at construction already: the value
    is `swa_lr` from step 0.

    In torch's SWA recipe another scheduler drives the lr until epoch
    `swa_start` and SWALR takes over from there, annealing from the lr it
    finds: ``S.join([s, S.swa(float(s(n)), swa_lr, steps)], [n])``, with
    `S.per_epoch` for schedulers stepped once per epoch. torch computes each
    value from the previous one (inverting the last blend); this closed form
    is the same function, to float64 rounding.

    Args:
        init: the value at step 0 (the optimizer's lr when SWALR is built).
        swa_lr: the value from `steps` on.
        steps: length of the annealing (torch's ``anneal_epochs``), >= 0.
        anneal: ``"cos"`` or ``"linear"`` (torch's ``anneal_strategy``).

    Example:
        >>> from cadence import schedules as S
        >>> s = S.swa(0.1, 0.05, 4, anneal="linear")
        >>> [round(float(s(t)), 6) for t in range(6)]
        [0.1, 0.0875, 0.075, 0.0625, 0.05, 0.05]
    """

    init: float = field(B.LEAF)
    swa_lr: float = field(B.LEAF)
    steps: int = field(B.INT, 10)
    anneal: str = field(B.STR, "cos")

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_leaf(self, "swa_lr")
        B.check_int(self, "steps", minimum=0)
        B.check_choice(self, "anneal", _ANNEALS)

    def _value(self, t: jax.Array) -> jax.Array:
        if self.steps == 0:
            return jnp.broadcast_to(as_float(self.swa_lr), t.shape)
        steps = float(self.steps)  # a step count of any size, never an int32 constant
        tc = jnp.clip(t, 0, steps)
        if self.anneal == "cos":
            # (1 + cos(pi t / steps)) / 2 and its complement, each to a few ulp.
            kept, moved = cos_fractions(tc, steps)
        else:
            kept, moved = div(steps - tc, steps), div(tc, steps)
        return blend(self.init, self.swa_lr, kept, moved)
