"""torch's strong-Wolfe line search for `lbfgs`, as one `lax.while_loop`.

torch.optim.lbfgs's ``_strong_wolfe`` (ported from minFunc's ``lswolfe.lua``)
runs two Python loops: a bracketing phase that grows the step until it
brackets a point satisfying the strong Wolfe conditions, then a zoom phase
that shrinks the bracket by cubic interpolation (``_cubic_interpolate``).
Here both phases are states of one loop whose body evaluates the objective
once and then makes every decision torch makes between two evaluations, so
the objective (the user's loss and its gradient) is traced once. The
branches, their order and the arithmetic follow torch's expression by
expression, so that the same trial steps are evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["cubic_interpolate", "strong_wolfe"]

# torch's constants (not arguments of torch.optim.LBFGS).
C1 = 1e-4  # sufficient decrease (Armijo)
C2 = 0.9  # curvature

_BRACKET, _ZOOM, _FINISHED = 0, 1, 2


def cubic_interpolate(
    x1: jax.Array,
    f1: jax.Array,
    g1: jax.Array,
    x2: jax.Array,
    f2: jax.Array,
    g2: jax.Array,
    bounds: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """The minimiser of the cubic through two points with values and slopes: torch's formula.

    Clamped to `bounds` (default: the interval between the points); the
    interval's midpoint where the cubic has no real minimiser.
    """
    if bounds is None:
        lo, hi = jnp.where(x1 <= x2, x1, x2), jnp.where(x1 <= x2, x2, x1)
    else:
        lo, hi = bounds
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    real = d2_square >= 0
    d2 = jnp.sqrt(jnp.where(real, d2_square, 0))
    ascending = x1 <= x2
    min_pos = jnp.where(
        ascending,
        x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)),
        x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2)),
    )
    # torch's min(max(min_pos, lo), hi) with Python's max/min: a NaN stays NaN.
    clamped = jnp.minimum(jnp.maximum(min_pos, lo), hi)
    return jnp.where(real, clamped, (lo + hi) / 2.0)


class _Search(NamedTuple):
    """The loop's carry: the next trial step and everything torch keeps between evaluations."""

    phase: jax.Array
    t: jax.Array  # the next step to evaluate
    evals: jax.Array  # ls_func_evals; torch's ls_iter is evals - 1 after an evaluation
    t_prev: jax.Array
    f_prev: jax.Array
    g_prev: jax.Array
    gtd_prev: jax.Array
    bracket: jax.Array  # (2,) steps
    bracket_f: jax.Array  # (2,)
    bracket_g: jax.Array  # (2, n)
    bracket_gtd: jax.Array  # (2,)
    low: jax.Array  # index of the bracket's lower value; high is 1 - low
    insuf_progress: jax.Array
    done: jax.Array


def _pair(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.stack([a, b])


def _set(pair: jax.Array, i: jax.Array, value: jax.Array, where: jax.Array) -> jax.Array:
    """``pair[i] = value`` where `where` holds."""
    return pair.at[i].set(jnp.where(where, value, pair[i]))


def strong_wolfe(
    evaluate: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    t: jax.Array,
    d: jax.Array,
    f: jax.Array,
    g: jax.Array,
    gtd: jax.Array,
    tolerance_change: jax.Array,
    max_ls: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torch's ``_strong_wolfe``: the step's value, gradient, length and the evaluations made.

    Args:
        evaluate: ``t -> (loss, flat gradient)`` at the point ``x + t d``.
        t: the initial step.
        d: the search direction.
        f, g, gtd: the loss, the flat gradient and ``g . d`` at ``t = 0``.
        tolerance_change: the bracket width (times ``max |d|``) below which zooming stops.
        max_ls: the most evaluations after the first (torch's ``max_ls``, >= 0).

    Returns:
        ``(f_new, g_new, t, ls_func_evals)`` as torch returns them.
    """
    dtype = d.dtype
    d_norm = jnp.max(jnp.abs(d)) if d.size else jnp.zeros((), dtype)
    zero = jnp.zeros((), dtype)
    init = _Search(
        phase=jnp.asarray(_BRACKET, jnp.int32),
        t=t,
        evals=jnp.zeros((), jnp.int32),
        t_prev=zero,
        f_prev=f,
        g_prev=g,
        gtd_prev=gtd,
        bracket=jnp.zeros(2, dtype),
        bracket_f=jnp.zeros(2, dtype),
        bracket_g=jnp.zeros((2, *g.shape), dtype),
        bracket_gtd=jnp.zeros(2, dtype),
        low=jnp.zeros((), jnp.int32),
        insuf_progress=jnp.asarray(False),
        done=jnp.asarray(False),
    )

    def armijo_fails(t: jax.Array, f_new: jax.Array) -> jax.Array:
        return f_new > (f + C1 * t * gtd)

    def wolfe_holds(gtd_new: jax.Array) -> jax.Array:
        return jnp.abs(gtd_new) <= -C2 * gtd

    def bracketing(s: _Search, f_new: Any, g_new: Any, gtd_new: Any) -> _Search:
        """The checks of torch's first loop on the point just evaluated, and its next step."""
        ls_iter = s.evals - 1
        in_budget = ls_iter < max_ls
        past = armijo_fails(s.t, f_new) | ((ls_iter > 1) & (f_new >= s.f_prev))
        past = in_budget & past
        wolfe = in_budget & ~past & wolfe_holds(gtd_new)
        uphill = in_budget & ~past & ~wolfe & (gtd_new >= 0)
        onward = in_budget & ~past & ~wolfe & ~uphill
        around = past | uphill  # bracket = [t_prev, t]
        # torch's brackets: [t_prev, t], [t] (kept as [t, t]), or [0, t] when exhausted.
        first = jnp.where(around, s.t_prev, jnp.where(wolfe, s.t, zero))
        first_f = jnp.where(around, s.f_prev, jnp.where(wolfe, f_new, f))
        first_g = jnp.where(around, s.g_prev, jnp.where(wolfe, g_new, g))
        bracket = _pair(first, s.t)
        bracket_f = _pair(first_f, f_new)
        bracket_g = _pair(first_g, g_new)
        # Exhausted, torch leaves bracket_gtd unset: the zoom that would read it never runs.
        bracket_gtd = jnp.where(around, _pair(s.gtd_prev, gtd_new), s.bracket_gtd)
        t_next = cubic_interpolate(
            s.t_prev,
            s.f_prev,
            s.gtd_prev,
            s.t,
            f_new,
            gtd_new,
            bounds=(s.t + 0.01 * (s.t - s.t_prev), s.t * 10),
        )
        stop = jnp.asarray(_FINISHED, jnp.int32)
        phase = jnp.where(onward, s.phase, jnp.where(wolfe, stop, _ZOOM))
        # Onward, the point just evaluated becomes the previous one; else the
        # bracket is set, and the previous point is no longer read.
        onward_only = lambda old, new: jnp.where(onward, new, old)  # noqa: E731
        bracketed = lambda old, new: jnp.where(onward, old, new)  # noqa: E731
        return s._replace(
            phase=phase.astype(jnp.int32),
            t=jnp.where(onward, t_next, s.t),
            t_prev=onward_only(s.t_prev, s.t),
            f_prev=onward_only(s.f_prev, f_new),
            g_prev=onward_only(s.g_prev, g_new),
            gtd_prev=onward_only(s.gtd_prev, gtd_new),
            bracket=bracketed(s.bracket, bracket),
            bracket_f=bracketed(s.bracket_f, bracket_f),
            bracket_g=bracketed(s.bracket_g, bracket_g),
            bracket_gtd=bracketed(s.bracket_gtd, bracket_gtd),
            # Entering the zoom: torch picks the low point once, before its loop.
            low=jnp.where(onward, s.low, jnp.where(bracket_f[0] <= bracket_f[1], 0, 1)).astype(
                jnp.int32
            ),
            insuf_progress=jnp.asarray(False),
            done=wolfe,
        )

    def zooming(s: _Search, f_new: Any, g_new: Any, gtd_new: Any) -> _Search:
        """torch's bracket update after a zoom evaluation."""
        low, high = s.low, 1 - s.low
        worse = armijo_fails(s.t, f_new) | (f_new >= s.bracket_f[low])
        wolfe = ~worse & wolfe_holds(gtd_new)
        flip = ~worse & ~wolfe & (gtd_new * (s.bracket[high] - s.bracket[low]) >= 0)
        pairs = [s.bracket, s.bracket_f, s.bracket_g, s.bracket_gtd]
        # Not worse: the old low becomes the high (when the slope says so), then t the low.
        pairs = [_set(p, high, p[low], flip) for p in pairs]
        new = [s.t, f_new, g_new, gtd_new]
        pairs = [
            _set(p, jnp.where(worse, high, low), v, True) for p, v in zip(pairs, new, strict=True)
        ]
        bracket, bracket_f, bracket_g, bracket_gtd = pairs
        relabel = jnp.where(bracket_f[0] <= bracket_f[1], 0, 1).astype(jnp.int32)
        return s._replace(
            bracket=bracket,
            bracket_f=bracket_f,
            bracket_g=bracket_g,
            bracket_gtd=bracket_gtd,
            low=jnp.where(worse, relabel, s.low),
            done=wolfe,
        )

    def next_zoom_step(s: _Search) -> _Search:
        """The head of torch's zoom loop: stop, or the next trial step."""
        ls_iter = s.evals - 1
        lo, hi = jnp.min(s.bracket), jnp.max(s.bracket)
        narrow = jnp.abs(s.bracket[1] - s.bracket[0]) * d_norm < tolerance_change
        stop = s.done | (ls_iter >= max_ls) | narrow
        t = cubic_interpolate(
            s.bracket[0],
            s.bracket_f[0],
            s.bracket_gtd[0],
            s.bracket[1],
            s.bracket_f[1],
            s.bracket_gtd[1],
        )
        # Too close to an end of the bracket: step 0.1 of its width inside,
        # at once if the last step made too little progress or t is outside.
        eps = 0.1 * (hi - lo)
        near = jnp.minimum(hi - t, t - lo) < eps
        move = near & (s.insuf_progress | (t >= hi) | (t <= lo))
        moved = jnp.where(jnp.abs(t - hi) < jnp.abs(t - lo), hi - eps, lo + eps)
        phase = jnp.where(stop, _FINISHED, _ZOOM).astype(jnp.int32)
        return s._replace(
            phase=jnp.where(s.phase == _ZOOM, phase, s.phase),
            t=jnp.where((s.phase == _ZOOM) & ~stop, jnp.where(move, moved, t), s.t),
            insuf_progress=jnp.where((s.phase == _ZOOM) & ~stop, near & ~move, s.insuf_progress),
        )

    def body(s: _Search) -> _Search:
        f_new, g_new = evaluate(s.t)
        gtd_new = jnp.dot(g_new, d)
        s = s._replace(evals=s.evals + 1)
        s = jax.lax.cond(
            s.phase == _BRACKET,
            lambda s: bracketing(s, f_new, g_new, gtd_new),
            lambda s: zooming(s, f_new, g_new, gtd_new),
            s,
        )
        return next_zoom_step(s)

    s = jax.lax.while_loop(lambda s: s.phase != _FINISHED, body, init)
    return s.bracket_f[s.low], s.bracket_g[s.low], s.bracket[s.low], s.evals
