"""Building blocks: `chain`, `clip_by_global_norm`, `clip_by_value`.

Plus `foreign`, the internal holder that lets an optax transformation sit
inside a cadence `chain` or wrapper as a static part of the pytree.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple, final

import jax
import jax.numpy as jnp

from ._base import (
    HYPER,
    NONNEG,
    NORM,
    Transformation,
    as_float,
    as_transformation,
    compute_dtype,
    field,
    increment,
    register,
    set_field,
    transformation_type,
    zero_count,
)
from ._flatten import flatten
from ._groups import evaluate
from ._optimizer import Optimizer
from ._reductions import finish, leaf_partials, native_partials, partial_sum

__all__ = [
    "ChainState",
    "ClipByGlobalNormState",
    "ClipByValueState",
    "chain",
    "clip_by_global_norm",
    "clip_by_value",
]

Hyper = Any


class ChainState(NamedTuple):
    """`chain` state: the states of the chained transformations, in order."""

    inner: tuple[Any, ...]


@final
@dataclasses.dataclass(frozen=True, eq=True, init=False, repr=False)
class chain(Transformation):
    """Apply transformations one after another; optax's `chain` as a cadence value.

    Each transformation receives the previous one's output; extra keyword
    arguments of `update` reach every one of them. optax transformations may be
    chained too (they make the chain unserializable, and `hyperparams` does not
    see inside them).

    Args:
        *txs: the transformations, cadence or optax.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.sgd(0.5))
        >>> params = jnp.zeros(2)
        >>> updates, state = opt.update(jnp.array([3.0, 4.0]), opt.init(params), params)
        >>> updates
        Array([-0.3, -0.4], dtype=float32)
    """

    txs: tuple[Any, ...] = field("children")

    def __init__(self, *txs: Any) -> None:
        set_field(
            self,
            "txs",
            tuple(as_transformation("chain", f"txs[{i}]", t) for i, t in enumerate(txs)),
        )

    def init(self, params: Any) -> ChainState:
        return ChainState(tuple(tx.init(params) for tx in self.txs))

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, ChainState]:
        self._check_state(state, "update")
        new = []
        for tx, s in zip(self.txs, state.inner, strict=True):
            updates, s = tx.update(updates, s, params, **extra)
            new.append(s)
        return updates, ChainState(tuple(new))

    def step(self, grads: Any, state: Any, params: Any, **extra: Any) -> tuple[Any, ChainState]:
        """`update` through all but the last transformation, then the last one's `step`.

        A chain ending in an optimizer (``chain(clip_by_global_norm(1.0), adamw())``)
        thus updates each leaf in one pass on CPU, as `Optimizer.step` does. A
        `clip_by_global_norm` right before the optimizer hands it its
        coefficient, which the kernel applies to each gradient as it reads it:
        XLA's `update` recomputes that product in each loop and fuses it into a
        multiply-add. On one CPU device the norm's sums over small leaves are
        native calls too (float64 accumulation). The two paths agree to
        float32 rounding.
        """
        self._check_state(state, "step")
        if not self.txs:
            return super().step(grads, state, params, **extra)
        *head, last = self.txs
        # clip_by_global_norm right before an optimizer: the optimizer's
        # kernel multiplies each gradient by the coefficient as it reads it,
        # instead of a pass that writes the clipped gradients out.
        defer = bool(head) and type(head[-1]) is clip_by_global_norm
        defer = defer and isinstance(last, (Optimizer, flatten))
        updates, new = grads, []
        for tx, s in zip(head[:-1] if defer else head, state.inner, strict=False):
            updates, s = tx.update(updates, s, params, **extra)
            new.append(s)
        if defer:
            coef, s = head[-1]._coefficient(updates, state.inner[len(head) - 1], native=True)
            new.append(s)
            params, s = last._step(updates, state.inner[-1], params, coef)
        else:
            params, s = last.step(updates, state.inner[-1], params, **extra)
        return params, ChainState((*new, s))

    def _config(self, where: str) -> dict[str, Any]:
        return {
            "type": "chain",
            "txs": [t._config(f"{where}.txs[{i}]") for i, t in enumerate(self.txs)],
        }

    def _check_state(self, state: Any, method: str) -> None:
        if not isinstance(state, ChainState) or len(state.inner) != len(self.txs):
            raise ValueError(
                f"chain.{method}: expected a ChainState of {len(self.txs)} states, got "
                f"{type(state).__name__}; call init first"
            )

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.txs))})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (chain, self.txs)


jax.tree_util.register_pytree_node(chain, lambda c: (c.txs, None), lambda _, txs: chain(*txs))
register(chain)


class ClipByGlobalNormState(NamedTuple):
    """`clip_by_global_norm` state: the count, the last total norm (before clipping)."""

    count: jax.Array
    norm: jax.Array
    hyperparams: dict[str, Any]


def global_norm(tree: Any, p: float = 2.0, native: bool = False) -> jax.Array:
    """torch's total norm: the p-norm of the per-leaf p-norms (float32 or wider).

    On a sharded tree the per-leaf sums travel in one all-reduce (see
    `leaf_partials`). With `native`, a one-device CPU sums small leaves in
    native calls of 16 leaves each (`native_partials`): XLA compiles one
    reduction per leaf, most of a clipped step's compile time on a large
    tree; the sums then round differently (float64 accumulation).
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return as_float(0.0)
    leaves = [jnp.asarray(g) for g in leaves]
    sums = native_partials(leaves, p) if native else None
    if sums is not None:
        return as_float(finish(partial_sum(finish(sums, p), p), p))
    leaves = [g.astype(compute_dtype(g.dtype)) for g in leaves]
    norms = [finish(s, p) for s in leaf_partials(leaves, p)]
    return as_float(finish(partial_sum(jnp.stack(norms), p), p))


def _check_norm_type(obj: Any) -> None:
    p = obj.norm_type
    if isinstance(p, str) and p.lower() == "inf":
        p = math.inf
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"clip_by_global_norm: norm_type must be a number or inf, got {p!r}")
    if not p > 0:
        raise ValueError(f"clip_by_global_norm: norm_type must be > 0, got {p!r}")
    set_field(obj, "norm_type", float(p))


@transformation_type
class clip_by_global_norm(Transformation):
    """Scale the gradients so their total norm is at most `max_norm`: torch's ``clip_grad_norm_``.

    .. math::
        n = \\big\\| (\\|g_1\\|_p, \\dots, \\|g_k\\|_p) \\big\\|_p, \\quad
        g_i \\leftarrow g_i \\cdot \\min\\left(1, \\frac{\\text{max\\_norm}}{n + 10^{-6}}\\right)

    The coefficient is always multiplied in (torch does the same, to avoid a
    branch), so gradients below the limit are scaled by ``max_norm / (n +
    1e-6)`` clamped at 1, i.e. left unchanged. The state keeps the total norm
    `n` of the last update (torch's return value).

    Args:
        max_norm: the largest allowed total norm (>= 0; may be a schedule).
        norm_type: p of the p-norm: 1, 2, ``inf`` or any p > 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> clip = O.clip_by_global_norm(1.0, norm_type=float("inf"))
        >>> g = {"a": jnp.array([4.0, -1.0]), "b": jnp.array([2.0])}
        >>> updates, state = clip.update(g, clip.init(g))
        >>> float(state.norm), updates["a"]  # torch's + 1e-6 keeps the norm just below 1
        (4.0, Array([ 0.99999976, -0.24999994], dtype=float32))
    """

    max_norm: Hyper = field(HYPER, check=NONNEG)
    norm_type: float = field(NORM, 2.0)

    def _validate(self) -> None:
        _check_norm_type(self)

    def init(self, params: Any) -> ClipByGlobalNormState:
        count = zero_count()
        hp = {"max_norm": evaluate(self.max_norm, count)}
        return ClipByGlobalNormState(count, as_float(0.0), hp)

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, ClipByGlobalNormState]:
        del params, extra
        coef, state = self._coefficient(updates, state)
        clipped = jax.tree.map(
            lambda g: (g.astype(compute_dtype(g.dtype)) * coef).astype(g.dtype), updates
        )
        return clipped, state

    def _coefficient(
        self, updates: Any, state: Any, native: bool = False
    ) -> tuple[jax.Array, ClipByGlobalNormState]:
        """The factor `update` multiplies every gradient by, and the new state.

        `native`: sum the gradients with the CPU kernels (`global_norm`).
        """
        max_norm = evaluate(self.max_norm, state.count)
        total = global_norm(updates, self.norm_type, native)
        coef = jnp.minimum(max_norm / (total + 1e-6), 1.0)
        return coef, ClipByGlobalNormState(increment(state.count), total, {"max_norm": max_norm})


class ClipByValueState(NamedTuple):
    """`clip_by_value` state: the count (for a scheduled limit)."""

    count: jax.Array
    hyperparams: dict[str, Any]


@transformation_type
class clip_by_value(Transformation):
    """Clamp every gradient element to ``[-v, v]``: torch's ``clip_grad_value_``.

    Args:
        v: the limit (>= 0; may be a schedule).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> clip = O.clip_by_value(0.5)
        >>> g = jnp.array([-2.0, 0.1, 3.0])
        >>> clip.update(g, clip.init(g))[0]
        Array([-0.5,  0.1,  0.5], dtype=float32)
    """

    v: Hyper = field(HYPER, check=NONNEG)

    def init(self, params: Any) -> ClipByValueState:
        count = zero_count()
        return ClipByValueState(count, {"v": evaluate(self.v, count)})

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, ClipByValueState]:
        del params, extra
        v = evaluate(self.v, state.count)

        def clamp(g: jax.Array) -> jax.Array:
            g32 = g.astype(compute_dtype(g.dtype))
            return jnp.clip(g32, -v, v).astype(g.dtype)

        return jax.tree.map(clamp, updates), ClipByValueState(increment(state.count), {"v": v})
