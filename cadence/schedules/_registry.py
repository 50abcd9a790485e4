"""`get`: transformers' named schedules, as compositions of cadence schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._base import Schedule, is_concrete_number
from ._combinators import join, restarts, shift, warmup
from ._language_models import inverse_sqrt, wsd
from ._primitives import constant, cosine, linear, polynomial

__all__ = ["NAMES", "get"]


def _need_total(name: str, warmup_steps: int, total_steps: int | None) -> int:
    if total_steps is None:
        raise ValueError(f"get({name!r}): total_steps is required")
    if total_steps <= warmup_steps:
        raise ValueError(
            f"get({name!r}): total_steps must be > warmup_steps, got "
            f"total_steps={total_steps}, warmup_steps={warmup_steps}"
        )
    return total_steps - warmup_steps


def _constant(peak: float, w: int, total: int | None) -> Schedule:
    return constant(peak)


def _constant_with_warmup(peak: float, w: int, total: int | None) -> Schedule:
    return warmup(constant(peak), w)


def _linear(peak: float, w: int, total: int | None) -> Schedule:
    return warmup(linear(peak, 0.0, _need_total("linear", w, total)), w)


def _polynomial(
    peak: float, w: int, total: int | None, lr_end: float = 1e-7, power: float = 1.0
) -> Schedule:
    if is_concrete_number(peak) and not peak > lr_end:
        raise ValueError(f"get('polynomial'): lr_end ({lr_end}) must be smaller than peak ({peak})")
    steps = _need_total("polynomial", w, total)
    return warmup(polynomial(peak, steps, end=lr_end, power=power), w)


def _cosine(peak: float, w: int, total: int | None, num_cycles: float = 0.5) -> Schedule:
    return warmup(cosine(peak, _need_total("cosine", w, total), cycles=num_cycles), w)


def _cosine_with_restarts(
    peak: float, w: int, total: int | None, num_cycles: float = 1
) -> Schedule:
    steps = _need_total("cosine_with_restarts", w, total)
    if not num_cycles > 0:
        raise ValueError(f"get('cosine_with_restarts'): num_cycles must be > 0, got {num_cycles}")
    period = steps / num_cycles
    if float(num_cycles).is_integer():
        period = steps // int(num_cycles) if steps % int(num_cycles) == 0 else period
        cycles = restarts(cosine(peak, period), period, limit=int(num_cycles))
    else:
        # A fractional last cycle is cut at total_steps, where transformers drops to 0.
        cycles = join([restarts(cosine(peak, period), period), constant(0.0)], [steps])
    return warmup(cycles, w)


def _inverse_sqrt(
    peak: float, w: int, total: int | None, timescale: float | None = None
) -> Schedule:
    # transformers' default is `num_warmup_steps or 10_000`; an explicit
    # timescale, 0 included, is the user's (and 0 is refused by inverse_sqrt).
    if timescale is None:
        timescale = w or 10_000
    return warmup(inverse_sqrt(peak, timescale), w)


def _cosine_with_min_lr(
    peak: float,
    w: int,
    total: int | None,
    num_cycles: float = 0.5,
    min_lr: float | None = None,
    min_lr_rate: float | None = None,
) -> Schedule:
    if (min_lr is None) == (min_lr_rate is None):
        raise ValueError("get('cosine_with_min_lr'): give exactly one of min_lr, min_lr_rate")
    end = min_lr if min_lr is not None else peak * min_lr_rate
    steps = _need_total("cosine_with_min_lr", w, total)
    return warmup(cosine(peak, steps, end=end, cycles=num_cycles), w)


def _cosine_warmup_with_min_lr(
    peak: float,
    w: int,
    total: int | None,
    num_cycles: float = 0.5,
    min_lr: float | None = None,
    min_lr_rate: float | None = None,
    warmup_lr_rate: float | None = None,
) -> Schedule:
    # transformers' get_cosine_with_min_lr_schedule_with_warmup_lr_rate: the
    # warmup reaches the peak at step w - 1 (from peak / w, or from
    # peak * warmup_lr_rate) and the cosine's progress is (k - w + 1) / (T - w),
    # i.e. the cosine is entered one step in at step w.
    if (min_lr is None) == (min_lr_rate is None):
        raise ValueError(
            "get('cosine_warmup_with_min_lr'): give exactly one of min_lr, min_lr_rate"
        )
    end = min_lr if min_lr is not None else peak * min_lr_rate
    if total is None:
        raise ValueError("get('cosine_warmup_with_min_lr'): total_steps is required")
    decay = cosine(peak, max(1, total - w), end=end, cycles=num_cycles)
    start = peak / max(1, w) if warmup_lr_rate is None else peak * warmup_lr_rate
    if w >= 2:
        return join([linear(start, peak, w - 1), decay], [w - 1])
    if w == 1 and warmup_lr_rate is None:
        return decay  # the warmup's one step is the peak, the cosine's own step 0
    if w == 1:
        return join([constant(start), shift(decay, 1)], [1])
    return shift(decay, 1)


def _warmup_stable_decay(
    peak: float,
    w: int,
    total: int | None,
    num_decay_steps: int | None = None,
    num_stable_steps: int | None = None,
    warmup_type: str = "linear",
    decay_type: str = "cosine",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> Schedule:
    if num_decay_steps is None:
        raise ValueError("get('warmup_stable_decay'): num_decay_steps is required")
    if num_stable_steps is None:
        if total is None:
            raise ValueError("get('warmup_stable_decay'): give num_stable_steps or total_steps")
        num_stable_steps = total - w - num_decay_steps
    return wsd(
        peak,
        w,
        num_stable_steps,
        num_decay_steps,
        end=peak * min_lr_ratio,
        shape=decay_type,
        warmup_shape=warmup_type,
        cycles=num_cycles,
    )


_BUILDERS: dict[str, Callable[..., Schedule]] = {
    "constant": _constant,
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "polynomial": _polynomial,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "inverse_sqrt": _inverse_sqrt,
    "cosine_with_min_lr": _cosine_with_min_lr,
    "cosine_warmup_with_min_lr": _cosine_warmup_with_min_lr,
    "warmup_stable_decay": _warmup_stable_decay,
}

# transformers' names that depend on a metric, not on the step: no schedule.
_METRIC_DRIVEN = {
    "reduce_lr_on_plateau": (
        "it lowers the lr when a metric stops improving; use the optimizer wrapper "
        "O.reduce_on_plateau(opt, ...) and pass value=loss to update"
    ),
    "greedy": (
        "transformers' GreedyLR moves the lr by the loss; cadence has no schedule for it: "
        "the metric-driven wrapper is O.reduce_on_plateau(opt, ...), with value=loss in update"
    ),
}

NAMES: tuple[str, ...] = tuple(_BUILDERS)


def get(
    name: str,
    peak: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    **kw: Any,
) -> Schedule:
    """transformers' named schedule `name`, in absolute values (``peak`` times its factor).

    The names and keyword arguments are transformers' (``get_scheduler`` and its
    ``scheduler_specific_kwargs``): ``num_cycles``, ``lr_end``, ``power``,
    ``timescale``, ``min_lr``, ``min_lr_rate``, ``num_decay_steps``,
    ``num_stable_steps``, ``warmup_type``, ``decay_type``, ``min_lr_ratio``,
    ``warmup_lr_rate``. The result is an ordinary composed schedule (it prints
    as one). transformers' metric-driven names, ``reduce_lr_on_plateau`` and
    ``greedy``, are not functions of the step: they raise a ValueError that
    names the optimizer wrapper to use (``O.reduce_on_plateau``).

    Past ``total_steps`` cadence holds the final value; transformers' cosine
    schedules rise again there.

    Args:
        name: one of `NAMES`.
        peak: the base learning rate.
        warmup_steps: transformers' ``num_warmup_steps``.
        total_steps: transformers' ``num_training_steps``.
        **kw: the schedule's own keyword arguments.

    Returns:
        The schedule.

    Raises:
        ValueError: for an unknown or metric-driven name, a keyword the
            schedule does not take, or invalid values.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.get("cosine", 1e-3, warmup_steps=10, total_steps=100)
        >>> s
        warmup(s=cosine(init=0.001, steps=90, end=0.0, cycles=0.5, k=1.0), steps=10, init=0.0)
    """
    if name in _METRIC_DRIVEN:
        raise ValueError(f"get({name!r}) is not a schedule: {_METRIC_DRIVEN[name]}")
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown schedule name {name!r}; known names: {', '.join(NAMES)}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
        raise TypeError(f"get({name!r}): warmup_steps must be an int, got {warmup_steps!r}")
    if warmup_steps < 0:
        raise ValueError(f"get({name!r}): warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int)
    ):
        raise TypeError(f"get({name!r}): total_steps must be an int, got {total_steps!r}")
    accepted = builder.__code__.co_varnames[3 : builder.__code__.co_argcount]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(
            f"get({name!r}): unknown keyword(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    # `peak` may be traced (a vmapped sweep): check it only when it is a number.
    if is_concrete_number(peak) and not math.isfinite(peak):
        raise ValueError(f"get({name!r}): peak must be finite, got {peak!r}")
    return builder(peak, warmup_steps, total_steps, **kw)
