"""Primitive schedules: each is a closed form of one reference scheduler.

Every primitive's value past its horizon is stated in its docstring; where the
reference library does something else there (transformers' cosine rises
again, torch's CosineAnnealingLR is periodic), the difference is written down.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import _base as B
from ._base import Schedule, as_float, field, float_dtype, schedule_type
from ._numerics import cos_fraction, div, floor_div, pow_unless_one, power, safe_sqrt

__all__ = [
    "constant",
    "cosine",
    "cyclic",
    "exponential",
    "from_fn",
    "inverse_sqrt",
    "linear",
    "multistep",
    "noam",
    "one_cycle",
    "piecewise",
    "polynomial",
    "step_decay",
    "wsd",
]


def _remaining(t: jax.Array, steps: float) -> jax.Array:
    """``(steps - t) / steps`` clipped to [0, 1]: exactly 0 at ``t >= steps``."""
    t = jnp.clip(t, 0, steps)
    return div(steps - t, steps)


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
        init, end = as_float(self.init), as_float(self.end)
        return end + (init - end) * _remaining(t, self.steps)


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
        init, end = as_float(self.init), as_float(self.end)
        tc = jnp.clip(t, 0, self.steps)
        num = pow_unless_one(tc, self.k)
        den = pow_unless_one(as_float(self.steps), self.k)
        value = end + (init - end) * cos_fraction(num, den, self.cycles)
        return jnp.where(t > self.steps, end, value)


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
        return end + (init - end) * pow_unless_one(_remaining(t, self.steps), self.power)


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
        value = as_float(self.init) * power(self.rate, e)
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
        return as_float(self.init) * power(self.gamma, n)


@schedule_type
class multistep(Schedule):
    """``init * gamma ** (number of milestones <= t)``: torch's MultiStepLR.

    A milestone listed twice counts twice, as in torch.

    Args:
        init: value at step 0.
        milestones: sorted steps (>= 0) at which to multiply by `gamma`.
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
        B.check_ints(self, "milestones", strictly_increasing=False)
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
class inverse_sqrt(Schedule):
    """``init / sqrt((t + timescale) / timescale)``: transformers' inverse_sqrt decay.

    ``S.warmup(S.inverse_sqrt(peak, timescale), W)`` is transformers'
    ``get_inverse_sqrt_schedule(num_warmup_steps=W, timescale=timescale)``.

    Args:
        init: value at step 0.
        timescale: steps over which the value falls by ``1/sqrt(2)``, > 0.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.inverse_sqrt(1.0, 10)
        >>> round(float(s(30)), 6)
        0.5
    """

    init: float = field(B.LEAF)
    timescale: float = field(B.NUMBER)

    def __post_init__(self) -> None:
        B.check_leaf(self, "init")
        B.check_number(self, "timescale")

    def _value(self, t: jax.Array) -> jax.Array:
        t = jnp.maximum(t, 0)
        return as_float(self.init) * jax.lax.rsqrt(div(t + self.timescale, self.timescale))


@schedule_type
class noam(Schedule):
    """The Transformer paper's rule ``d_model**-0.5 * min(n**-0.5, n * warmup**-1.5)``.

    The paper counts steps from 1, so update ``t`` (from 0) uses ``n = t + 1``;
    the peak ``(d_model * warmup)**-0.5`` is reached at ``t = warmup - 1``.
    Multiply by a number for the usual ``factor``: ``2.0 * S.noam(512, 4000)``.

    Args:
        d_model: model width, >= 1.
        warmup: warmup steps, >= 1.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.noam(512, 4000)
        >>> round(float(s(3999)) * (512 * 4000) ** 0.5, 6)
        1.0
    """

    d_model: int = field(B.INT)
    warmup: int = field(B.INT)

    def __post_init__(self) -> None:
        B.check_int(self, "d_model", minimum=1)
        B.check_int(self, "warmup", minimum=1)

    def _value(self, t: jax.Array) -> jax.Array:
        n = jnp.maximum(t, 0) + 1
        scale = self.d_model**-0.5
        rising = as_float(scale * self.warmup**-1.5) * n
        falling = as_float(scale) * jax.lax.rsqrt(n)
        return jnp.minimum(rising, falling)


_ANNEALS = ("cos", "linear")


@schedule_type
class one_cycle(Schedule):
    """The 1cycle policy: torch's OneCycleLR, including ``three_phase``.

    Starts at ``peak / div_factor``, rises to `peak` by step
    ``pct_start * steps - 1``, then falls to ``peak / div_factor /
    final_div_factor`` at step ``steps - 1`` (three-phase: back to the start
    value at ``2 * pct_start * steps - 2`` first). These are torch's float
    phase ends (optax's onecycle ends each phase one step later).

    With ``anneal="linear"`` in float64, the value repeats torch's own
    arithmetic, so its last value carries torch's rounding (about 1e-11
    relative); in float32 it is the closest float32 to torch's value.

    Past the horizon: torch accepts one extra step (``last_epoch == steps``)
    and extrapolates the last phase there; this schedule holds the final value
    from ``steps - 1`` on.

    Args:
        peak: the maximum (torch's ``max_lr``).
        steps: total steps (torch's ``total_steps``), >= 2.
        pct_start: fraction of steps spent rising.
        div_factor: ``peak / initial``.
        final_div_factor: ``initial / final``.
        anneal: ``"cos"`` or ``"linear"`` (torch's ``anneal_strategy``).
        three_phase: rise, fall back to the start value, then anneal.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.one_cycle(1.0, 100)
        >>> float(s(0)), float(s(29)), float(s(99))
        (0.04, 1.0, 4e-06)
    """

    peak: float = field(B.LEAF)
    steps: int = field(B.INT)
    pct_start: float = field(B.NUMBER, 0.3)
    div_factor: float = field(B.LEAF, 25.0)
    final_div_factor: float = field(B.LEAF, 1e4)
    anneal: str = field(B.STR, "cos")
    three_phase: bool = field(B.BOOL, False)

    def __post_init__(self) -> None:
        B.check_leaf(self, "peak")
        B.check_int(self, "steps", minimum=2)
        B.check_number(self, "pct_start")
        B.set_field(self, "pct_start", float(self.pct_start))
        B.check_leaf(self, "div_factor", positive=True)
        B.check_leaf(self, "final_div_factor", positive=True)
        B.check_choice(self, "anneal", _ANNEALS)
        B.check_bool(self, "three_phase")
        ends = [0.0, *self._phase_ends()]
        if not self.pct_start < 1 or any(b <= a for a, b in itertools.pairwise(ends)):
            raise ValueError(
                f"one_cycle: pct_start={self.pct_start} with steps={self.steps} "
                f"gives empty or reversed phases (phase ends {ends[1:]})"
            )

    def _phase_ends(self) -> list[float]:
        # torch's float phase ends.
        up = self.pct_start * self.steps - 1
        if self.three_phase:
            return [up, 2 * self.pct_start * self.steps - 2, self.steps - 1.0]
        return [up, self.steps - 1.0]

    def _value(self, t: jax.Array) -> jax.Array:
        peak = as_float(self.peak)
        initial = peak / as_float(self.div_factor)
        final = initial / as_float(self.final_div_factor)
        levels = (
            [initial, peak, initial, final]
            if self.three_phase
            else [
                initial,
                peak,
                final,
            ]
        )
        ends = self._phase_ends()
        t = jnp.clip(t, 0, ends[-1])
        value = None
        start = 0.0
        # A static unroll over the two or three phases: phase i is used for
        # t in (end of phase i-1, end of phase i], as in torch.
        for i, end_step in enumerate(ends):
            a, b = levels[i], levels[i + 1]
            num, den = t - start, end_step - start
            if self.anneal == "cos":
                piece = b + (a - b) * cos_fraction(num, den)
            elif float_dtype() == jnp.float64:
                # The target is torch's float64 value. In float64 we can repeat
                # torch's own `(end - start) * pct + start`, rounding and all
                # (at pct = 1 it is ~1e-11 off `end`); in float32 that form
                # would lose the small end value to cancellation, so there we
                # compute the value's closest float32 from the remaining part.
                piece = a + (b - a) * div(num, den)
            else:
                piece = b + (a - b) * div(den - num, den)
            value = piece if value is None else jnp.where(t > start, piece, value)
            start = end_step
        return value


_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


@schedule_type
class cyclic(Schedule):
    """Cyclical learning rate: torch's CyclicLR in its three modes.

    Each cycle rises from `base` to `peak` over `up` steps and falls back over
    `down` steps. The amplitude is scaled by 1 (``"triangular"``), by
    ``2 ** -(cycle - 1)`` (``"triangular2"``), or by ``gamma ** t``
    (``"exp_range"``).

    Args:
        base: the floor (torch's ``base_lr``).
        peak: the top of the first cycle (torch's ``max_lr``).
        up: steps rising (torch's ``step_size_up``), > 0.
        down: steps falling (``step_size_down``); defaults to `up`.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: the per-step factor of ``"exp_range"``.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.cyclic(0.0, 1.0, 2)
        >>> [float(s(t)) for t in range(6)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.5]
    """

    base: float = field(B.LEAF)
    peak: float = field(B.LEAF)
    up: float = field(B.NUMBER)
    down: float | None = field(B.NUMBER, None)
    mode: str = field(B.STR, "triangular")
    gamma: float = field(B.LEAF, 1.0)

    def __post_init__(self) -> None:
        B.check_leaf(self, "base")
        B.check_leaf(self, "peak")
        B.check_number(self, "up")
        if self.down is None:
            B.set_field(self, "down", self.up)
        B.check_number(self, "down")
        B.check_choice(self, "mode", _CYCLIC_MODES)
        B.check_leaf(self, "gamma", positive=True)

    def _value(self, t: jax.Array) -> jax.Array:
        t = jnp.maximum(t, 0)
        total = self.up + self.down
        local = jnp.mod(t, total)
        # torch's x <= r and (x - 1) / (r - 1), in forms exact for integer steps.
        scale = jnp.where(local <= self.up, div(local, self.up), div(total - local, self.down))
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            cycle = floor_div(t, total)
            amplitude = power(0.5, cycle)
        else:
            amplitude = power(self.gamma, t)
        base, peak = as_float(self.base), as_float(self.peak)
        return base + (peak - base) * scale * amplitude


_WSD_SHAPES = ("linear", "cosine", "1-sqrt")


@schedule_type
class wsd(Schedule):
    """Warmup-stable-decay: transformers' ``get_wsd_schedule``.

    Warms up from `end` to `peak` over `warmup` steps (shape `warmup_shape`),
    holds `peak` for `stable` steps, decays to `end` over `decay` steps (shape
    `shape`), then holds `end`. transformers' ``min_lr_ratio`` is
    ``end / peak``.

    Args:
        peak: the stable value.
        warmup: warmup steps, >= 0.
        stable: stable steps, >= 0.
        decay: decay steps, >= 0.
        end: the floor the warmup starts from and the decay ends at.
        shape: decay shape, ``"linear"``, ``"cosine"`` or ``"1-sqrt"``.
        warmup_shape: warmup shape, same choices.
        cycles: transformers' ``num_cycles`` for the cosine decay.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.wsd(1.0, warmup=2, stable=2, decay=2)
        >>> [float(s(t)) for t in range(7)]
        [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]
    """

    peak: float = field(B.LEAF)
    warmup: int = field(B.INT)
    stable: int = field(B.INT)
    decay: int = field(B.INT)
    end: float = field(B.LEAF, 0.0)
    shape: str = field(B.STR, "linear")
    warmup_shape: str = field(B.STR, "linear")
    cycles: float = field(B.LEAF, 0.5)

    def __post_init__(self) -> None:
        B.check_leaf(self, "peak")
        B.check_int(self, "warmup")
        B.check_int(self, "stable")
        B.check_int(self, "decay")
        B.check_leaf(self, "end")
        B.check_choice(self, "shape", _WSD_SHAPES)
        B.check_choice(self, "warmup_shape", _WSD_SHAPES)
        B.check_leaf(self, "cycles", positive=True)

    def _value(self, t: jax.Array) -> jax.Array:
        peak, end = as_float(self.peak), as_float(self.end)
        w, s, d = self.warmup, self.stable, self.decay
        t = jnp.maximum(t, 0)
        # Warmup factor, written in terms of the remaining fraction (w - t) / w.
        left = jnp.clip(w - t, 0, max(w, 1))
        wd = max(w, 1)
        if self.warmup_shape == "linear":
            up = div(wd - left, wd)
        elif self.warmup_shape == "cosine":
            up = cos_fraction(left, wd)
        else:  # 1 - sqrt(1 - p) = p / (1 + sqrt(1 - p))
            up = div(wd - left, wd) / (1 + safe_sqrt(div(left, wd)))
        local = jnp.clip(t - w - s, 0, max(d, 1))
        dd = max(d, 1)
        if self.shape == "linear":
            down = div(dd - local, dd)
        elif self.shape == "cosine":
            down = cos_fraction(local, dd, self.cycles)
        else:  # 1 - sqrt(p) = (1 - p) / (1 + sqrt(p))
            down = div(dd - local, dd) / (1 + safe_sqrt(div(local, dd)))
        value = jnp.where(t < w, end + (peak - end) * up, peak)
        value = jnp.where(t >= w + s, end + (peak - end) * down, value)
        return jnp.where(t >= w + s + d, end, value)


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
