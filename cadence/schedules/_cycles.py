"""Cyclical schedules: torch's OneCycleLR and CyclicLR, for the lr and for momentum.

torch cycles the optimizer's momentum (SGD's ``momentum``, Adam's ``betas[0]``)
against the learning rate by default (``cycle_momentum=True``): a ported recipe
needs both halves. ``one_cycle_momentum`` and ``cyclic_momentum`` are those
momentum schedules; pass them as ``O.sgd(..., momentum=)`` or ``O.adam(..., b1=)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from . import _base as B
from ._base import Schedule, as_float, field, float_dtype, schedule_type
from ._numerics import blend, cos_fractions, div, floor_div, power, times

__all__ = ["cyclic", "cyclic_momentum", "one_cycle", "one_cycle_momentum"]

_ANNEALS = ("cos", "linear")
_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


# ------------------------------------------------------------------ one cycle


def _phase_ends(steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """torch's float phase ends (``pct_start * steps - 1``, ...)."""
    up = float(pct_start * steps) - 1
    if three_phase:
        return [up, float(2 * pct_start * steps) - 2, steps - 1.0]
    return [up, steps - 1.0]


def _check_phases(owner: str, steps: int, pct_start: float, three_phase: bool) -> None:
    ends = [0.0, *_phase_ends(steps, pct_start, three_phase)]
    if not pct_start < 1 or any(b <= a for a, b in itertools.pairwise(ends)):
        raise ValueError(
            f"{owner}: pct_start={pct_start} with steps={steps} "
            f"gives empty or reversed phases (phase ends {ends[1:]})"
        )


def _anneal_phases(
    t: jax.Array, ends: Sequence[float], levels: Sequence[jax.Array], anneal: str
) -> jax.Array:
    """Phase i goes from ``levels[i]`` to ``levels[i + 1]`` over (end i-1, end i], as torch."""
    # Each fractional phase end is rounded to the float dtype once, and that one
    # value serves both as the phase's end and as the next one's start: at the
    # last step the fraction is then exactly 1 (118.8 rounded in two places
    # left 1e-4 of the start level in the final value).
    bounds = [as_float(e) for e in ends]
    t = jnp.clip(t, 0, bounds[-1])
    value = None
    start = as_float(0.0)
    for i, end in enumerate(bounds):
        a, b = levels[i], levels[i + 1]
        num, den = t - start, end - start
        if anneal == "cos":
            piece = blend(a, b, *cos_fractions(num, den))
        elif float_dtype() == jnp.float64:
            # The target is torch's float64 value: repeat its own
            # `(end - start) * pct + start`, rounding and all (at pct = 1 it is
            # ~1e-11 off `end`).
            piece = a + (b - a) * div(num, den)
        else:
            piece = blend(a, b, div(den - num, den), div(num, den))
        value = piece if value is None else jnp.where(t > start, piece, value)
        start = end
    return value


@schedule_type
class one_cycle(Schedule):
    """The 1cycle policy: torch's OneCycleLR, including ``three_phase``.

    Starts at ``peak / div_factor``, rises to `peak` by step
    ``pct_start * steps - 1``, then falls to ``peak / div_factor /
    final_div_factor`` at step ``steps - 1`` (three-phase: back to the start
    value at ``2 * pct_start * steps - 2`` first). These are torch's float
    phase ends (optax's onecycle ends each phase one step later).

    torch also cycles momentum by default (``cycle_momentum=True``): use
    ``s.momentum()`` (`one_cycle_momentum`) as the optimizer's momentum or b1.

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
        _check_phases("one_cycle", self.steps, self.pct_start, self.three_phase)

    def momentum(self, base: float = 0.85, peak: float = 0.95) -> one_cycle_momentum:
        """The momentum (or Adam b1) torch's OneCycleLR cycles with this lr.

        Example:
            >>> from cadence import schedules as S
            >>> m = S.one_cycle(1.0, 100).momentum()
            >>> m == S.one_cycle_momentum(100, base=0.85, peak=0.95)
            True
        """
        return one_cycle_momentum(
            self.steps, self.pct_start, base, peak, self.anneal, self.three_phase
        )

    def _value(self, t: jax.Array) -> jax.Array:
        peak = as_float(self.peak)
        initial = peak / as_float(self.div_factor)
        final = initial / as_float(self.final_div_factor)
        levels = [initial, peak, initial, final] if self.three_phase else [initial, peak, final]
        ends = _phase_ends(self.steps, self.pct_start, self.three_phase)
        return _anneal_phases(t, ends, levels, self.anneal)


@schedule_type
class one_cycle_momentum(Schedule):
    """The momentum that torch's OneCycleLR cycles (``cycle_momentum=True``).

    It mirrors the lr: from `peak` down to `base` while the lr rises, back up
    to `peak` while it falls (three-phase: `base` -> `peak`, then `peak` held).
    torch writes it into SGD's ``momentum`` or Adam's ``betas[0]``; pass it as
    ``O.sgd(lr, momentum=...)`` or ``O.adam(lr, b1=...)``. The phase arguments
    must be the lr schedule's: ``S.one_cycle(...).momentum()`` copies them.

    Args:
        steps: total steps (torch's ``total_steps``), >= 2.
        pct_start: fraction of steps in the first phase.
        base: the lowest momentum (torch's ``base_momentum``).
        peak: the highest (torch's ``max_momentum``), the value at step 0.
        anneal: ``"cos"`` or ``"linear"`` (torch's ``anneal_strategy``).
        three_phase: torch's ``three_phase``.

    Example:
        >>> from cadence import schedules as S
        >>> m = S.one_cycle_momentum(100)
        >>> round(float(m(0)), 6), round(float(m(29)), 6), round(float(m(99)), 6)
        (0.95, 0.85, 0.95)
    """

    steps: int = field(B.INT)
    pct_start: float = field(B.NUMBER, 0.3)
    base: float = field(B.LEAF, 0.85)
    peak: float = field(B.LEAF, 0.95)
    anneal: str = field(B.STR, "cos")
    three_phase: bool = field(B.BOOL, False)

    def __post_init__(self) -> None:
        B.check_int(self, "steps", minimum=2)
        B.check_number(self, "pct_start")
        B.set_field(self, "pct_start", float(self.pct_start))
        B.check_leaf(self, "base")
        B.check_leaf(self, "peak")
        B.check_choice(self, "anneal", _ANNEALS)
        B.check_bool(self, "three_phase")
        _check_phases("one_cycle_momentum", self.steps, self.pct_start, self.three_phase)

    def _value(self, t: jax.Array) -> jax.Array:
        base, peak = as_float(self.base), as_float(self.peak)
        levels = [peak, base, peak, peak] if self.three_phase else [peak, base, peak]
        ends = _phase_ends(self.steps, self.pct_start, self.three_phase)
        return _anneal_phases(t, ends, levels, self.anneal)


# --------------------------------------------------------------------- cyclic


def _check_cyclic(obj: Schedule) -> None:
    B.check_number(obj, "up")
    if obj.down is None:
        B.set_field(obj, "down", obj.up)
    B.check_number(obj, "down")
    B.check_choice(obj, "mode", _CYCLIC_MODES)
    B.check_leaf(obj, "gamma", positive=True)


def _cyclic_height(t: jax.Array, up: float, down: float, mode: str, gamma: float) -> jax.Array:
    """torch CyclicLR's ``scale_factor * scale_fn(...)``: 0 at a cycle's start, 1 at its top."""
    t = jnp.maximum(t, 0)
    up, down = float(up), float(down)
    total = up + down
    local = jnp.mod(t, total)
    # torch's x <= r and (x - 1) / (r - 1), in forms exact for integer steps.
    scale = jnp.where(local <= up, div(local, up), div(total - local, down))
    if mode == "triangular":
        return scale
    if mode == "triangular2":
        amplitude = power(0.5, floor_div(t, total))
    else:
        amplitude = power(gamma, t)
    # A growing exp_range amplitude overflows at huge steps: keep 0 * inf out.
    return jnp.where(scale == 0, 0.0, scale * amplitude)


@schedule_type
class cyclic(Schedule):
    """Cyclical learning rate: torch's CyclicLR in its three modes.

    Each cycle rises from `base` to `peak` over `up` steps and falls back over
    `down` steps. The amplitude is scaled by 1 (``"triangular"``), by
    ``2 ** -(cycle - 1)`` (``"triangular2"``), or by ``gamma ** t``
    (``"exp_range"``). torch's custom ``scale_fn``/``scale_mode`` have no
    field here (a function has no config); write such a schedule with
    `from_fn`. torch also cycles momentum by default: see ``s.momentum()``.

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
        _check_cyclic(self)

    def momentum(self, base: float = 0.8, peak: float = 0.9) -> cyclic_momentum:
        """The momentum (or Adam b1) torch's CyclicLR cycles with this lr.

        Example:
            >>> from cadence import schedules as S
            >>> S.cyclic(1e-3, 0.1, 10).momentum()
            cyclic_momentum(base=0.8, peak=0.9, up=10, down=10, mode='triangular', gamma=1.0)
        """
        return cyclic_momentum(base, peak, self.up, self.down, self.mode, self.gamma)

    def _value(self, t: jax.Array) -> jax.Array:
        base, peak = as_float(self.base), as_float(self.peak)
        height = _cyclic_height(t, self.up, self.down, self.mode, self.gamma)
        return base + times(peak - base, height)


@schedule_type
class cyclic_momentum(Schedule):
    """The momentum that torch's CyclicLR cycles (``cycle_momentum=True``).

    ``peak - (peak - base) * h`` where ``h`` is the lr's height in its cycle:
    the momentum is at `peak` where the lr is at its floor and at `base` where
    the lr peaks. The cycle arguments must be the lr schedule's:
    ``S.cyclic(...).momentum()`` copies them.

    Args:
        base: the lowest momentum (torch's ``base_momentum``, default 0.8 there).
        peak: the highest (torch's ``max_momentum``, default 0.9 there).
        up: steps of the lr rising (``step_size_up``), > 0.
        down: steps falling (``step_size_down``); defaults to `up`.
        mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
        gamma: the per-step factor of ``"exp_range"``.

    Example:
        >>> from cadence import schedules as S
        >>> m = S.cyclic_momentum(0.8, 0.9, 2)
        >>> [round(float(m(t)), 6) for t in range(5)]
        [0.9, 0.85, 0.8, 0.85, 0.9]
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
        _check_cyclic(self)

    def _value(self, t: jax.Array) -> jax.Array:
        base, peak = as_float(self.base), as_float(self.peak)
        height = _cyclic_height(t, self.up, self.down, self.mode, self.gamma)
        return peak - times(peak - base, height)
