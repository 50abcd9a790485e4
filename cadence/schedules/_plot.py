"""Plotting with matplotlib (the `plot` extra)."""

from __future__ import annotations

import textwrap
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._base import Schedule

__all__ = ["plot"]


def plot(s: Schedule, steps: int, ax: Any = None, **line_kw: Any) -> Any:
    """Draw ``s(0), ..., s(steps)`` with matplotlib; return the axes.

    Args:
        s: the schedule.
        steps: last step to draw, >= 1.
        ax: axes to draw on; a new figure's when None.
        **line_kw: passed to ``ax.plot`` (e.g. ``label=``).

    Returns:
        The matplotlib axes.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from cadence import schedules as S
        >>> ax = S.plot(S.warmup(S.cosine(1e-3, 90), 10), 100)
        >>> ax.get_xlabel()
        'step'
    """
    if not isinstance(s, Schedule):
        raise TypeError(f"plot: expected a Schedule, got {s!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"plot: steps must be an int >= 1, got {steps!r}")
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot needs matplotlib: pip install 'cadence[plot]'") from e
    t = np.arange(steps + 1)
    values = np.asarray(s(jnp.asarray(t)))
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    ax.plot(t, values, **line_kw)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.set_title(_wrap(repr(s)), fontsize="small", family="monospace")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    return ax


def _wrap(text: str, width: int = 90) -> str:
    return textwrap.fill(text, width, break_long_words=True, break_on_hyphens=False)
