"""Wrappers that keep a second copy of the parameters in the state: `lookahead`, `average`.

Both hold their inner transformation as ``tx`` and its state in a field named
``inner``, so `hyperparams`, checkpoints and `averaged_params` see through
them. Their copies (slow weights, averaged parameters) have the parameters'
tree, shapes and dtypes, so the state is placed like the parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._base import (
    CHILD,
    FLOAT,
    INT,
    INT32_MAX,
    MAYBE_FLOAT,
    Transformation,
    check_int,
    check_tree,
    compute_dtype,
    dtype_of,
    field,
    increment,
    transformation_type,
    zero_count,
)
from ._leaf import torch_lerp
from ._wrappers import cond

__all__ = ["AverageState", "LookaheadState", "average", "lookahead"]


def _copy(params: Any) -> Any:
    """A copy of the parameters (a state leaf must not alias a donated parameter)."""
    return jax.tree.map(lambda p: jnp.array(p, dtype=dtype_of(p), copy=True), params)


def _applied(p: jax.Array, u: jax.Array) -> jax.Array:
    """``optax.apply_updates`` on one leaf: the parameter the caller will hold."""
    return jnp.asarray(p + u).astype(p.dtype)


def _need_params(owner: str, params: Any) -> None:
    if params is None:
        raise ValueError(
            f"{owner} needs params: update(grads, state, params), since it keeps a copy of "
            "the parameters in the state"
        )


class LookaheadState(NamedTuple):
    """`lookahead` state.

    ``phase``: updates since the last sync (timm's ``lookahead_step`` modulo
    ``k``); ``syncs``: syncs so far; ``slow``: the slow weights (the
    parameters at init until the first sync); ``inner``: the inner state.
    """

    phase: jax.Array
    syncs: jax.Array
    slow: Any
    inner: Any


@transformation_type
class lookahead(Transformation):
    """Lookahead: every `k` updates, move slow weights toward the fast ones and restart there.

    The inner transformation `tx` steps the (fast) parameters as usual. After
    every `k`-th update the slow weights move toward the fast ones and the
    parameters are set to them:

    .. math::
        \\phi \\leftarrow \\phi + \\alpha (\\theta - \\phi), \\qquad \\theta \\leftarrow \\phi

    This is timm's ``Lookahead`` (``timm.optim.Lookahead``), update for update:
    the inner step comes first, then the count (timm's ``lookahead_step``) and,
    on a multiple of `k`, the sync. As in timm, the slow weights are first set
    to the fast weights at the first sync (timm creates its buffer there), so
    the first sync leaves the parameters where the inner steps took them; the
    paper's version would pull them back towards the initial parameters.
    On a sync the returned updates are ``slow - params``, so that
    ``optax.apply_updates`` lands on the new slow weights (to the rounding of
    that sum); between syncs they are the inner updates unchanged.

    optax's ``optax.lookahead`` differs: it keeps the slow weights in the
    parameters (a ``LookaheadParams(fast, slow)`` pair that the training loop
    must carry) and pulls them from the initial parameters at the first sync,
    as the paper does. Around the same Adam (k=6, alpha=0.5) on a closed-loop
    least-squares fit, its parameters are 1.6% of the largest parameter
    apart from timm's after the first sync, 2.0% after 120 updates.

    Args:
        tx: the transformation that steps the fast weights.
        alpha: how far each sync moves the slow weights, in [0, 1].
        k: updates between syncs (>= 1).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.lookahead(O.sgd(1.0), alpha=0.5, k=2)
        >>> params = jnp.zeros(1)
        >>> state = opt.init(params)
        >>> for _ in range(4):
        ...     updates, state = opt.update(jnp.ones(1), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params, state.slow  # the first sync kept -2; the second pulled -4 halfway back
        (Array([-3.], dtype=float32), Array([-3.], dtype=float32))

    References:
        timm.optim.Lookahead (timm 1.x); Zhang et al., "Lookahead Optimizer:
        k steps forward, 1 step back" (2019).
    """

    tx: Any = field(CHILD)
    alpha: float = field(FLOAT, 0.5)
    k: int = field(INT, 6)

    def _validate(self) -> None:
        check_int(self, "k", minimum=1)
        if isinstance(self.alpha, float) and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"lookahead: alpha must be in [0, 1], got {self.alpha!r}")

    def init(self, params: Any) -> LookaheadState:
        return LookaheadState(zero_count(), zero_count(), _copy(params), self.tx.init(params))

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, LookaheadState]:
        _need_params("lookahead.update", params)
        check_tree("lookahead.update", updates, state.slow, "the state")
        out, inner = self.tx.update(updates, state.inner, params, **extra)
        phase = state.phase + 1
        sync = phase >= self.k
        first = state.syncs == 0

        def pulled(p: jax.Array, u: jax.Array, slow: jax.Array) -> jax.Array:
            dtype = compute_dtype(p.dtype)
            fast = _applied(p, u)
            # timm copies the fast weights into its buffer at the first sync.
            base = jnp.where(first, fast, slow).astype(dtype)
            alpha = jnp.asarray(self.alpha, dtype)
            return (base + alpha * (fast.astype(dtype) - base)).astype(slow.dtype)

        def synced(operand: Any) -> Any:
            out, slow = operand
            slow = jax.tree.map(pulled, params, out, slow)
            # The updates that take the parameters to the new slow weights.
            out = jax.tree.map(
                lambda p, s, u: (s.astype(compute_dtype(p.dtype)) - p).astype(u.dtype),
                params,
                slow,
                out,
            )
            return out, slow

        out, slow = cond(sync, synced, lambda operand: operand, (out, state.slow))
        state = LookaheadState(
            phase=jnp.where(sync, 0, phase).astype(jnp.int32),
            syncs=jnp.where(sync, increment(state.syncs), state.syncs),
            slow=slow,
            inner=inner,
        )
        return out, state


class AverageState(NamedTuple):
    """`average` state.

    ``countdown``: updates left before the next one that is averaged in
    (0: the next update is); ``n_averaged``: torch's ``n_averaged``, how many
    parameter sets the average holds; ``averaged``: the averaged parameters
    (the parameters at init until the first averaging); ``inner``: the inner
    state.
    """

    countdown: jax.Array
    n_averaged: jax.Array
    averaged: Any
    inner: Any


@transformation_type
class average(Transformation):
    """Parameter averaging in the optimizer state: an EMA of the parameters, or SWA's running mean.

    The updates are the inner transformation's, unchanged. After the selected
    updates the new parameters (``optax.apply_updates(params, updates)``) are
    folded into the average, which `averaged_params` returns:

    - with `decay`, an exponential moving average: the first averaging copies
      the parameters, each later one is ``avg.lerp(params, 1 - decay)``
      (torch's ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``);
    - without, the running mean of the averaged parameter sets,
      ``avg + (params - avg) / (n_averaged + 1)`` after a first copy
      (``AveragedModel(model)``, its default SWA average as torch computes it on CPU).

    Which updates: numbering updates from 0 as schedules do, the parameters
    after update ``t`` are averaged in when ``t >= start`` and
    ``(t + 1 - start) % every == 0``, i.e. after the `every`-th, 2·`every`-th,
    ... update counted from update `start`. This is the torch loop

    .. code-block:: python

        for t in range(steps):
            ...; optimizer.step()
            if t >= start and (t + 1 - start) % every == 0:
                averaged_model.update_parameters(model)

    With ``every`` the updates per epoch and ``start = swa_start * every`` it
    is torch's SWA recipe, averaging at the end of each epoch from epoch
    `swa_start` on. The average is kept in the parameters' dtype, as torch's
    copy of the model is.

    optax has no parameter average: ``optax.ema`` is an EMA of the updates
    (gradients) that it passes on, not of the parameters (in front of
    ``sgd(0.05)`` on a least-squares fit it moves the parameters 7.5% away
    from SGD's in 120 updates). A hand-written EMA with
    ``optax.incremental_update`` that starts from the initial parameters
    lacks torch's first copy: 3.7% from AveragedModel's after 120 updates at
    decay 0.99.

    Args:
        tx: the transformation to wrap.
        decay: the EMA's decay, in [0, 1]; None for SWA's equal-weight mean.
        every: updates between averagings (>= 1).
        start: the first update that may be averaged in (>= 0).

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.average(O.sgd(1.0))
        >>> params = jnp.zeros(1)
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update(jnp.ones(1), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params, O.averaged_params(state)  # the mean of -1, -2 and -3
        (Array([-3.], dtype=float32), Array([-2.], dtype=float32))

    References:
        torch.optim.swa_utils.AveragedModel and get_ema_multi_avg_fn (PyTorch 2.x).
    """

    tx: Any = field(CHILD)
    decay: float | None = field(MAYBE_FLOAT, None)
    every: int = field(INT, 1)
    start: int = field(INT, 0)

    def _validate(self) -> None:
        check_int(self, "every", minimum=1)
        check_int(self, "start", minimum=0)
        if self.decay is not None and not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"average: decay must be in [0, 1] or None, got {self.decay!r}")
        if self.start + self.every - 1 > INT32_MAX:
            raise ValueError(
                f"average: start + every - 1 must be at most 2**31 - 1 (the int32 state), "
                f"got start={self.start}, every={self.every}"
            )

    def init(self, params: Any) -> AverageState:
        countdown = jnp.asarray(self.start + self.every - 1, jnp.int32)
        return AverageState(countdown, zero_count(), _copy(params), self.tx.init(params))

    def _fold(self, avg: jax.Array, new: jax.Array, n: jax.Array) -> jax.Array:
        """`avg` with the parameters `new` folded in, `n` sets already averaged."""
        dtype = compute_dtype(avg.dtype)
        a, x = avg.astype(dtype), new.astype(dtype)
        if self.decay is None:
            # torch's CPU path (get_swa_avg_fn): a division by the count.
            folded = a + (x - a) / (n + 1).astype(dtype)
        else:
            folded = torch_lerp(a, x, jnp.asarray(1.0 - self.decay, dtype))
        return jnp.where(n == 0, x, folded).astype(avg.dtype)

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, AverageState]:
        _need_params("average.update", params)
        check_tree("average.update", updates, state.averaged, "the state")
        out, inner = self.tx.update(updates, state.inner, params, **extra)
        now = state.countdown == 0

        def fold(averaged: Any) -> Any:
            return jax.tree.map(
                lambda a, p, u: self._fold(a, _applied(p, u), state.n_averaged),
                averaged,
                params,
                out,
            )

        averaged = cond(now, fold, lambda averaged: averaged, state.averaged)
        state = AverageState(
            countdown=jnp.where(now, self.every - 1, state.countdown - 1).astype(jnp.int32),
            n_averaged=jnp.where(now, increment(state.n_averaged), state.n_averaged),
            averaged=averaged,
            inner=inner,
        )
        return out, state
