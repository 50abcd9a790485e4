"""L-BFGS: torch.optim.LBFGS, one `update` being one ``optimizer.step(closure)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._base import (
    HYPER,
    INT,
    INT32_MAX,
    MAYBE_STR,
    NONNEG,
    Transformation,
    check_int,
    check_tree,
    field,
    increment,
    set_field,
    transformation_type,
    zero_count,
)
from ._flat_view import FlatView, flat_layout
from ._groups import Record, evaluate
from ._line_search import strong_wolfe
from ._trees import Leaves, distinct_arrays, is_traced

__all__ = ["LBFGSState", "lbfgs"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``

_HYPERS = ("lr", "tolerance_grad", "tolerance_change")


class LBFGSState(NamedTuple):
    """`lbfgs` state: torch's ``state`` of LBFGS, every vector a view of all parameters at once.

    The vectors concatenate the parameter leaves in `jax.tree.leaves` order
    (torch's flat view). The history is a ring of ``history_size`` rows:
    `history_len` of them hold pairs, the oldest at row `history_start`.
    """

    count: jax.Array  # updates (torch's optimizer.step calls) so far: what schedules see
    func_evals: jax.Array  # torch's state["func_evals"]: loss evaluations, all steps
    n_iter: jax.Array  # torch's state["n_iter"]: iterations, all steps
    d: jax.Array  # the last search direction
    t: jax.Array  # the last step length
    old_dirs: jax.Array  # (history_size, n): gradient differences y
    old_stps: jax.Array  # (history_size, n): steps s
    ro: jax.Array  # (history_size,): 1 / (y . s)
    history_start: jax.Array
    history_len: jax.Array
    H_diag: jax.Array  # the initial inverse Hessian's scale, (y . s) / (y . y)
    prev_flat_grad: jax.Array
    prev_loss: jax.Array
    hyperparams: dict[str, Any]


@transformation_type
class lbfgs(Transformation):
    """Limited-memory BFGS with torch's iterations and line search: torch.optim.LBFGS.

    One call of ``update(grads, state, params, value=loss, value_fn=loss_fn)``
    is one ``optimizer.step(closure)`` of torch: `value` and `grads` are the
    closure's first evaluation (``loss, grads = jax.value_and_grad(loss_fn)(params)``),
    and up to `max_iter` iterations follow inside one `lax.while_loop`, each
    evaluating ``loss_fn`` (and its gradient) where torch calls the closure.
    With `k` the iteration, :math:`g_k` the flat gradient of all parameters,
    :math:`y = g_k - g_{k-1}`, :math:`s = t_{k-1} d_{k-1}`:

    .. math::
        d_k = -H_k g_k \\ \\text{(two-loop recursion over the last
        \\texttt{history\\_size} pairs with } y \\cdot s > 10^{-10}\\text{)}, \\quad
        H_k^0 = \\frac{y \\cdot s}{y \\cdot y}, \\quad
        x_{k+1} = x_k + t_k d_k

    with :math:`t_k = \\text{lr}` (the very first iteration: :math:`\\min(1,
    1/\\|g\\|_1)\\,\\text{lr}`), or the step of torch's strong-Wolfe line
    search (cubic interpolation, c1 = 1e-4, c2 = 0.9) when `line_search_fn`
    is ``"strong_wolfe"``. An update stops, in torch's order, when the
    directional derivative exceeds ``-tolerance_change``, after `max_iter`
    iterations or `max_eval` evaluations, when ``max |g| <= tolerance_grad``,
    when ``max |t d| <= tolerance_change`` or the loss changed by less than
    `tolerance_change`; it returns at once when the first gradient is already
    below `tolerance_grad`. The state carries torch's ``d``, ``t``, history,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``, ``n_iter`` and
    ``func_evals`` from one update to the next; the history is a fixed
    ``(history_size, n)`` ring (``n`` parameters in all), so the state's
    shapes never change.

    The vectors are in the parameters' dtype (float32 at least; mixed dtypes
    promote), as are the losses and steps. ``value_fn`` must return a scalar
    loss. torch has one parameter group for LBFGS, and so does this: no
    ``groups``. The state's vectors concatenate every leaf, so they are
    replicated on the parameters' mesh (as `state_shardings` reports),
    torch's "all parameters on a single device". Other transformations pass
    ``value_fn`` on as they pass ``value`` (`chain`, `accumulate`,
    `skip_nonfinite`, `reduce_on_plateau`, `average`, `master_weights`,
    `lookahead`, optax's chain and MultiSteps); a transformation before
    `lbfgs` in a chain changes only the first gradient, not the ones
    ``value_fn`` gives, and `reduce_on_plateau` scales the update `lbfgs`
    returns, not the lr of its iterations as torch's scheduler does (give
    `lr` a schedule instead). It is a full-batch method: under `accumulate`
    or MultiSteps it would see the mean gradient with the last micro-batch's
    `value`, so give it the full batch's loss and gradient instead. Inside
    `partition` it is refused: ``value_fn`` takes the whole tree.

    optax's ``lbfgs`` runs one iteration per update (its zoom line search
    picks the step), so an update there is one of the up to `max_iter`
    iterations here. On the Rosenbrock function of the example (float32),
    five updates of ``optax.lbfgs()`` leave the loss at 5.7; five of
    ``lbfgs(line_search_fn="strong_wolfe")`` (44 iterations, 52 evaluations)
    reach 6e-13, and torch's five steps 3e-11: both at the minimum (1, 1) to
    float32 precision.

    Args:
        lr: the step length (>= 0; may be a schedule of the update count).
        max_iter: iterations per update (>= 1).
        max_eval: loss evaluations per update (>= 1); ``None``: torch's
            ``max_iter * 5 // 4``.
        tolerance_grad: stop when every gradient element is at most this (>= 0).
        tolerance_change: stop when the step or the loss changes less (>= 0).
        history_size: the pairs kept (>= 1).
        line_search_fn: ``None`` (a fixed step of `lr`) or ``"strong_wolfe"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> def rosenbrock(p):
        ...     return (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2
        >>> opt = O.lbfgs(line_search_fn="strong_wolfe")
        >>> params = {"x": jnp.array(-1.5), "y": jnp.array(2.0)}
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     loss, grads = jax.value_and_grad(rosenbrock)(params)
        ...     params, state = opt.step(grads, state, params, value=loss, value_fn=rosenbrock)
        >>> [round(float(params[k]), 4) for k in "xy"], int(state.n_iter), int(state.func_evals)
        ([1.0, 1.0], 42, 50)

    References:
        torch.optim.LBFGS (PyTorch 2.x), after minFunc; Nocedal & Wright,
        Numerical Optimization, algorithms 7.4 and 3.5-3.6.
    """

    lr: Hyper = field(HYPER, 1.0, check=NONNEG)
    max_iter: int = field(INT, 20)
    max_eval: int | None = field(INT, None)
    tolerance_grad: Hyper = field(HYPER, 1e-7, check=NONNEG)
    tolerance_change: Hyper = field(HYPER, 1e-9, check=NONNEG)
    history_size: int = field(INT, 100)
    line_search_fn: str | None = field(MAYBE_STR, None)

    reference = "torch.optim.LBFGS"

    def _validate(self) -> None:
        check_int(self, "max_iter", minimum=1)
        if self.max_eval is None:
            # torch's default, resolved at construction as torch does.
            set_field(self, "max_eval", min(self.max_iter * 5 // 4, INT32_MAX))
        check_int(self, "max_eval", minimum=1)
        check_int(self, "history_size", minimum=1)
        if self.line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(
                f"lbfgs: line_search_fn must be None or 'strong_wolfe', got {self.line_search_fn!r}"
            )

    def _record(self, count: jax.Array) -> Record:
        return Record((name, evaluate(getattr(self, name), count)) for name in _HYPERS)

    def init(self, params: Any) -> LBFGSState:
        """The initial state: torch's before its first step (no history, nothing evaluated)."""
        dtype, n = flat_layout("lbfgs.init", params)
        h = self.history_size
        vector, scalar = jnp.zeros(n, dtype), jnp.zeros((), dtype)
        count = zero_count()
        state = LBFGSState(
            count=count,
            func_evals=zero_count(),
            n_iter=zero_count(),
            d=vector,
            t=scalar,
            old_dirs=jnp.zeros((h, n), dtype),
            old_stps=jnp.zeros((h, n), dtype),
            ro=jnp.zeros(h, dtype),
            history_start=zero_count(),
            history_len=zero_count(),
            H_diag=jnp.ones((), dtype),
            prev_flat_grad=vector,
            prev_loss=scalar,
            hyperparams=self._record(count),
        )
        return distinct_arrays(state)  # a donated step takes each array once

    def update(
        self,
        updates: Any,
        state: Any,
        params: Any = None,
        *,
        value: Any = None,
        value_fn: Callable[[Any], Any] | None = None,
        **extra: Any,
    ) -> tuple[Any, LBFGSState]:
        """The deltas of one torch ``LBFGS.step(closure)`` and the new state.

        Args:
            updates: the gradients of the loss at `params`.
            state: from `init` or the previous update.
            params: the current parameters (required).
            value: the loss at `params` (the closure's first value).
            value_fn: ``params -> loss``, a scalar; evaluated (with its
                gradient) at each further point, as torch calls the closure.
            **extra: ignored (accepted for optax's extra-args protocol).
        """
        del extra
        owner = "lbfgs.update"
        if value_fn is None or value is None:
            raise ValueError(
                f"{owner} needs the loss and the loss function: update(grads, state, params, "
                "value=loss, value_fn=loss_fn), with loss, grads = "
                "jax.value_and_grad(loss_fn)(params); L-BFGS evaluates loss_fn again at the "
                "points it tries, where torch calls the closure"
            )
        if not callable(value_fn):
            raise TypeError(f"{owner}: value_fn must be a function of the params, got {value_fn!r}")
        if np.shape(value) != ():
            raise ValueError(f"{owner}: value must be the scalar loss, got shape {np.shape(value)}")
        if params is None:
            raise ValueError(f"{owner}: params are required (value_fn is evaluated near them)")
        if isinstance(params, Leaves):
            raise ValueError(
                f"{owner}: lbfgs cannot run inside partition: value_fn takes the whole "
                "parameter tree, and torch's LBFGS optimizes all parameters as one vector"
            )
        if not isinstance(state, LBFGSState):
            raise TypeError(f"{owner}: expected an LBFGSState, got {type(state).__name__}")
        check_tree(owner, updates, params, "params")
        _, n = flat_layout(owner, params)
        if state.d.shape != (n,) or state.old_dirs.shape[0] != self.history_size:
            raise ValueError(
                f"{owner}: the state was made for {state.d.shape[0]} parameters and a history "
                f"of {state.old_dirs.shape[0]}, not {n} and {self.history_size}; call init again"
            )
        if is_traced((updates, state, params, value, self)):
            return _update(self, updates, state, params, value, value_fn)
        try:
            hash(value_fn)
        except TypeError:  # not usable as a static argument: run it op by op
            return _update(self, updates, state, params, value, value_fn)
        return _compiled_update(self, updates, state, params, value, value_fn)


def _max_abs(v: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(v)) if v.size else jnp.zeros((), v.dtype)


class _Loop(NamedTuple):
    """The carry of torch's ``while n_iter < max_iter`` loop."""

    x: jax.Array
    loss: jax.Array
    g: jax.Array
    d: jax.Array
    t: jax.Array
    old_dirs: jax.Array
    old_stps: jax.Array
    ro: jax.Array
    start: jax.Array
    length: jax.Array
    H_diag: jax.Array
    prev_g: jax.Array
    prev_loss: jax.Array
    n_iter: jax.Array  # all steps' (torch's state["n_iter"])
    func_evals: jax.Array
    it: jax.Array  # this step's iterations
    evals: jax.Array  # this step's evaluations (torch's current_evals)
    stop: jax.Array


def _two_loop(c: _Loop, g: jax.Array, length: jax.Array, start: jax.Array) -> jax.Array:
    """``-H g`` by the two-loop recursion over the history, newest pair first, as torch."""
    h = c.old_dirs.shape[0]

    def newest_first(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> Any:
        q, al = carry
        i = length - 1 - k
        slot = (start + i) % h
        a = jnp.dot(c.old_stps[slot], q) * c.ro[slot]
        return q + (-a) * c.old_dirs[slot], al.at[i].set(a)

    def oldest_first(i: jax.Array, r: jax.Array) -> jax.Array:
        slot = (start + i) % h
        be = jnp.dot(c.old_dirs[slot], r) * c.ro[slot]
        return r + (al[i] - be) * c.old_stps[slot]

    q, al = jax.lax.fori_loop(0, length, newest_first, (-g, jnp.zeros(h, g.dtype)))
    return jax.lax.fori_loop(0, length, oldest_first, q * c.H_diag)


def _update(
    opt: lbfgs, grads: Any, state: LBFGSState, params: Any, value: Any, value_fn: Callable
) -> tuple[Any, LBFGSState]:
    dtype = state.d.dtype
    view = FlatView(params, dtype)
    flat, unflat = view.flatten, view.unflatten

    loss_shape = jax.eval_shape(value_fn, params)
    if (
        not hasattr(loss_shape, "shape")
        or loss_shape.shape != ()
        or not jnp.issubdtype(loss_shape.dtype, jnp.floating)
    ):
        raise ValueError(
            f"lbfgs.update: value_fn must return a scalar floating-point loss, got {loss_shape}"
        )

    def evaluate(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss, g = jax.value_and_grad(value_fn)(unflat(x))
        return jnp.asarray(loss).astype(dtype), flat(g)

    hp = opt._record(state.count)
    lr, tolerance_grad, tolerance_change = (hp[k].astype(dtype) for k in _HYPERS)
    max_iter, max_eval, h = opt.max_iter, opt.max_eval, opt.history_size

    def body(c: _Loop) -> _Loop:
        it = c.it + 1
        n_iter = increment(c.n_iter)
        first = n_iter == 1
        # The direction. The first iteration ever is steepest descent with an
        # empty history: the same arithmetic with nothing stored and H_diag 1.
        y = c.g - c.prev_g
        s = c.d * c.t
        ys = jnp.dot(y, s)
        push = (ys > 1e-10) & ~first
        full = c.length == h
        slot = jnp.where(full, c.start, (c.start + c.length) % h)
        start = jnp.where(first, 0, jnp.where(push & full, (c.start + 1) % h, c.start))
        length = jnp.where(first, 0, jnp.where(push, jnp.minimum(c.length + 1, h), c.length))
        c = c._replace(
            old_dirs=c.old_dirs.at[slot].set(jnp.where(push, y, c.old_dirs[slot])),
            old_stps=c.old_stps.at[slot].set(jnp.where(push, s, c.old_stps[slot])),
            ro=c.ro.at[slot].set(jnp.where(push, 1.0 / ys, c.ro[slot])),
            H_diag=jnp.where(first, 1, jnp.where(push, ys / jnp.dot(y, y), c.H_diag)).astype(dtype),
        )
        d = _two_loop(c, c.g, length, start)
        prev_g, prev_loss = c.g, c.loss
        # torch's min(1.0, 1 / |g|_1) (Python's min: a NaN gives 1.0).
        inverse = 1.0 / jnp.sum(jnp.abs(c.g))
        t = jnp.where(first, jnp.where(inverse < 1.0, inverse, 1.0) * lr, lr)
        gtd = jnp.dot(c.g, d)
        descend = ~(gtd > -tolerance_change)

        def move(_: Any) -> tuple[jax.Array, ...]:
            if opt.line_search_fn == "strong_wolfe":
                loss, g, step, evals = strong_wolfe(
                    lambda step: evaluate(c.x + step * d),
                    t,
                    d,
                    c.loss,
                    c.g,
                    gtd,
                    tolerance_change,
                    max_eval - c.evals,
                )
                return c.x + step * d, loss, g, step, evals, _max_abs(g) <= tolerance_grad
            x = c.x + t * d

            # The last iteration does not evaluate (torch: no use in a stochastic setting).
            def again(_: Any) -> tuple[jax.Array, ...]:
                loss, g = evaluate(x)
                return loss, g, jnp.ones((), jnp.int32), _max_abs(g) <= tolerance_grad

            def skip(_: Any) -> tuple[jax.Array, ...]:
                return c.loss, c.g, jnp.zeros((), jnp.int32), jnp.asarray(False)

            loss, g, evals, optimal = jax.lax.cond(it != max_iter, again, skip, None)
            return x, loss, g, t, evals, optimal

        def hold(_: Any) -> tuple[jax.Array, ...]:
            zero = jnp.zeros((), jnp.int32)
            return c.x, c.loss, c.g, t, zero, jnp.asarray(False)

        x, loss, g, t, evals, optimal = jax.lax.cond(descend, move, hold, None)
        current = c.evals + evals
        stop = (
            ~descend
            | (it == max_iter)
            | (current >= max_eval)
            | optimal
            | (_max_abs(d * t) <= tolerance_change)
            | (jnp.abs(loss - prev_loss) < tolerance_change)
        )
        return c._replace(
            x=x,
            loss=loss,
            g=g,
            d=d,
            t=t,
            start=start,
            length=length,
            prev_g=prev_g,
            prev_loss=prev_loss,
            n_iter=n_iter,
            func_evals=c.func_evals + evals,
            it=it,
            evals=current,
            stop=stop,
        )

    g0 = flat(grads)
    zero = jnp.zeros((), jnp.int32)
    init = _Loop(
        x=flat(params),
        loss=jnp.asarray(value).astype(dtype),
        g=g0,
        d=state.d,
        t=state.t,
        old_dirs=state.old_dirs,
        old_stps=state.old_stps,
        ro=state.ro,
        start=state.history_start,
        length=state.history_len,
        H_diag=state.H_diag,
        prev_g=state.prev_flat_grad,
        prev_loss=state.prev_loss,
        n_iter=state.n_iter,
        func_evals=increment(state.func_evals),
        it=zero,
        evals=jnp.ones((), jnp.int32),
        # Already optimal: torch returns before its loop.
        stop=_max_abs(g0) <= tolerance_grad,
    )
    c = jax.lax.while_loop(lambda c: ~c.stop, body, init)
    deltas = view.deltas(c.x)
    return deltas, LBFGSState(
        count=increment(state.count),
        func_evals=c.func_evals,
        n_iter=c.n_iter,
        d=c.d,
        t=c.t,
        old_dirs=c.old_dirs,
        old_stps=c.old_stps,
        ro=c.ro,
        history_start=c.start,
        history_len=c.length,
        H_diag=c.H_diag,
        prev_flat_grad=c.prev_g,
        prev_loss=c.prev_loss,
        hyperparams=hp,
    )


_compiled_update = jax.jit(_update, static_argnums=(5,))
