"""Combinators: schedules built from other schedules.

Each holds its children as fields, so a composed schedule is one printable,
comparable, serializable pytree.
"""

from __future__ import annotations

import fractions
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _base as B
from ._base import Schedule, as_float, field, safe_div, schedule_type
from ._numerics import div, floor_div, power, times
from ._primitives import cosine, cosine_at

__all__ = ["clip", "join", "per_epoch", "restarts", "shift", "warmup"]

# Cycles of `restarts` whose starts are tabulated exactly (see `restarts._starts`).
_TABLED_CYCLES = 512


def call_with_points(
    s: Schedule, t: jax.Array, *points: float
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """``s(t)`` and ``s`` at each fixed step in `points`, from one call of `s`.

    A combinator that needs its child at fixed steps too (`warmup`'s target
    ``s(0)``, `restarts`' peak and floor) evaluates the child once on `t`
    with the points appended: separate calls would double the work per
    nesting level, which is exponential in the depth of a nested schedule.
    """
    flat = jnp.concatenate([jnp.ravel(t), jnp.asarray(points, t.dtype)])
    values = s(flat)
    n = flat.size - len(points)
    return values[:n].reshape(jnp.shape(t)), tuple(values[n + i] for i in range(len(points)))


@schedule_type
class join(Schedule):
    """Play schedules one after another: torch's SequentialLR, optax's join_schedules.

    Schedule ``i`` sees ``step - boundaries[i-1]``: at ``step == boundary`` the
    next schedule starts at its own step 0.

    Args:
        schedules: the schedules, in order.
        boundaries: ``len(schedules) - 1`` strictly increasing steps (>= 0).

    Example:
        >>> from cadence import schedules as S
        >>> s = S.join([S.constant(1.0), S.linear(0.5, 0.0, 2)], [2])
        >>> [float(s(t)) for t in range(5)]
        [1.0, 1.0, 0.5, 0.25, 0.0]
    """

    schedules: Sequence[Schedule] = field(B.CHILDREN)
    boundaries: Sequence[int] = field(B.INTS)

    def __post_init__(self) -> None:
        B.check_children(self, "schedules")
        B.check_ints(self, "boundaries", strictly_increasing=True)
        if len(self.boundaries) != len(self.schedules) - 1:
            raise ValueError(
                "join: boundaries must have len(schedules) - 1 = "
                f"{len(self.schedules) - 1} entries, got {len(self.boundaries)}"
            )

    def _value(self, t: jax.Array) -> jax.Array:
        value = self.schedules[0](t)
        for boundary, s in zip(self.boundaries, self.schedules[1:], strict=True):
            boundary = float(boundary)  # any size, never an int32 constant
            # Children never see negative steps, even in the unselected branch.
            value = jnp.where(t >= boundary, s(jnp.maximum(t - boundary, 0)), value)
        return value


@schedule_type
class warmup(Schedule):
    """Linear warmup from `init` to ``s(0)`` over `steps`, then ``s(t - steps)``.

    transformers' warmups start at ``init = 0`` (``k / W`` at step k); timm's at
    ``warmup_lr_init`` (its ``warmup_prefix=True``). ``steps = 0`` is `s` itself.

    Args:
        s: the schedule after warmup.
        steps: warmup steps, >= 0.
        init: value at step 0.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.warmup(S.constant(1.0), 4)
        >>> [float(s(t)) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    s: Schedule = field(B.CHILD)
    steps: int = field(B.INT)
    init: float = field(B.LEAF, 0.0)

    def __post_init__(self) -> None:
        B.check_child(self, "s")
        B.check_int(self, "steps")
        B.check_leaf(self, "init")

    def _value(self, t: jax.Array) -> jax.Array:
        steps = float(self.steps)
        if self.steps == 0:
            return self.s(jnp.maximum(t, 0))
        after, (target,) = call_with_points(self.s, jnp.maximum(t - steps, 0), 0.0)
        init = as_float(self.init)
        ramp = init + (target - init) * div(jnp.maximum(t, 0), steps)
        return jnp.where(t < steps, ramp, after)


@schedule_type
class restarts(Schedule):
    """Warm restarts (SGDR): torch's CosineAnnealingWarmRestarts, timm's cycles.

    Cycle ``i`` lasts ``period * mult**i`` steps (possibly fractional) and plays
    `s` stretched to that length, i.e. ``s(t_local * period / len_i)``. The
    peak ``s(0)`` of cycle ``i`` is scaled by ``decay**i`` while the floor
    ``s(period)`` is not (timm's ``cycle_decay``):

    .. math::
        v = s(x) + (decay^i - 1) \\, s(0) \\frac{s(x) - s(period)}{s(0) - s(period)}

    which is ``decay**i`` times the amplitude when the floor is 0. After `limit`
    cycles the value is ``s(period)``.

    ``restarts(cosine(lr, T0, end=eta_min), T0, mult=T_mult)`` is torch's
    CosineAnnealingWarmRestarts; with ``k``, ``decay`` and ``limit`` it is
    timm's CosineLRScheduler (``cycle_mul``, ``cycle_decay``, ``cycle_limit``).
    The cycle index is computed so that exact restart steps land in the new
    cycle (timm's ``floor(log(...))`` misplaces some by one).

    Args:
        s: the schedule played in each cycle (its value at `period` is the floor).
        period: length of the first cycle, > 0.
        mult: growth of each cycle's length, >= 1.
        decay: factor on the peak per cycle, > 0.
        limit: number of cycles, or None for no limit.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.restarts(S.cosine(1.0, 2), 2, mult=2.0)
        >>> [float(s(t)) for t in range(7)]
        [1.0, 0.5, 1.0, 0.8535..., 0.5, 0.1464..., 1.0]
    """

    s: Schedule = field(B.CHILD)
    period: float = field(B.NUMBER)
    mult: float = field(B.NUMBER, 1.0)
    decay: float = field(B.LEAF, 1.0)
    limit: int | None = field(B.OPT_INT, None)

    def __post_init__(self) -> None:
        B.check_child(self, "s")
        B.check_number(self, "period")
        B.check_number(self, "mult")
        B.set_field(self, "mult", float(self.mult))
        if self.mult < 1:
            raise ValueError(f"restarts: mult must be >= 1, got {self.mult!r}")
        B.check_leaf(self, "decay", positive=True)
        B.check_int(self, "limit", minimum=1, optional=True)

    def _starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and length of the first cycles, computed in float64 on the host.

        A start that is a whole step (e.g. 110 for period 10, mult 10) must be
        exact, or that step lands in the previous cycle; float32 arithmetic on
        device cannot promise that, a table of float64 values can.
        """
        n = _TABLED_CYCLES if self.limit is None else min(self.limit, _TABLED_CYCLES)
        # No cycle starts past 2**52 steps: stop there (and before overflow).
        reach = math.log1p(2.0**52 * (self.mult - 1) / self.period) / math.log(self.mult)
        n = min(n, math.ceil(reach) + 1)
        i = np.arange(n + 1, dtype=np.float64)
        lengths = self.period * self.mult**i
        starts = self.period * (self.mult**i - 1) / (self.mult - 1)
        keep = starts <= 2.0**52
        return starts[keep], lengths[keep]

    def _scale(self) -> int:
        """q such that ``period * q`` is a whole number of steps (1 if none is small).

        transformers' cosine_with_restarts has cycles of ``steps / num_cycles``
        (100 / 3). Counted in steps of 1/q the cycle length is a whole number,
        so cycle starts and the phase in a cycle are exact, where a rounded
        33.333332 costs the values near each cycle's end their precision.
        """
        period = float(self.period)
        if self.mult != 1.0 or period.is_integer():
            return 1
        ratio = fractions.Fraction(period).limit_denominator(4096)
        if abs(float(ratio) - period) > 1e-12 * period or ratio.numerator >= 2**24:
            return 1
        return ratio.denominator

    def _cycle(self, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Cycle index, and the position in and length of the cycle containing `t`.

        The position and length are in steps of ``1 / self._scale()``.
        """
        if self.mult == 1.0:
            q = self._scale()
            length = round(float(self.period) * q) if q > 1 else float(self.period)
            u = t * q  # exact for whole steps below 2**24 / q
            # fmod is exact: the position stays right where i * length, past
            # 2**24, would not be representable.
            local = jnp.mod(u, length)
            i = jnp.round(div(u - local, length))
            return i, local, jnp.full_like(t, length)
        starts, lengths = self._starts()
        i_table = jnp.searchsorted(as_float(starts[:-1]), t, side="right") - 1
        # Past the table (only for mult very close to 1): the closed form,
        # settled by one step either way.
        m, p = self.mult, self.period

        def start(i: jax.Array) -> jax.Array:
            return p * div(power(m, i) - 1, m - 1)

        i_far = jnp.floor(jnp.log1p(div(t * (m - 1), p)) / math.log(m))
        i_far = jnp.where(start(i_far + 1) <= t, i_far + 1, i_far)
        i_far = jnp.where(start(i_far) > t, i_far - 1, i_far)
        tabled = t < starts[-1]
        i = jnp.where(tabled, as_float(i_table), i_far)
        first = jnp.where(tabled, as_float(starts)[i_table], start(i_far))
        length = jnp.where(tabled, as_float(lengths)[i_table], p * power(m, i_far))
        return i, t - first, length

    def _value(self, t: jax.Array) -> jax.Array:
        t = jnp.maximum(t, 0)
        i, local, length = self._cycle(t)
        period = float(self.period)
        if isinstance(self.s, cosine):
            # The cosine on the cycle's own length: an exact phase (see cosine_at).
            inner = cosine_at(self.s, local, length)
            peak, floor = self.s(jnp.asarray([0.0, period], t.dtype))
        else:
            plain = self.mult == 1.0 and self._scale() == 1
            x = local if plain else div(local * period, length)
            inner, (peak, floor) = call_with_points(self.s, x, 0.0, period)
        shape = safe_div(inner - floor, peak - floor)
        extra = times(peak, power(self.decay, i) - 1)
        # A growing peak (decay > 1) overflows at huge steps: keep inf * 0 out.
        value = inner + jnp.where(shape == 0, 0.0, extra * shape)
        if self.limit is not None:
            value = jnp.where(i >= float(self.limit), floor, value)
        return value


@schedule_type
class per_epoch(Schedule):
    """``s(t // steps_per_epoch)``: run a per-epoch schedule from a per-step counter.

    For schedules that PyTorch code steps once per epoch (StepLR, MultiStepLR,
    ...), while cadence counts optimizer updates.

    Args:
        s: the per-epoch schedule.
        steps_per_epoch: updates per epoch, >= 1.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.per_epoch(S.step_decay(1.0, 1, 0.5), 3)
        >>> [float(s(t)) for t in range(7)]
        [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """

    s: Schedule = field(B.CHILD)
    steps_per_epoch: int = field(B.INT)

    def __post_init__(self) -> None:
        B.check_child(self, "s")
        B.check_int(self, "steps_per_epoch", minimum=1)

    def _value(self, t: jax.Array) -> jax.Array:
        return self.s(floor_div(jnp.maximum(t, 0), self.steps_per_epoch))


@schedule_type
class shift(Schedule):
    """``s(t + steps)``: `s` entered `steps` steps in.

    transformers' ``cosine_warmup_with_min_lr`` starts its decay one step in,
    for instance; a run resumed with torch's ``last_epoch`` is another case.

    Args:
        s: the schedule.
        steps: how far in `s` starts, >= 0.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.shift(S.linear(1.0, 0.0, 4), 1)
        >>> [float(s(t)) for t in range(5)]
        [0.75, 0.5, 0.25, 0.0, 0.0]
    """

    s: Schedule = field(B.CHILD)
    steps: int = field(B.INT)

    def __post_init__(self) -> None:
        B.check_child(self, "s")
        B.check_int(self, "steps")

    def _value(self, t: jax.Array) -> jax.Array:
        return self.s(jnp.maximum(t, 0) + float(self.steps))


@schedule_type
class clip(Schedule):
    """`s` clipped to ``[lo, hi]`` (either bound may be None).

    Args:
        s: the schedule.
        lo: lower bound, or None.
        hi: upper bound, or None.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.clip(S.linear(1.0, 0.0, 4), lo=0.3)
        >>> [float(s(t)) for t in range(5)]
        [1.0, 0.75, 0.5, 0.3, 0.3]
    """

    s: Schedule = field(B.CHILD)
    lo: float | None = field(B.OPT_LEAF, None)
    hi: float | None = field(B.OPT_LEAF, None)

    def __post_init__(self) -> None:
        B.check_child(self, "s")
        B.check_leaf(self, "lo", optional=True)
        B.check_leaf(self, "hi", optional=True)
        if self.lo is None and self.hi is None:
            raise ValueError("clip: give lo, hi or both")
        if isinstance(self.lo, float) and isinstance(self.hi, float) and self.lo > self.hi:
            raise ValueError(f"clip: lo must be <= hi, got lo={self.lo}, hi={self.hi}")

    def _value(self, t: jax.Array) -> jax.Array:
        value = self.s(t)
        if self.lo is not None:
            value = jnp.maximum(value, as_float(self.lo))
        if self.hi is not None:
            value = jnp.minimum(value, as_float(self.hi))
        return value
