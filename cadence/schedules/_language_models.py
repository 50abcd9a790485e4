"""Schedules from Transformer and language-model training: noam, inverse_sqrt, wsd."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _base as B
from ._base import Schedule, as_float, field, schedule_type
from ._numerics import cos_fraction, div, safe_sqrt

__all__ = ["inverse_sqrt", "noam", "wsd"]


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
        timescale = float(self.timescale)
        return as_float(self.init) * jax.lax.rsqrt(div(t + timescale, timescale))


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
        # Python floats: step counts of any size, never int32 constants.
        w, s, d = float(self.warmup), float(self.stable), float(self.decay)
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
