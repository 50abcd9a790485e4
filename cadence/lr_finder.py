"""The learning-rate range test (Smith, 2015; fastai's ``lr_find``).

The learning rate grows exponentially from `start` to `end`, one training
step per value; the test stops when the loss diverges and suggests the rate
where the (smoothed) loss falls fastest. The growing rate is a cadence
schedule driven by the optimizer's own step count, so the whole sweep runs
one compiled step: no recompilation per learning rate.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from cadence import schedules as S

__all__ = ["LRRangeResult", "lr_range_test", "plot"]


class LRRangeResult(NamedTuple):
    """What `lr_range_test` returns.

    Attributes:
        lrs: the learning rates tried, one per step taken.
        losses: the raw training loss at each of those steps.
        smoothed: the bias-corrected exponential moving average of the losses.
        suggested_lr: where the smoothed loss falls fastest (per log-lr).
        diverged: whether the sweep stopped because the loss diverged.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested_lr: float
    diverged: bool


def lr_range_test(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batches: Iterable[Any],
    optimizer_factory: Callable[[Any], optax.GradientTransformation],
    start: float = 1e-7,
    end: float = 10.0,
    num: int = 100,
    *,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
) -> LRRangeResult:
    """Sweep the learning rate exponentially and record the loss.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar loss``.
        params: the initial parameters (not modified).
        batches: an iterable of batches; one is used per step (the sweep ends
            early if it runs out).
        optimizer_factory: ``lr -> optimizer``; it is called once, with a
            cadence schedule as the lr (cadence and optax optimizers both
            accept one).
        start: first learning rate, > 0.
        end: last learning rate, > start.
        num: number of steps (learning rates), >= 2.
        smoothing: factor of the loss's moving average, in [0, 1).
        diverge_factor: stop once the smoothed loss exceeds this multiple of
            its minimum (or is not finite).

    Returns:
        An `LRRangeResult`.

    Raises:
        ValueError: for invalid `start`, `end`, `num`, `smoothing` or
            `diverge_factor`, or a loss that is not a scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import lr_finder, optimizers as O
        >>> loss = lambda p, b: jnp.mean((b[0] * p["w"] - b[1]) ** 2)
        >>> x = jnp.linspace(-1, 1, 8)
        >>> batches = [(x, (2.0 + k % 2) * x) for k in range(100)]
        >>> r = lr_finder.lr_range_test(loss, {"w": 0.0}, batches, O.sgd, 1e-3, 100.0, 100)
        >>> 1e-2 < r.suggested_lr < 1.0, r.diverged, len(r.lrs) < 100
        (True, True, True)
    """
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"lr_range_test: {name} must be a number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"lr_range_test: {name} must be finite and > 0, got {value!r}")
    if not end > start:
        raise ValueError(f"lr_range_test: end must be > start, got start={start}, end={end}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"lr_range_test: num must be an int >= 2, got {num!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"lr_range_test: smoothing must be in [0, 1), got {smoothing!r}")
    if not diverge_factor > 1:
        raise ValueError(f"lr_range_test: diverge_factor must be > 1, got {diverge_factor!r}")
    if not callable(optimizer_factory):
        raise TypeError("lr_range_test: optimizer_factory must be callable (lr -> optimizer)")

    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("lr_range_test: batches is empty")
    out = jax.eval_shape(loss_fn, params, first)
    if not hasattr(out, "shape") or out.shape != ():
        raise ValueError(
            f"lr_range_test: loss_fn must return a scalar, got {getattr(out, 'shape', out)}"
        )
    batches = itertools.chain([first], batches)

    # lr(k) = start * (end / start) ** (k / (num - 1)), read from the
    # optimizer's own count: the schedule is part of the compiled step.
    schedule = S.exponential(start, (end / start) ** (1.0 / (num - 1)))
    optimizer = optimizer_factory(schedule)
    state = optimizer.init(params)

    @jax.jit
    def step(params: Any, state: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    lrs = np.asarray(schedule(np.arange(num)), dtype=np.float64)
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, diverged = 0.0, math.inf, False
    for k, batch in zip(range(num), batches, strict=False):
        params, state, loss = step(params, state, batch)
        value = float(loss)  # host side, outside the compiled step
        losses.append(value)
        average = smoothing * average + (1 - smoothing) * value
        smooth = average / (1 - smoothing ** (k + 1))
        smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > diverge_factor * best:
            diverged = True
            break
        best = min(best, smooth)
    taken = len(losses)
    result_lrs = lrs[:taken]
    smooth_arr = np.asarray(smoothed)
    return LRRangeResult(
        lrs=result_lrs,
        losses=np.asarray(losses),
        smoothed=smooth_arr,
        suggested_lr=_suggest(result_lrs, smooth_arr),
        diverged=diverged,
    )


def _suggest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The lr where the smoothed loss falls fastest against log(lr), before divergence."""
    finite = np.isfinite(smoothed)
    lrs, smoothed = lrs[finite], smoothed[finite]
    if len(lrs) < 3:
        return float(lrs[0]) if len(lrs) else math.nan
    # Skip the first tenth, where the average has seen few batches and the
    # slope is batch noise (as fastai does), and the tail after the minimum,
    # which is the blow-up rather than the descent.
    skip = max(1, len(lrs) // 10)
    stop = int(np.argmin(smoothed)) + 1
    # Differences over a window of +-w points: batch-to-batch zigzags in the
    # loss must not decide the steepest point.
    w = max(1, len(lrs) // 20)
    if stop - skip < 2 * w + 1:
        return float(lrs[max(0, stop - 1)])
    s, x = smoothed[skip:stop], np.log(lrs[skip:stop])
    slope = (s[2 * w :] - s[: -2 * w]) / (x[2 * w :] - x[: -2 * w])
    return float(lrs[skip + w + int(np.argmin(slope))])


def plot(result: LRRangeResult, ax: Any = None) -> Any:
    """Plot the loss against the learning rate (log scale), marking the suggestion.

    Args:
        result: an `LRRangeResult`.
        ax: matplotlib axes to draw on; a new figure's when None.

    Returns:
        The axes.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import numpy as np
        >>> from cadence import lr_finder
        >>> lrs, ones = np.geomspace(1e-4, 1, 5), np.ones(5)
        >>> r = lr_finder.LRRangeResult(lrs, ones, ones, 1e-2, False)
        >>> lr_finder.plot(r).get_xscale()
        'log'
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    if math.isfinite(result.suggested_lr):
        ax.axvline(result.suggested_lr, color="C3", linestyle="--")
        ax.annotate(
            f"suggested {result.suggested_lr:.2e}",
            (result.suggested_lr, float(np.nanmin(result.smoothed))),
            textcoords="offset points",
            xytext=(6, 6),
            color="C3",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test" + (" (stopped at divergence)" if result.diverged else ""))
    ax.legend()
    finite = result.smoothed[np.isfinite(result.smoothed)]
    if finite.size:
        low, high = float(finite.min()), float(finite[0])
        ax.set_ylim(low - 0.1 * abs(high - low), max(high, low) + 0.5 * abs(high - low) + 1e-12)
    return ax
