"""Primitive schedules: each is a closed form of one reference scheduler.

Every primitive's value past its horizon is stated in its docstring; where the
reference library does something else there (transformers' cosine rises
again, torch's CosineAnnealingLR is periodic), the difference is written down.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _base as B
from ._base import Schedule, as_float, field, schedule_type
from ._numerics import (
    blend,
    cos_fractions,
    div,
    floor_div,
    pow_unless_one,
    power,
    times,
)

__all__ = [
    "constant",
    "cosine",
    "exponential",
    "from_fn",
    "linear",
    "multistep",
    "piecewise",
    "polynomial",
    "step_decay",
]


def _fractions(t: jax.Array, steps: float) -> tuple[jax.Array, jax.Array]:
    """``(steps - t) / steps`` and ``t / steps`` for t clipped to [0, steps].

    Each is exact at both ends (the first is exactly 0 at ``t >= steps``), and
    `steps` is a Python float, so a step count past int32 is no constant overflow.
    """
    steps = float(steps)
    t = jnp.clip(t, 0, steps)
    return div(steps - t, steps), div(t, steps)


@schedule_type
class constant(Schedule):
    """A constant value.

    Args:
        value: the value at every step.

    Example:
        >>> from cadence import schedules as S
        >>> float(S.constant(0.1)(1000))
        0.1...
    """

    value: float = field(B.LEAF)

    def __post_init__(self) -> None:
        B.check_leaf(self, "value")

    def _value(self, t: jax.Array) -> jax.Array:
        return jnp.broadcast_to(as_float(self.value), t.shape)


@schedule_type
class linear(Schedule):
    """Linear from `init` to `end` over `steps`, then `end`.

    .. math:: v(t) = end + (init - end) \\frac{steps - \\min(t, steps)}{steps}

    Matches torch's LinearLR (``linear(lr * start_factor, lr * end_factor,
    total_iters)``) and the decay of transformers' linear schedule. The value at
    ``t >= steps`` is exactly `end`.

    Args:
        init: value at step 0.
        end: value from `steps` on.
        steps: length of the ramp, > 0.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.linear(1.0, 0.0, 4)
        >>> [float(s(t)) for t in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """

    init: float = field(B.LEAF)
    end: float = field(B.LEAF)
    steps: int = field(B.INT)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_leaf(self, "end")
        B.check_int(self, "steps", minimum=1)

    def _value(self, t: jax.Array) -> jax.Array:
        return blend(self.init, self.end, *_fractions(t, self.steps))


@schedule_type
class cosine(Schedule):
    """Cosine annealing from `init` to `end` over `steps`, then `end`.

    .. math::
        v(t) = end + (init - end) \\cdot \\tfrac12
               \\left(1 + \\cos\\left(2\\pi \\cdot cycles \\cdot (t/steps)^k\\right)\\right)

    With the defaults this is torch's CosineAnnealingLR (``T_max = steps``,
    ``eta_min = end``) and transformers' cosine decay (``cycles`` is
    ``num_cycles``). ``k`` is k-decay (timm's ``k_decay``; pytorch-accelerated's
    ``k_decay``): the phase is ``t**k / steps**k``.

    Differences past the horizon: torch's CosineAnnealingLR is periodic past
    ``T_max`` and transformers' cosine rises again past ``num_training_steps``;
    this schedule holds `end` for ``t > steps``.

    Args:
        init: value at step 0.
        steps: length of the decay, > 0 (may be fractional, as a cycle of
            `restarts` can be).
        end: value from `steps` on.
        cycles: number of cosine periods over `steps`; 0.5 is a half cosine.
        k: k-decay exponent, > 0; 1 is the plain cosine.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.cosine(1.0, 10, end=0.1)
        >>> float(s(0)), round(float(s(5)), 6), float(s(10)), float(s(50))
        (1.0, 0.55, 0.1, 0.1)
    """

    init: float = field(B.LEAF)
    steps: float = field(B.NUMBER)
    end: float = field(B.LEAF, 0.0)
    cycles: float = field(B.LEAF, 0.5)
    k: float = field(B.LEAF, 1.0)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_number(self, "steps")
        B.check_leaf(self, "end")
        B.check_leaf(self, "cycles", positive=True)
        B.check_leaf(self, "k", positive=True)

    def _value(self, t: jax.Array) -> jax.Array:
        return cosine_at(self, t, float(self.steps))


def cosine_at(c: cosine, t: jax.Array, steps: ArrayLike) -> jax.Array:
    """`c` stretched to `steps` (an array or a float), at `t` in those steps.

    ``cosine_at(c, t, c.steps)`` is ``c(t)``. `restarts` plays a cosine on
    each cycle's own length this way: the phase ``t / length`` is then exact,
    where stretching the step first (``t * steps / length``) rounds it and
    costs the small values near a cycle's end their relative precision.
    """
    steps = as_float(steps)
    tc = jnp.clip(t, 0, steps)
    if isinstance(c.k, float) and c.k == 1.0:
        fractions = cos_fractions(tc, steps, c.cycles)
    else:
        # k-decay's phase (t / T)**k, as a ratio (T**k overflows for large k),
        # and its complement 1 - (t / T)**k = -expm1(k * log1p(-(T - t) / T))
        # without the cancellation that would cost the values near the end
        # their relative precision.
        k = as_float(c.k)
        phase = pow_unless_one(div(tc, steps), k)
        # At t = 0 the log is -inf: keep it out of the gradient (NaN under where).
        started = tc > 0
        log_phase = jnp.log1p(-div(steps - jnp.where(started, tc, steps), steps))
        rest = jnp.where(started, -jnp.expm1(k * log_phase), 1.0)
        fractions = cos_fractions(phase, 1.0, c.cycles, rest)
    value = blend(c.init, c.end, *fractions)
    return jnp.where(t > steps, as_float(c.end), value)


@schedule_type
class polynomial(Schedule):
    """Polynomial decay from `init` to `end` over `steps`, then `end`.

    .. math:: v(t) = end + (init - end) \\left(\\frac{steps - t}{steps}\\right)^{power}

    transformers' polynomial decay (``lr_end = end``) and torch's PolynomialLR
    (``end = 0``, ``total_iters = steps``).

    Args:
        init: value at step 0.
        steps: length of the decay, > 0.
        end: value from `steps` on.
        power: exponent, > 0 (1 is linear).

    Example:
        >>> from cadence import schedules as S
        >>> s = S.polynomial(1.0, 4, power=2.0)
        >>> [float(s(t)) for t in range(5)]
        [1.0, 0.5625, 0.25, 0.0625, 0.0]
    """

    init: float = field(B.LEAF)
    steps: int = field(B.INT)
    end: float = field(B.LEAF, 0.0)
    power: float = field(B.LEAF, 1.0)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_int(self, "steps", minimum=1)
        B.check_leaf(self, "end")
        B.check_leaf(self, "power", positive=True)

    def _value(self, t: jax.Array) -> jax.Array:
        init, end = as_float(self.init), as_float(self.end)
        remaining, _ = _fractions(t, self.steps)
        return end + (init - end) * pow_unless_one(remaining, self.power)


@schedule_type
class exponential(Schedule):
    """Exponential decay (or growth) ``init * rate ** (t / every)``, bounded by `end`.

    torch's ExponentialLR is ``exponential(lr, gamma)``. With ``staircase=True``
    the exponent is ``floor(t / every)``. `end`, if given, is a floor when
    ``rate < 1`` and a ceiling when ``rate > 1``.

    Args:
        init: value at step 0.
        rate: factor per `every` steps, > 0.
        every: steps per factor of `rate`, >= 1.
        staircase: decay in whole multiples of `every`.
        end: optional floor (decay) or ceiling (growth).

    Example:
        >>> from cadence import schedules as S
        >>> s = S.exponential(1.0, 0.5, every=2, end=0.2)
        >>> [round(float(s(t)), 4) for t in (0, 1, 2, 4, 6)]
        [1.0, 0.7071, 0.5, 0.25, 0.2]
    """

    init: float = field(B.LEAF)
    rate: float = field(B.LEAF)
    every: int = field(B.INT, 1)
    staircase: bool = field(B.BOOL, False)
    end: float | None = field(B.OPT_LEAF, None)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_leaf(self, "rate", positive=True)
        B.check_int(self, "every", minimum=1)
        B.check_bool(self, "staircase")
        B.check_leaf(self, "end", optional=True)

    def _value(self, t: jax.Array) -> jax.Array:
        t = jnp.maximum(t, 0)
        e = floor_div(t, self.every) if self.staircase else div(t, self.every)
        value = times(self.init, power(self.rate, e))
        if self.end is None:
            return value
        end, rate = as_float(self.end), as_float(self.rate)
        return jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))


@schedule_type
class step_decay(Schedule):
    """``init * gamma ** floor(t / every)``: torch's StepLR.

    Args:
        init: value at step 0.
        every: steps between decays (torch's ``step_size``), >= 1.
        gamma: factor per decay.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.step_decay(1.0, 2, 0.5)
        >>> [float(s(t)) for t in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    init: float = field(B.LEAF)
    every: int = field(B.INT)
    gamma: float = field(B.LEAF)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_int(self, "every", minimum=1)
        B.check_leaf(self, "gamma", nonnegative=True)

    def _value(self, t: jax.Array) -> jax.Array:
        n = floor_div(jnp.maximum(t, 0), self.every)
        return times(self.init, power(self.gamma, n))


@schedule_type
class multistep(Schedule):
    """``init * gamma ** (number of milestones <= t)``: torch's MultiStepLR.

    A milestone listed twice counts twice and the order of the milestones does
    not matter (they are stored sorted), as in torch.

    Args:
        init: value at step 0.
        milestones: steps (>= 0) at which to multiply by `gamma`, in any order.
        gamma: factor per milestone.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.multistep(1.0, (2, 4), 0.1)
        >>> [round(float(s(t)), 4) for t in range(6)]
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    """

    init: float = field(B.LEAF)
    milestones: tuple[int, ...] = field(B.INTS)
    gamma: float = field(B.LEAF)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        # torch counts milestones in a Counter: their order does not matter.
        B.check_ints(self, "milestones", strictly_increasing=False, sort=True)
        B.check_leaf(self, "gamma", nonnegative=True)

    def _value(self, t: jax.Array) -> jax.Array:
        if not self.milestones:
            return jnp.broadcast_to(as_float(self.init), t.shape)
        n = jnp.searchsorted(as_float(self.milestones), t, side="right")
        return as_float(self.init) * power(self.gamma, as_float(n))


@schedule_type
class piecewise(Schedule):
    """Piecewise constant: ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    Values are absolute (optax's piecewise_constant_schedule multiplies scales).

    Args:
        boundaries: strictly increasing steps (>= 0).
        values: ``len(boundaries) + 1`` values.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.piecewise((2, 4), (1.0, 0.5, 0.1))
        >>> [float(s(t)) for t in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.1]
    """

    boundaries: tuple[int, ...] = field(B.INTS)
    values: tuple[float, ...] = field(B.LEAVES)

    def __post_init__(self) -> None:
        B.check_ints(self, "boundaries", strictly_increasing=True)
        B.check_leaves(self, "values")
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                "piecewise: values must have len(boundaries) + 1 = "
                f"{len(self.boundaries) + 1} entries, got {len(self.values)}"
            )

    def _value(self, t: jax.Array) -> jax.Array:
        values = jnp.stack([as_float(v) for v in self.values])
        if not self.boundaries:
            return jnp.broadcast_to(values[0], t.shape)
        i = jnp.searchsorted(as_float(self.boundaries), t, side="right")
        return values[i]


@schedule_type
class from_fn(Schedule):
    """Any jnp function of the step: torch's LambdaLR (absolute values, not factors).

    `fn` receives the step as a float array and must use jnp only. A `from_fn`
    schedule works everywhere except `to_config` (a function has no config).

    Args:
        fn: ``step -> value``.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.from_fn(lambda t: 0.1 * 0.95 ** (t // 10))
        >>> round(float(s(25)), 6)
        0.09025
    """

    fn: Callable[[jax.Array], jax.Array] = field(B.FUNCTION)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"from_fn: fn must be callable, got {self.fn!r}")
        if isinstance(self.fn, Schedule):
            raise TypeError("from_fn: fn is already a Schedule; use it directly")

    def _value(self, t: jax.Array) -> jax.Array:
        return jnp.broadcast_to(as_float(self.fn(t)), t.shape)
