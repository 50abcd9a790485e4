"""Wrappers around a transformation: `accumulate`, `skip_nonfinite`, `reduce_on_plateau`.

Each holds its inner transformation as a field and its inner state in a field
named ``inner``, so `hyperparams` and checkpoints see through it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._base import (
    CHILD,
    FLOAT,
    INT,
    NONNEG,
    STR,
    UNIT,
    Transformation,
    as_float,
    check_choice,
    check_int,
    check_tree,
    compute_dtype,
    dtype_of,
    field,
    increment,
    transformation_type,
    zero_count,
    zeros_like_output,
)
from ._hyperparams import lr_of
from ._trees import distinct_arrays

__all__ = [
    "AccumulateState",
    "ReduceOnPlateauState",
    "SkipNonfiniteState",
    "accumulate",
    "reduce_on_plateau",
    "skip_nonfinite",
]


def cond(pred: jax.Array, true_fn: Any, false_fn: Any, operand: Any) -> Any:
    """`lax.cond`, except that a concrete predicate (eager use) runs only its branch.

    An eager `lax.cond` traces and compiles both branches on every call
    (fresh closures defeat its cache): half a second per step for a few arrays.
    """
    if isinstance(pred, jax.core.Tracer):
        return jax.lax.cond(pred, true_fn, false_fn, operand)
    return true_fn(operand) if bool(pred) else false_fn(operand)


class AccumulateState(NamedTuple):
    """`accumulate` state: the micro-step within the update, the gradient sum, the inner state."""

    micro_step: jax.Array
    grads: Any
    inner: Any


@transformation_type
class accumulate(Transformation):
    """Gradient accumulation: apply `tx` to the mean of every `every` gradients.

    On the first ``every - 1`` micro-steps of each group the updates are zero
    and the inner state is untouched; on the last, `tx` sees the mean of the
    group's gradients (the gradient of the mean loss over the large batch).
    The inner transformation's count, and so every schedule in it, counts
    optimizer updates, not micro-batches. The sum is kept in float32 or wider.

    Args:
        tx: the transformation to wrap.
        every: micro-batches per update (>= 1).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.accumulate(O.sgd(1.0), every=2)
        >>> state = opt.init(jnp.zeros(1))
        >>> u1, state = opt.update(jnp.array([1.0]), state)
        >>> u2, state = opt.update(jnp.array([3.0]), state)
        >>> u1, u2
        (Array([0.], dtype=float32), Array([-2.], dtype=float32))
    """

    tx: Any = field(CHILD)
    every: int = field(INT)

    def _validate(self) -> None:
        check_int(self, "every", minimum=1)

    def init(self, params: Any) -> AccumulateState:
        grads = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), compute_dtype(dtype_of(p))), params)
        return AccumulateState(zero_count(), grads, self.tx.init(params))

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, AccumulateState]:
        check_tree("accumulate.update", updates, state.grads, "the state")
        total = jax.tree.map(lambda a, g: a + g.astype(a.dtype), state.grads, updates)

        def emit(operand: Any) -> Any:
            total, inner = operand
            mean = jax.tree.map(lambda a, g: (a / self.every).astype(g.dtype), total, updates)
            out, inner = self.tx.update(mean, inner, params, **extra)
            return out, inner, jax.tree.map(jnp.zeros_like, total)

        def hold(operand: Any) -> Any:
            total, inner = operand
            out = zeros_like_output(emit, operand)[0]
            return out, inner, total

        last = state.micro_step == self.every - 1
        out, inner, total = cond(last, emit, hold, (total, state.inner))
        micro_step = jnp.where(last, 0, state.micro_step + 1).astype(jnp.int32)
        return out, AccumulateState(micro_step, total, inner)


class SkipNonfiniteState(NamedTuple):
    """`skip_nonfinite` state: how many updates were skipped, and the inner state."""

    skipped: jax.Array
    inner: Any


def all_finite(tree: Any) -> jax.Array:
    """True when every element of every leaf is finite."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


@transformation_type
class skip_nonfinite(Transformation):
    """Skip updates whose gradients hold a NaN or an infinity.

    A skipped step returns zero updates and leaves the inner state (its count,
    moments and schedules) exactly as it was; the state counts the skips. This
    is what torch's GradScaler does for a step with inf gradients.

    Args:
        tx: the transformation to wrap.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.skip_nonfinite(O.sgd(0.1))
        >>> state = opt.init(jnp.zeros(2))
        >>> updates, state = opt.update(jnp.array([1.0, jnp.nan]), state)
        >>> updates, int(state.skipped)
        (Array([0., 0.], dtype=float32), 1)
    """

    tx: Any = field(CHILD)

    def init(self, params: Any) -> SkipNonfiniteState:
        return SkipNonfiniteState(zero_count(), self.tx.init(params))

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, SkipNonfiniteState]:
        def apply(inner: Any) -> Any:
            return self.tx.update(updates, inner, params, **extra)

        def skip(inner: Any) -> Any:
            return zeros_like_output(apply, inner)[0], inner

        finite = all_finite(updates)
        out, inner = cond(finite, apply, skip, state.inner)
        skipped = jnp.where(finite, state.skipped, increment(state.skipped))
        return out, SkipNonfiniteState(skipped, inner)


class ReduceOnPlateauState(NamedTuple):
    """`reduce_on_plateau` state (torch's ReduceLROnPlateau attributes, plus the lr scale).

    ``scale`` multiplies the next update, ``last_scale`` multiplied the last one.
    """

    scale: jax.Array
    last_scale: jax.Array
    best: jax.Array
    num_bad_epochs: jax.Array
    cooldown_counter: jax.Array
    inner: Any

    # For `hyperparams`: the lr the last update used is the inner one times this.
    lr_scale_field = "last_scale"


@transformation_type
class reduce_on_plateau(Transformation):
    """Reduce the learning rate when a monitored value stops improving: torch's ReduceLROnPlateau.

    Call ``update(grads, state, params, value=loss)``. The update uses the
    current learning rate; then `value` is compared with the best so far and,
    after more than `patience` updates without improvement (outside the
    cooldown), the learning rate is multiplied by `factor` for the following
    updates: torch's ``opt.step(); sched.step(loss)``.

    The learning rate is scaled by scaling the inner updates, which is exact
    for every cadence optimizer (their updates are linear in lr). `min_lr`
    and `eps` are in learning-rate units, applied to the lr the inner optimizer
    reports in `hyperparams` (its default group's); for an inner transformation
    without an ``lr`` they bound the scale itself.

    It steps on every call of `update`: with gradient accumulation put it
    inside `accumulate` (``accumulate(reduce_on_plateau(opt), k)``) so that it
    steps once per optimizer update, seeing the last micro-batch's value.

    One deliberate difference: torch's relative threshold compares with
    ``best * (1 - threshold)``, which for a negative `best` accepts a worse
    value as an improvement. Here the margin is ``threshold * |best|`` in both
    signs (identical to torch for positive values).

    Args:
        tx: the transformation to wrap (an optimizer, or a chain holding one).
        mode: "min" (the value should decrease) or "max".
        factor: multiplier of the lr on a plateau, in [0, 1).
        patience: updates without improvement tolerated before reducing.
        threshold: the least change that counts as an improvement (>= 0).
        threshold_mode: "rel" (relative to ``|best|``) or "abs".
        cooldown: updates to wait after a reduction before counting again.
        min_lr: the learning rate is not reduced below this (>= 0).
        eps: a reduction smaller than this is skipped, as in torch.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.reduce_on_plateau(O.sgd(1.0), factor=0.5, patience=1)
        >>> state = opt.init(jnp.zeros(1))
        >>> for loss in [3.0, 2.0, 2.0, 2.0, 2.0, 2.0]:
        ...     updates, state = opt.update(jnp.ones(1), state, value=loss)
        >>> [float(O.hyperparams(state)["lr"]), float(state.scale)]
        [0.5, 0.25]

    References:
        torch.optim.lr_scheduler.ReduceLROnPlateau (PyTorch 2.x).
    """

    tx: Any = field(CHILD)
    mode: str = field(STR, "min")
    factor: float = field(FLOAT, 0.1, check=UNIT)
    patience: int = field(INT, 10)
    threshold: float = field(FLOAT, 1e-4, check=NONNEG)
    threshold_mode: str = field(STR, "rel")
    cooldown: int = field(INT, 0)
    min_lr: float = field(FLOAT, 0.0, check=NONNEG)
    eps: float = field(FLOAT, 1e-8, check=NONNEG)

    def _validate(self) -> None:
        check_choice(self, "mode", ("min", "max"))
        check_choice(self, "threshold_mode", ("rel", "abs"))
        check_int(self, "patience", minimum=0)
        check_int(self, "cooldown", minimum=0)

    def init(self, params: Any) -> ReduceOnPlateauState:
        one = as_float(1.0)
        worst = as_float(math.inf if self.mode == "min" else -math.inf)
        zero = zero_count()
        state = ReduceOnPlateauState(one, one, worst, zero, zero, self.tx.init(params))
        return distinct_arrays(state)  # a donated step takes each array once

    def _is_better(self, a: jax.Array, best: jax.Array) -> jax.Array:
        threshold = as_float(self.threshold)
        if self.threshold_mode == "abs":
            return a < best - threshold if self.mode == "min" else a > best + threshold
        # best * (1 -/+ threshold) moves the bar towards "better" for either
        # sign of best, and keeps best = +/-inf at +/-inf (no inf - inf).
        down = jnp.where(best >= 0, 1 - threshold, 1 + threshold)
        up = jnp.where(best >= 0, 1 + threshold, 1 - threshold)
        return a < best * down if self.mode == "min" else a > best * up

    def update(
        self, updates: Any, state: Any, params: Any = None, *, value: Any = None, **extra: Any
    ) -> tuple[Any, ReduceOnPlateauState]:
        if value is None:
            raise ValueError(
                "reduce_on_plateau.update needs the monitored value: "
                "update(grads, state, params, value=loss). flax's "
                "TrainState.apply_gradients does not pass `value` on; instead write\n"
                "    updates, opt_state = state.tx.update(grads, state.opt_state, "
                "state.params, value=loss)\n"
                "    state = state.replace(step=state.step + 1, params=optax.apply_updates("
                "state.params, updates), opt_state=opt_state)"
            )
        out, inner = self.tx.update(updates, state.inner, params, value=value, **extra)
        scale = state.scale
        out = jax.tree.map(
            lambda u: (u.astype(compute_dtype(u.dtype)) * scale).astype(u.dtype), out
        )

        current = as_float(value)
        better = self._is_better(current, state.best)
        best = jnp.where(better, current, state.best)
        bad = jnp.where(better, 0, increment(state.num_bad_epochs))
        in_cooldown = state.cooldown_counter > 0
        cooldown = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = jnp.where(in_cooldown, 0, bad)
        reduce = bad > self.patience

        # torch: new_lr = max(old_lr * factor, min_lr), applied if old - new > eps.
        lr = lr_of(inner)
        base = as_float(1.0) if lr is None else lr
        old = base * scale
        new = jnp.maximum(old * as_float(self.factor), as_float(self.min_lr))
        shrink = reduce & (old - new > as_float(self.eps)) & (base > 0)
        new_scale = jnp.where(shrink, new / jnp.where(base > 0, base, 1), scale)
        state = ReduceOnPlateauState(
            scale=new_scale,
            last_scale=scale,
            best=best,
            num_bad_epochs=jnp.where(reduce, 0, bad).astype(jnp.int32),
            cooldown_counter=jnp.where(reduce, self.cooldown, cooldown).astype(jnp.int32),
            inner=inner,
        )
        return out, state
