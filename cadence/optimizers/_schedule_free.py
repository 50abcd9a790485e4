"""Schedule-free AdamW and SGD (the `schedulefree` package), and their evaluation point.

Schedule-free training keeps two sequences per parameter: `z`, the base
optimizer's iterate, and `x`, a weighted average of the `z`s; gradients are
taken at `y`, an interpolation of the two. As in `schedulefree`, the
parameters a training loop steps on are `y`, the state keeps `z`, and `x` is
recovered from both when it is needed (`schedule_free_eval_params`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import (
    DTYPE,
    GROUPS,
    HYPER,
    INT,
    NONNEG,
    UNIT,
    as_float,
    check_int,
    compute_dtype,
    dtype_of,
    field,
    is_zero,
    transformation_type,
)
from ._groups import leaf_paths, pick
from ._leaf import torch_lerp
from ._optimizer import Optimizer
from ._trees import Leaves, inner_states, is_traced

__all__ = [
    "ScheduleFreeAdamWState",
    "ScheduleFreeSGDState",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class ScheduleFreeAdamWState(NamedTuple):
    """`schedule_free_adamw` state: `z`, the second moment, and per group `lr_max`, `weight_sum`."""

    count: jax.Array
    z: Any
    nu: Any
    lr_max: tuple[jax.Array, ...]
    weight_sum: tuple[jax.Array, ...]
    hyperparams: dict[str, Any]

    # The hyperparameter that interpolates y between x and z.
    interpolation = "b1"


class ScheduleFreeSGDState(NamedTuple):
    """`schedule_free_sgd` state: `z`, and per group `lr_max` and `weight_sum`."""

    count: jax.Array
    z: Any
    lr_max: tuple[jax.Array, ...]
    weight_sum: tuple[jax.Array, ...]
    hyperparams: dict[str, Any]

    interpolation = "momentum"


class _ScheduleFree(Optimizer):
    """What both rules share: the warmup, the averaging weights, `z` starting at the parameters.

    A concrete rule names its interpolation hyperparameter (`_interpolation`,
    in (0, 1)) and writes `kernel` from the scalars `_averaging` gives.
    """

    shared = ("lr_max", "weight_sum")
    # y moves towards z by a fraction of z - y: the parameters enter every
    # update unless lr is the number 0 (nothing then moves, and z stays y).
    _decay = ("lr",)
    _interpolation: ClassVar[str]

    warmup_steps: int

    def __post_init__(self) -> None:
        super().__post_init__()
        # At 0, y is z and the average x cannot be recovered from them
        # (schedulefree divides by it in eval()); checked after the groups
        # are built, so a group's value is checked too.
        name = self._interpolation
        for value in self._all(name):
            if is_zero(value):
                raise ValueError(f"{type(self).__name__}: {name} must be in (0, 1), got 0.0")

    def _validate(self) -> None:
        check_int(self, "warmup_steps", minimum=0)

    def init(self, params: Any) -> Any:
        """The initial state: `z` a copy of the parameters, the other buffers zero."""
        state = super().init(params)
        # A copy, not the parameters' own buffers: the state may be donated
        # with the parameters.
        z = jax.tree.map(lambda p, b: jnp.array(p, dtype=b.dtype), params, state.z)
        return state._replace(z=z)

    def init_shared(self, hp):
        # schedulefree's initial lr_max is -1: the first update's lr replaces it.
        return {"lr_max": -1.0, "weight_sum": 0.0}

    def _lr(self, hp: dict[str, jax.Array], count: jax.Array) -> jax.Array:
        """The lr of update ``count + 1``: the linear warmup over `warmup_steps`, then `lr`."""
        if self.warmup_steps == 0:
            return hp["lr"]
        t = as_float(count) + 1
        return hp["lr"] * jnp.where(count < self.warmup_steps, t / self.warmup_steps, 1.0)

    def _weight(self, hp: dict[str, jax.Array], count: jax.Array) -> jax.Array:
        """This update's weight in the average: ``(k + 1)^r * lr_max^weight_lr_power``."""
        t = as_float(count) + 1
        return t ** hp["r"] * hp["lr_max"] ** hp["weight_lr_power"]

    def advance(self, hp, count, shared):
        lr_max = jnp.maximum(self._lr(hp, count), shared["lr_max"])
        weight = self._weight(hp | {"lr_max": lr_max}, count)
        return {"lr_max": lr_max, "weight_sum": shared["weight_sum"] + weight}

    def _averaging(self, hp: dict[str, jax.Array], count: jax.Array) -> dict[str, jax.Array]:
        """The per-group scalars of both rules; `hp` holds `lr_max` and `weight_sum` as advanced.

        ``ckp1`` is the new iterate's weight in the average (0 while every
        weight is 0, as schedulefree's ZeroDivisionError fallback);
        ``y_step`` multiplies the gradient in y's update.
        """
        lr = self._lr(hp, count)
        total = hp["weight_sum"]
        empty = total == 0
        ckp1 = jnp.where(empty, 0.0, self._weight(hp, count) / jnp.where(empty, 1.0, total))
        beta = hp[self._interpolation]
        # schedulefree moves y towards the old z, then along the gradient by
        # lr (beta (1 - ckp1) - 1). Towards the new z (z - lr g) that step is
        # -lr (1 - ckp1)(1 - beta): the same y, but the loop that writes y
        # reads z after the loop that overwrites z in place, so XLA needs no
        # copy of either (the old form reads each buffer before the other's
        # loop writes it: a cycle XLA breaks with a copy of both).
        return hp | {"ckp1": ckp1, "y_step": -lr * (1 - ckp1) * (1 - beta), "-lr": -lr}

    def _move(self, p, g, z, s, keep):
        """y and z after one step along the (normalized, decayed) gradient `g`."""
        z = z + s["-lr"] * g
        stored = keep("z", z)
        if p is None:
            # lr is the number 0 here: y has not left z, and the step is 0.
            return s["y_step"] * g, stored
        # y from the new z before a narrower state dtype rounds it:
        # schedulefree computes y from the old z, never from a rounded new one.
        y = torch_lerp(p, z, s["ckp1"]) + s["y_step"] * g
        return y - p, stored


@transformation_type
class schedule_free_adamw(_ScheduleFree):
    """Schedule-free AdamW: schedulefree's AdamWScheduleFree (no lr schedule needed).

    With update number :math:`t = k + 1`:

    .. math::
        \\eta_t &= \\eta \\min(1, t / \\text{warmup\\_steps}), \\quad
        \\hat\\eta_t = \\max(\\hat\\eta_{t-1}, \\eta_t), \\quad
        w_t = t^r \\hat\\eta_t^{\\,\\text{weight\\_lr\\_power}}, \\quad
        c_t = w_t / \\textstyle\\sum_{i \\le t} w_i \\\\
        v_t &= \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        \\hat g_t = \\frac{g_t}{\\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon} + \\lambda y_{t-1} \\\\
        y_t &= (1 - c_t) y_{t-1} + c_t z_{t-1}
               + \\eta_t (\\beta_1 (1 - c_t) - 1) \\hat g_t, \\quad
        z_t = z_{t-1} - \\eta_t \\hat g_t

    with :math:`z_0 = y_0` the initial parameters (and no warmup factor when
    ``warmup_steps=0``). The parameters are `y`
    (schedulefree's train mode): gradients are taken there and `update`
    moves them. Evaluate at :math:`x = (y - (1 - \\beta_1) z) / \\beta_1`,
    the weighted average of the `z`s: `schedule_free_eval_params` (its
    ``optimizer.eval()``). Weight decay is applied at `y`, inside the
    normalized gradient, as schedulefree does. The state keeps `z`, the
    second moment `nu`, and per parameter group ``lr_max`` and
    ``weight_sum`` (schedulefree's group entries; its ``k`` is the count).
    `O.hyperparams` reports ``lr`` before the warmup's factor. The update
    is not linear in lr (lr also moves z and weighs the average), so
    `O.reduce_on_plateau`, which scales updates, does not apply to it.

    optax's ``contrib.schedule_free_adamw`` has no `r`, and its
    `warmup_steps` trap: the warmup is a schedule counted from 0 inside its
    base optimizer while its averaging weights count from 1, so its first
    update is zero and it drifts from schedulefree (by about 19% at update
    12, as it has been reported). Measured here in float64 on the parity
    suite's closed-loop least squares (150 updates, lr 0.02):
    without warmup it is 4.1e-15 of the largest parameter away (the same
    algorithm); with ``warmup_steps=10`` (b1 0.8, weight decay 0.05) its
    first update is 0, and at update 12 it is 16% of the distance
    schedulefree's parameters have travelled away from them (1.2% of the
    largest parameter), 1.6% at update 150. cadence matches schedulefree.

    Args:
        lr: learning rate (>= 0).
        b1: interpolation of y between x and z, in (0, 1) (schedulefree's
            ``betas[0]``; the momentum).
        b2: decay of the second moment, in [0, 1) (``betas[1]``).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: L2 penalty on y, added to the normalized gradient (>= 0).
        warmup_steps: updates of linear warmup of the lr (>= 0).
        r: power of the update number in the averaging weights (>= 0).
        weight_lr_power: power of the largest lr so far in the averaging
            weights (>= 0; 0: no weighting by the warmup's lr).
        state_dtype: dtype of `z` and `nu` (default: the parameter's, as
            schedulefree); `z` is parameter-sized, so a narrower dtype rounds
            the average x.
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.schedule_free_adamw(0.1)
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> state = opt.init(params)
        >>> for g in ([3.0, -0.5], [1.0, 1.0]):
        ...     updates, state = opt.update({"w": jnp.array(g)}, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> print(params["w"], state.z["w"])
        [ 0.8754 -0.9696] [ 0.8553 -1.0265]
        >>> print(O.schedule_free_eval_params(state, params)["w"])
        [ 0.8776 -0.9632]

    References:
        schedulefree 1.4.1, ``AdamWScheduleFree``; Defazio et al., "The
        Road Less Scheduled", 2024.
    """

    reference: ClassVar[str] = "schedulefree.AdamWScheduleFree"
    State = ScheduleFreeAdamWState
    per_leaf = ("z", "nu")
    _interpolation = "b1"

    lr: Hyper = field(HYPER, 2.5e-3, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.999, check=UNIT)
    eps: Hyper = field(HYPER, 1e-8, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    warmup_steps: int = field(INT, 0)
    r: Hyper = field(HYPER, 0.0, check=NONNEG)
    weight_lr_power: Hyper = field(HYPER, 2.0, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def scalars(self, hp, count):
        t = as_float(count) + 1
        return self._averaging(hp, count) | {
            "1-b2": 1 - hp["b2"],
            # schedulefree divides by 1 - b2^t under the square root; the
            # product with rsqrt rounds the same in every program (see `adam`).
            "1/bc2_sqrt": jax.lax.rsqrt(1 - hp["b2"] ** t),
        }

    def kernel(self, p, g, bufs, s, keep):
        # torch's addcmul_ order, (1 - b2) * g first (see `adam`).
        nu = keep("nu", s["b2"] * bufs["nu"] + (s["1-b2"] * g) * g)
        g = g / (jnp.sqrt(nu) * s["1/bc2_sqrt"] + s["eps"])
        if p is not None and self._nonzero("weight_decay"):
            g = g + s["weight_decay"] * p
        update, z = self._move(p, g, bufs["z"], s, keep)
        return update, {"z": z, "nu": nu}


@transformation_type
class schedule_free_sgd(_ScheduleFree):
    """Schedule-free SGD: schedulefree's SGDScheduleFree (no lr schedule needed).

    With the warmup, the averaging weights :math:`c_t` and the parameters y
    of `schedule_free_adamw`, and :math:`\\mu` the momentum:

    .. math::
        \\hat g_t &= g_t + \\lambda y_{t-1} \\\\
        y_t &= (1 - c_t) y_{t-1} + c_t z_{t-1} + \\eta_t (\\mu (1 - c_t) - 1) \\hat g_t,
               \\quad z_t = z_{t-1} - \\eta_t \\hat g_t

    The evaluation point is :math:`x = (y - (1 - \\mu) z) / \\mu`
    (`schedule_free_eval_params`). optax's ``contrib.schedule_free_sgd`` has
    no `r` and the warmup trap described in `schedule_free_adamw`: on the
    same problem (float64, lr 0.05, 150 updates) it is 2.2e-15 of the
    largest parameter away without warmup; with ``warmup_steps=8``
    (momentum 0.8, weight decay 0.01) its first update is 0, and at update
    12 it is 13% of the distance schedulefree's parameters have travelled
    away from them (11% of the largest parameter).

    Args:
        lr: learning rate (>= 0).
        momentum: interpolation of y between x and z, in (0, 1).
        weight_decay: L2 penalty on y, added to the gradient (>= 0).
        warmup_steps: updates of linear warmup of the lr (>= 0).
        r: power of the update number in the averaging weights (>= 0).
        weight_lr_power: power of the largest lr so far in the averaging
            weights (>= 0).
        state_dtype: dtype of `z` (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.schedule_free_sgd(0.5, warmup_steps=2)
        >>> params = jnp.array([1.0, -1.0])
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update(params, state, params)  # the gradient of |p|^2 / 2
        ...     params = optax.apply_updates(params, updates)
        >>> print(params, O.schedule_free_eval_params(state, params))
        [ 0.3019 -0.3019] [ 0.3183 -0.3183]

    References:
        schedulefree 1.4.1, ``SGDScheduleFree``; Defazio et al., "The Road
        Less Scheduled", 2024.
    """

    reference: ClassVar[str] = "schedulefree.SGDScheduleFree"
    State = ScheduleFreeSGDState
    per_leaf = ("z",)
    _interpolation = "momentum"

    lr: Hyper = field(HYPER, 1.0, check=NONNEG)
    momentum: Hyper = field(HYPER, 0.9, check=UNIT)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    warmup_steps: int = field(INT, 0)
    r: Hyper = field(HYPER, 0.0, check=NONNEG)
    weight_lr_power: Hyper = field(HYPER, 2.0, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def scalars(self, hp, count):
        return self._averaging(hp, count)

    def kernel(self, p, g, bufs, s, keep):
        if p is not None and self._nonzero("weight_decay"):
            g = g + s["weight_decay"] * p
        update, z = self._move(p, g, bufs["z"], s, keep)
        return update, {"z": z}


_STATES = (ScheduleFreeAdamWState, ScheduleFreeSGDState)


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The evaluation parameters x of a schedule-free run: schedulefree's ``optimizer.eval()``.

    Training steps on y (the parameters `update` moves); evaluate the model
    at ``x = lerp(y, z, 1 - 1/b1)``, the weighted average of the `z`s
    (``momentum`` for `schedule_free_sgd`), with each parameter group's
    value of the last update. The schedule-free state is found through
    `chain`, `accumulate`, `skip_nonfinite`, `partition` (the leaves of its
    other transformations are returned as they are), `master_weights` (x
    from its float32 copy, rounded to the parameter's dtype) and optax's
    `chain` and `MultiSteps`.
    Before the first update x is y. It works inside `jit`.

    Args:
        state: an optimizer state holding a `schedule_free_adamw` or
            `schedule_free_sgd` state.
        params: the parameters (y) that state was updated with.

    Returns:
        The parameters to evaluate the model at, a tree like `params`.

    Raises:
        ValueError: if the state holds no schedule-free state, or its `z`
            does not match `params` (inside `O.flatten`, `z` is one vector:
            take the optimizer out of `flatten` to evaluate).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.schedule_free_sgd(0.1, momentum=0.5))
        >>> params = jnp.array([1.0, -1.0])
        >>> state = opt.init(params)
        >>> for g in ([3.0, 4.0], [0.0, 1.0]):
        ...     params, state = opt.step(jnp.array(g), state, params)
        >>> print(params, O.schedule_free_eval_params(state, params))
        [ 0.94  -1.155] [ 0.94 -1.13]
    """
    if is_traced((state, params)):
        return _eval_params(state, params)
    # Called eagerly: one compiled program instead of a dispatch (and a
    # compilation, the first time) per operation and leaf.
    return _compiled_eval_params(state, params)


def _eval_params(state: Any, params: Any) -> Any:
    owner = "schedule_free_eval_params"
    found = list(_find(state, {}))
    if not found:
        raise ValueError(
            f"{owner}: the state holds no schedule_free_adamw or schedule_free_sgd state"
        )
    leaves, treedef = jax.tree.flatten(params)
    # Matched by path (a `partition` holds its leaves' z as {path: array}),
    # without the key of a flax Variable holding a leaf, as groups match.
    index = {name: i for i, name in enumerate(leaf_paths(params))}
    for sf, master in found:
        betas = sf.hyperparams[sf.interpolation]
        for name, z in zip(leaf_paths(sf.z), jax.tree.leaves(sf.z), strict=True):
            if name not in index or jnp.shape(z) != jnp.shape(leaves[index[name]]):
                raise ValueError(
                    f"{owner}: the state's z at {name!r} has no parameter of its shape in "
                    "params (inside O.flatten z is one vector per dtype: evaluate an "
                    "optimizer outside flatten)"
                )
            i = index[name]
            beta = pick(betas, name) if isinstance(betas, dict) else betas
            # Under `master_weights` y is the wide copy the optimizer stepped
            # on (the parameters are its rounding).
            y = master.get(name, leaves[i])
            leaves[i] = _average(y, z, beta).astype(dtype_of(leaves[i]))
    return treedef.unflatten(leaves)


_compiled_eval_params = jax.jit(_eval_params)


def _average(y: Any, z: jax.Array, beta: jax.Array) -> jax.Array:
    """x from y and z: schedulefree's ``p.lerp_(z, 1 - 1/beta)``."""
    dtype = dtype_of(y)
    math = compute_dtype(dtype)
    return torch_lerp(jnp.asarray(y, math), z.astype(math), 1 - 1 / beta).astype(dtype)


def _find(state: Any, master: dict[str, Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The schedule-free states in `state`, through wrappers, chains and partitions.

    Each comes with the wide copies of the parameters that a `master_weights`
    around it keeps (by path; empty without one).
    """
    if isinstance(state, _STATES):
        yield state, master
        return
    copies = getattr(state, "master", None) if hasattr(state, "_fields") else None
    if isinstance(copies, Leaves):
        master = master | copies
    for inner in inner_states(state):
        yield from _find(inner, master)
