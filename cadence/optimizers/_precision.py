"""Mixed precision: `master_weights` (a float32 copy of low-precision parameters) and
`loss_scale` (torch.amp.GradScaler's dynamic loss scaling), with `scale_loss`.

Both hold their inner transformation's state in a field named ``inner``, so
`hyperparams`, checkpoints and sharding see through them as through the
other wrappers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._base import (
    CHILD,
    DTYPE,
    FLOAT,
    INT,
    Transformation,
    check_int,
    dtype_of,
    field,
    float_dtype,
    transformation_type,
    zero_count,
    zeros_like_output,
)
from ._groups import is_variable, leaf_paths
from ._trees import Leaves, distinct_arrays
from ._wrappers import all_finite, cond

__all__ = ["LossScaleState", "MasterWeightsState", "loss_scale", "master_weights", "scale_loss"]


class MasterWeightsState(NamedTuple):
    """`master_weights` state: the wide copies by parameter path, and the inner state.

    Only low-precision parameters have a copy: `master` is empty for a tree
    of float32 parameters.
    """

    master: Leaves
    inner: Any


@transformation_type
class master_weights(Transformation):
    """Keep a float32 master copy of every bfloat16/float16 parameter, and optimize that.

    `tx` updates the master copy, seeing the gradients upcast to `dtype`: its
    state (moments, count) and arithmetic are those of a float32 run, and the
    master copy equals, bit for bit, the parameters of a float32 run of `tx`
    on the same upcast gradients. The new parameters are the master copy
    rounded to their own dtype, so small updates accumulate in the copy
    instead of being lost to bfloat16 rounding. Parameters already as wide
    as `dtype` have no copy (float32 parameters: no state, the same numbers
    as `tx` alone).

    `step` returns the rounded master copy itself. `update` returns, for each
    low-precision parameter, ``rounded_new_master - params`` in `dtype`,
    which `optax.apply_updates` (it adds in float32, then rounds to the
    parameter's dtype) turns exactly into the rounded master copy whenever
    that difference is exact in float32: always, unless a parameter shrinks
    in one step by more than 2**15 (bfloat16) or 2**12 (float16) times,
    e.g. crossing zero onto a much smaller value; there it may land off by
    up to a float32 rounding of the old magnitude, which the next update,
    computed from the master copy, corrects. The master copy is unaffected.

    Put it inside `loss_scale` and outside `accumulate` (whose sum is then
    float32 too): ``loss_scale(master_weights(accumulate(adamw(...), 4)))``.

    Args:
        tx: the transformation to wrap (an optimizer, or a chain holding one).
        dtype: the master copies' dtype: float32 (default) or float64.

    Raises:
        ValueError: at construction for a `dtype` narrower than 4 bytes; at
            `init` for a parameter wider than `dtype` (float64 parameters with
            a float32 copy), naming its path.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> def train(opt):  # ten steps of 1e-3, each below bfloat16's resolution at 1.0
        ...     params = jnp.ones(1, jnp.bfloat16)
        ...     state = opt.init(params)
        ...     for _ in range(10):
        ...         params, state = opt.step(jnp.ones(1, jnp.bfloat16), state, params)
        ...     return params, state
        >>> train(O.sgd(1e-3))[0]
        Array([1], dtype=bfloat16)
        >>> params, state = train(O.master_weights(O.sgd(1e-3)))
        >>> params, state.master[""]
        (Array([0.988281], dtype=bfloat16), Array([0.9900001], dtype=float32))
    """

    tx: Any = field(CHILD)
    dtype: Any = field(DTYPE, "float32")

    def _validate(self) -> None:
        if self.dtype is None or jnp.dtype(self.dtype).itemsize < 4:
            raise ValueError(
                f"master_weights: dtype must be float32 or float64 (a copy wider than "
                f"bfloat16/float16 parameters), got {self.dtype}"
            )

    def init(self, params: Any) -> MasterWeightsState:
        wide = jnp.dtype(self.dtype)
        if jax.dtypes.canonicalize_dtype(wide) != wide:
            raise ValueError(
                f"master_weights: dtype {wide.name} needs jax_enable_x64 (without it JAX "
                "makes float32 arrays)"
            )
        master = {}
        for path, p in zip(leaf_paths(params), jax.tree.leaves(params), strict=True):
            dtype = dtype_of(p)
            if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize == wide.itemsize:
                continue
            if dtype.itemsize > wide.itemsize:
                raise ValueError(
                    f"master_weights: the parameter at {path!r} is {dtype.name}, wider than "
                    f"dtype {wide.name}: a master copy would lose its precision; pass "
                    f"dtype=jnp.{dtype.name}, or route this parameter elsewhere (O.partition)"
                )
            master[path] = jnp.asarray(p).astype(wide)
        master = Leaves(master)
        return MasterWeightsState(master, self.tx.init(_substitute(params, master)))

    def _inner_args(self, grads: Any, state: Any, params: Any, owner: str) -> tuple[Any, Any]:
        """The gradients upcast where a master copy exists, and the parameters it replaces."""
        if not isinstance(state, MasterWeightsState):
            raise TypeError(
                f"{owner}: expected a MasterWeightsState, got {type(state).__name__}; call init"
            )
        master = state.master
        paths = leaf_paths(grads)
        unknown = sorted(set(master) - set(paths))
        if unknown:
            raise ValueError(
                f"{owner}: grads have no leaf at {unknown[0]!r}, where the state holds a "
                "master copy; call init with the parameters the gradients are of"
            )
        leaves, treedef = jax.tree.flatten(grads)
        upcast = [
            jnp.asarray(g).astype(master[k].dtype) if k in master else g
            for k, g in zip(paths, leaves, strict=True)
        ]
        if params is None and master:
            raise ValueError(
                f"{owner}: params are required (the updates are the new rounded master "
                "copy minus the parameters)"
            )
        return treedef.unflatten(upcast), _substitute(params, master)

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, MasterWeightsState]:
        owner = "master_weights.update"
        grads, inner_params = self._inner_args(updates, state, params, owner)
        out, inner = self.tx.update(grads, state.inner, inner_params, **extra)
        master = state.master
        if not master:
            return out, MasterWeightsState(master, inner)
        paths = leaf_paths(out)
        deltas, treedef = jax.tree.flatten(out)
        new_master, final = {}, []
        for k, u, p in zip(paths, deltas, jax.tree.leaves(params), strict=True):
            if k not in master:
                final.append(u)
                continue
            m = master[k]
            # optax.apply_updates' sum, in the master's dtype: the float32 run's parameter.
            new_master[k] = (m + jnp.asarray(u).astype(m.dtype)).astype(m.dtype)
            rounded = new_master[k].astype(jnp.asarray(p).dtype)
            final.append(rounded.astype(m.dtype) - jnp.asarray(p).astype(m.dtype))
        return treedef.unflatten(final), MasterWeightsState(Leaves(new_master), inner)

    def step(
        self, grads: Any, state: Any, params: Any, **extra: Any
    ) -> tuple[Any, MasterWeightsState]:
        """The new parameters (the new master copy, rounded) and state; `tx`'s own `step`."""
        owner = "master_weights.step"
        grads, inner_params = self._inner_args(grads, state, params, owner)
        stepped, inner = self.tx.step(grads, state.inner, inner_params, **extra)
        master = state.master
        if not master:
            return stepped, MasterWeightsState(master, inner)
        paths = leaf_paths(stepped)
        leaves, treedef = jax.tree.flatten(stepped)
        new_master = Leaves({k: x for k, x in zip(paths, leaves, strict=True) if k in master})
        rounded = [
            jnp.asarray(x).astype(jnp.asarray(p).dtype) if k in master else x
            for k, x, p in zip(paths, leaves, jax.tree.leaves(params), strict=True)
        ]
        return treedef.unflatten(rounded), MasterWeightsState(new_master, inner)


def _substitute(params: Any, master: Leaves) -> Any:
    """`params` with each leaf that has a master copy replaced by the copy."""
    if params is None or not master:
        return params
    leaves, treedef = jax.tree.flatten(params)
    paths = leaf_paths(params)
    return treedef.unflatten([master.get(k, p) for k, p in zip(paths, leaves, strict=True)])


class LossScaleState(NamedTuple):
    """`loss_scale` state: GradScaler's scale and growth tracker, and the inner state."""

    scale: jax.Array
    growth_tracker: jax.Array
    inner: Any

    # For `hyperparams`: values it reports, by the state field holding them.
    hyperparam_fields = {"loss_scale": "scale"}  # noqa: RUF012 (a class constant)


@transformation_type
class loss_scale(Transformation):
    """torch.amp.GradScaler's dynamic loss scaling around `tx`.

    Differentiate ``O.scale_loss(loss, state)`` (the loss times the current
    scale) and pass those gradients to `update`. It unscales them (multiplies
    by the reciprocal of the scale, in float32 or wider; the unscaled
    gradients are float32 for bfloat16/float16 ones), and:

    - if any gradient holds an inf or a NaN, skips the step: zero updates,
      the inner state (count, moments, schedules) exactly as it was, as
      GradScaler skips ``optimizer.step()``; the scale is multiplied by
      `backoff_factor` and the growth tracker reset;
    - otherwise `tx` updates on the unscaled gradients, and after
      `growth_interval` consecutive finite steps the scale is multiplied by
      `growth_factor` (unless that overflows float32) and the tracker reset.

    The scale is float32, as torch's; `O.hyperparams(state)["loss_scale"]`
    gives the scale the next `scale_loss` uses (``scaler.get_scale()``).
    torch multiplies the scale by a factor in float64: so does this under
    `jax_enable_x64`; without it, in float32, which gives the same scales for
    factors exact in float32 (the defaults, any power of two) and may differ
    by a float32 rounding per change for others (e.g. 0.3).

    Schedules: a skipped step leaves the inner count as it was, so the
    schedules of `tx` count the steps taken, not the iterations. A torch
    scheduler stepped every iteration advances on skipped steps too; to get
    that, build the optimizer inside the step with the learning rate at your
    own iteration counter (hyperparameters are pytree leaves: no recompile)::

        opt = O.loss_scale(O.adamw(schedule(iteration)))

    Args:
        tx: the transformation to wrap (an optimizer, a `master_weights`, ...).
        init_scale: the first scale (> 0, finite in float32).
        growth_factor: the scale's growth (> 1).
        backoff_factor: the scale's shrink on a non-finite step, in (0, 1).
        growth_interval: consecutive finite steps before growing (>= 1).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.loss_scale(O.sgd(0.5), init_scale=1024.0)
        >>> params = jnp.ones(2)
        >>> state = opt.init(params)
        >>> grads = jax.grad(lambda p: O.scale_loss(jnp.sum(p**2), state))(params)
        >>> params, state = opt.step(grads, state, params)
        >>> params, float(O.hyperparams(state)["loss_scale"])
        (Array([0., 0.], dtype=float32), 1024.0)
        >>> params, state = opt.step(jnp.array([jnp.inf, 1.0]), state, params)  # skipped
        >>> params, float(O.hyperparams(state)["loss_scale"])
        (Array([0., 0.], dtype=float32), 512.0)

    References:
        torch.amp.GradScaler (PyTorch 2.x): ``unscale_``, ``step``, ``update``
        (``torch._amp_update_scale_``).
    """

    tx: Any = field(CHILD)
    init_scale: float = field(FLOAT, 2.0**16)
    growth_factor: float = field(FLOAT, 2.0)
    backoff_factor: float = field(FLOAT, 0.5)
    growth_interval: int = field(INT, 2000)

    def _validate(self) -> None:
        check_int(self, "growth_interval", minimum=1)
        scale = self.init_scale
        f32 = np.finfo(np.float32)
        if isinstance(scale, float) and not float(f32.tiny) <= scale <= float(f32.max):
            raise ValueError(
                f"loss_scale: init_scale must be > 0 and finite in float32 (the scale's "
                f"dtype): between {f32.tiny} and {f32.max}, got {scale!r}"
            )
        growth = self.growth_factor
        if isinstance(growth, float) and not growth > 1:
            raise ValueError(f"loss_scale: growth_factor must be > 1, got {growth!r}")
        backoff = self.backoff_factor
        if isinstance(backoff, float) and not 0 < backoff < 1:
            raise ValueError(f"loss_scale: backoff_factor must be in (0, 1), got {backoff!r}")

    def init(self, params: Any) -> LossScaleState:
        scale = jnp.asarray(self.init_scale, jnp.float32)
        return LossScaleState(scale, zero_count(), distinct_arrays(self.tx.init(params)))

    def _unscale(self, grads: Any, state: Any, owner: str) -> tuple[Any, jax.Array]:
        """The unscaled gradients, and whether every scaled one was finite (torch's check)."""
        if not isinstance(state, LossScaleState):
            raise TypeError(
                f"{owner}: expected a LossScaleState, got {type(state).__name__}; call init"
            )
        # torch takes the reciprocal in float64 and rounds it to float32: the
        # same number as float32's correctly rounded division.
        inv = jnp.float32(1.0) / state.scale
        unscaled = jax.tree.map(
            lambda g: jnp.asarray(g).astype(jnp.promote_types(dtype_of(g), jnp.float32)) * inv,
            grads,
        )
        return unscaled, all_finite(grads)

    def _next(self, state: Any, finite: jax.Array, inner: Any) -> LossScaleState:
        """torch._amp_update_scale_: back off on a skip, grow after an interval of finite steps."""
        scale = state.scale
        tracker = state.growth_tracker + 1
        grow = finite & (tracker >= self.growth_interval)

        def times(factor: float) -> jax.Array:
            # torch multiplies in float64: so do we where JAX has it (x64).
            wide = float_dtype()
            return (scale.astype(wide) * jnp.asarray(factor, wide)).astype(jnp.float32)

        grown = times(self.growth_factor)
        new_scale = jnp.where(
            finite,
            jnp.where(grow & jnp.isfinite(grown), grown, scale),
            times(self.backoff_factor),
        )
        new_tracker = jnp.where(finite & ~grow, tracker, 0).astype(jnp.int32)
        return LossScaleState(new_scale, new_tracker, inner)

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, LossScaleState]:
        grads, finite = self._unscale(updates, state, "loss_scale.update")

        def apply(inner: Any) -> Any:
            return self.tx.update(grads, inner, params, **extra)

        def skip(inner: Any) -> Any:
            return zeros_like_output(apply, inner)[0], inner

        out, inner = cond(finite, apply, skip, state.inner)
        return out, self._next(state, finite, inner)

    def step(self, grads: Any, state: Any, params: Any, **extra: Any) -> tuple[Any, LossScaleState]:
        """The new parameters and state: `tx`'s own `step` on a finite step, else nothing."""
        grads, finite = self._unscale(grads, state, "loss_scale.step")

        def apply(operand: Any) -> Any:
            params, inner = operand
            return self.tx.step(grads, inner, params, **extra)

        new_params, inner = cond(finite, apply, lambda operand: operand, (params, state.inner))
        return new_params, self._next(state, finite, inner)


def scale_loss(loss: Any, state: Any) -> jax.Array:
    """The loss times the current loss scale of the `loss_scale` in `state`.

    Differentiate this (GradScaler's ``scaler.scale(loss)``) and pass the
    gradients to the optimizer's `update` or `step`, which unscales them. The
    product is float32 (or the loss's dtype, if wider), so that a float16
    loss does not overflow before its gradients are taken. The state is
    searched through every wrapper, chain and partition.

    Args:
        loss: a floating-point array (the loss, or any output to scale).
        state: the state of an optimizer holding exactly one `loss_scale`.

    Raises:
        ValueError: if `state` holds no `loss_scale` state, or more than one.
        TypeError: if `loss` is not floating-point.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.loss_scale(O.adamw(1e-3)))
        >>> O.scale_loss(jnp.asarray(0.5, jnp.float16), opt.init(jnp.zeros(3)))
        Array(32768., dtype=float32)
    """
    found = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, LossScaleState))
        if isinstance(s, LossScaleState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"scale_loss: the state holds {len(found)} loss_scale states; it needs exactly "
            "one (build the optimizer with O.loss_scale(...))"
        )
    scale = found[0].scale
    scale = scale.get_value() if is_variable(scale) else scale
    loss = jnp.asarray(loss)
    if not jnp.issubdtype(loss.dtype, jnp.floating):
        raise TypeError(f"scale_loss: loss must be floating-point, got {loss.dtype}")
    return loss.astype(jnp.promote_types(loss.dtype, jnp.float32)) * scale
