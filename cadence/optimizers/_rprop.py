"""Rprop: torch.optim.Rprop, resilient backpropagation with per-element step sizes."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import DTYPE, GROUPS, HYPER, NONNEG, field, transformation_type
from ._optimizer import Optimizer

__all__ = ["RpropState", "rprop"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


def _number(x: Any) -> float | None:
    """`x` as a float when it is a plain number (not a schedule, a tracer or a bool)."""
    return float(x) if isinstance(x, numbers.Real) and not isinstance(x, bool) else None


class RpropState(NamedTuple):
    """`rprop` state: torch's ``prev`` (the last gradient used) and per-element ``step_size``."""

    count: jax.Array
    prev: Any
    step_size: Any
    hyperparams: dict[str, Any]


@transformation_type
class rprop(Optimizer):
    """Resilient backpropagation: torch.optim.Rprop.

    .. math::
        s_t &= \\mathrm{sign}(g_t\\, g'_{t-1}), \\quad
        \\Delta_t = \\mathrm{clip}\\big(\\Delta_{t-1} \\cdot
            \\{\\eta_+ \\text{ if } s_t > 0;\\ \\eta_- \\text{ if } s_t < 0;\\ 1\\},\\
            \\Delta_{\\min}, \\Delta_{\\max}\\big) \\\\
        g'_t &= 0 \\text{ where } s_t < 0, \\ g_t \\text{ elsewhere}, \\quad
        p_t = p_{t-1} - \\Delta_t\\, \\mathrm{sign}(g'_t), \\quad \\Delta_0 = \\text{lr}

    A sign change shrinks the element's step and skips it for this update
    (the zeroed gradient is what the next update compares with). torch's
    ``etas=(eta_minus, eta_plus)`` and ``step_sizes=(min_step, max_step)``
    are split into four arguments.

    `lr` is only the initial step size, read at `init` (as torch reads it
    when it creates the state at the first step): a schedule on lr has no
    effect after that, which is torch's behaviour under an lr scheduler too
    (the step sizes adapt on their own). `hyperparams` still reports the
    scheduled value.

    ``optax.rprop`` (0.2.8) applies each update one step late (the step it
    computes is stored and applied at the next call; its first update is 0),
    and leaves a step size unclamped where the sign product is 0: from the
    same start at lr 0.01 in float64, it has not moved after one update where
    torch moved every element by 0.01, and after 20 updates on random
    gradients it is 1.3% of the largest parameter away from torch.

    Args:
        lr: initial step size of every element (>= 0).
        eta_minus: step factor on a sign change, in (0, 1).
        eta_plus: step factor when the sign holds, > 1.
        min_step: smallest step size (>= 0).
        max_step: largest step size (>= min_step).
        state_dtype: dtype of ``prev`` and ``step_size`` (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.rprop(0.1)
        >>> params = jnp.array([1.0, 1.0])
        >>> state = opt.init(params)
        >>> for g in ([1.0, 1.0], [1.0, -1.0], [1.0, -1.0]):
        ...     updates, state = opt.update(jnp.array(g), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params, state.step_size.round(4)
        (Array([0.636, 0.95 ], dtype=float32), Array([0.144, 0.05 ], dtype=float32))

    References:
        torch.optim.Rprop (PyTorch 2.x); Riedmiller & Braun, "A Direct
        Adaptive Method for Faster Backpropagation Learning: The RPROP
        Algorithm", 1993.
    """

    reference: ClassVar[str] = "torch.optim.Rprop"
    State = RpropState
    _decay = ()

    lr: Hyper = field(HYPER, 1e-2, check=NONNEG)
    eta_minus: Hyper = field(HYPER, 0.5)
    eta_plus: Hyper = field(HYPER, 1.2)
    min_step: Hyper = field(HYPER, 1e-6, check=NONNEG)
    max_step: Hyper = field(HYPER, 50.0, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def _validate(self) -> None:
        # torch checks 0 < eta_minus < 1 < eta_plus; step_sizes it leaves unchecked.
        # Runs before the groups are built: their values are as the user gave them.
        names = ("eta_minus", "eta_plus", "min_step", "max_step")
        settings = [{n: getattr(self, n) for n in names}]
        if isinstance(self.groups, Mapping):
            settings += [
                settings[0] | dict(g) for g in self.groups.values() if isinstance(g, Mapping)
            ]
        for values in settings:
            minus, plus, low, high = (_number(values.get(n)) for n in names)
            if minus is not None and not 0 < minus < 1:
                raise ValueError(f"rprop: eta_minus must be in (0, 1), got {minus!r}")
            if plus is not None and not plus > 1:
                raise ValueError(f"rprop: eta_plus must be > 1, got {plus!r}")
            if low is not None and high is not None and high < low:
                raise ValueError(
                    f"rprop: max_step must be >= min_step, got max_step={high!r} < min_step={low!r}"
                )

    def buffers(self) -> tuple[str, ...]:
        return ("prev", "step_size")

    def init_buffer(self, name, shape, dtype, hp):
        if name == "step_size":
            return jnp.full(shape, hp["lr"], dtype)
        return jnp.zeros(shape, dtype)

    def kernel(self, p, g, bufs, s, keep):
        sign = jnp.sign(g * bufs["prev"])
        # torch overwrites sign > 0 with eta_plus, sign < 0 with eta_minus and
        # 0 with 1 (a NaN stays NaN).
        factor = jnp.where(sign == 0, 1.0, sign)
        factor = jnp.where(sign < 0, s["eta_minus"], factor)
        factor = jnp.where(sign > 0, s["eta_plus"], factor)
        step = jnp.minimum(jnp.maximum(bufs["step_size"] * factor, s["min_step"]), s["max_step"])
        step = keep("step_size", step)
        g = keep("prev", jnp.where(sign < 0, 0.0, g))
        return -(jnp.sign(g) * step), {"prev": g, "step_size": step}
