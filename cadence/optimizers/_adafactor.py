"""Adafactor: torch.optim.Adafactor, with row and column second moments for matrices."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike

from ._base import (
    DTYPE,
    GROUPS,
    HYPER,
    MAYBE_FLOAT,
    NONNEG,
    as_float,
    field,
    transformation_type,
)
from ._leaf import torch_lerp
from ._optimizer import Optimizer
from ._optimizers import _decay

__all__ = ["AdafactorState", "adafactor"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class AdafactorState(NamedTuple):
    """`adafactor` state, per leaf: row and column moments (2+ dims) or the full one (vectors).

    A leaf keeps either ``row_var`` (its shape with the last dimension 1) and
    ``col_var`` (the second-to-last dimension 1), or ``variance`` (its own
    shape). A buffer it does not use is a one-element placeholder of its rank
    (shape ``(1,) * ndim``): laid out like a reduction of the parameter, and
    not empty, since orbax refuses to save zero-size arrays.
    """

    count: jax.Array
    row_var: Any
    col_var: Any
    variance: Any
    hyperparams: dict[str, Any]


def _rms(x: jax.Array) -> jax.Array:
    """torch's ``x.norm(2) / sqrt(x.numel())``."""
    return jnp.sqrt(jnp.sum(x * x)) / math.sqrt(x.size)


@transformation_type
class adafactor(Optimizer):
    """Adafactor: torch.optim.Adafactor.

    .. math::
        \\hat\\beta_t &= t^{\\tau}\\ \\text{(weight of the new moment)}, \\quad
        \\rho_t = \\min(\\eta, 1/\\sqrt t), \\quad
        \\alpha_t = \\max(\\epsilon_2, \\mathrm{RMS}(p_{t-1}))\\, \\rho_t \\\\
        R_t &= \\mathrm{lerp}(R_{t-1}, \\mathrm{mean}_{-1}(g_t^2), \\hat\\beta_t), \\quad
        C_t = \\mathrm{lerp}(C_{t-1}, \\mathrm{mean}_{-2}(g_t^2), \\hat\\beta_t), \\quad
        V_t = \\frac{R_t C_t}{\\max(\\mathrm{mean}(R_t), \\epsilon_1)} \\\\
        U_t &= g_t / \\max(\\sqrt{V_t}, \\epsilon_1), \\quad
        p_t = p_{t-1}(1 - \\eta\\lambda)
              - \\frac{\\alpha_t}{\\max(1, \\mathrm{RMS}(U_t) / d)} U_t

    A leaf of two or more dimensions keeps its second moment factored over
    its last two (a row and a column per matrix); a vector or a scalar keeps
    it whole (:math:`V_t = \\mathrm{lerp}(V_{t-1}, g_t^2, \\hat\\beta_t)`). The
    weight decay multiplies by ``1 - lr * weight_decay`` (the learning rate,
    not :math:`\\rho_t`). ``eps1=None`` is the machine epsilon of each
    parameter's dtype (torch takes the first parameter's for its whole group).

    Where others differ: transformers' ``Adafactor`` with its defaults
    (``relative_step=True, scale_parameter=True``) is this one with
    ``lr=1e-2`` (its relative step is ``min(1e-2, 1/sqrt(t))``; with
    ``relative_step=False`` it takes ``lr`` without the ``1/sqrt(t)`` cap); it
    adds ``eps[0]=1e-30`` to the squared gradient where torch clamps at
    ``eps1``, and it decays the weights by :math:`\\alpha_t` (``rho * RMS(p)``)
    instead of ``lr``. In float64 the two agree to 1e-15 without weight decay;
    with ``weight_decay=0.1`` their displacements after 20 updates differ by
    7.5%. ``optax.adafactor`` has no learning rate unless given one (its
    default steps by the parameters' RMS times the clipped update, with no
    :math:`\\rho_t`), adds ``eps=1e-30`` to the squared gradient, factors only
    dimensions of at least 128, and adds its ``weight_decay_rate`` unscaled by
    the learning rate.

    Args:
        lr: learning rate (>= 0): the cap of the relative step :math:`\\rho_t`.
        beta2_decay: :math:`\\tau`, the exponent of the moment's decay (<= 0).
        eps1: floor of the moments' denominators (>= 0); None: the parameter
            dtype's machine epsilon.
        eps2: floor of the parameter scale :math:`\\alpha_t` (>= 0).
        d: clipping threshold of the update's RMS (>= 1).
        weight_decay: decoupled decay coefficient (>= 0), scaled by lr.
        state_dtype: dtype of the moments (default: the parameter's), or a
            dict by buffer name.
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adafactor(0.1)
        >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
        >>> state = opt.init(params)
        >>> state.row_var["w"].shape, state.col_var["w"].shape, state.variance["b"].shape
        ((2, 1), (1, 3), (3,))
        >>> grads = {"w": jnp.full((2, 3), 0.5), "b": jnp.array([1.0, -2.0, 0.0])}
        >>> updates, state = opt.update(grads, state, params)
        >>> optax.apply_updates(params, updates)["w"]
        Array([[0.9, 0.9, 0.9],
               [0.9, 0.9, 0.9]], dtype=float32)

    References:
        torch.optim.Adafactor (PyTorch 2.13); Shazeer & Stern, "Adafactor:
        Adaptive Learning Rates with Sublinear Memory Cost", 2018.
    """

    reference: ClassVar[str] = "torch.optim.Adafactor"
    State = AdafactorState
    elementwise = False  # row and column means, the RMS of a leaf
    reduced = ("row_var", "col_var", "variance")
    # The parameters enter the step size (their RMS) whenever lr is not 0.
    _decay = ("lr",)

    lr: Hyper = field(HYPER, 1e-2, check=NONNEG)
    beta2_decay: Hyper = field(HYPER, -0.8)
    eps1: float | None = field(MAYBE_FLOAT, None, check=NONNEG)
    eps2: Hyper = field(HYPER, 1e-3, check=NONNEG)
    d: Hyper = field(HYPER, 1.0)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def _validate(self) -> None:
        # torch's range checks (schedules and traced values are not checked).
        if isinstance(self.beta2_decay, float) and self.beta2_decay > 0:
            raise ValueError(f"adafactor: beta2_decay must be <= 0, got {self.beta2_decay!r}")
        if isinstance(self.d, float) and self.d < 1:
            raise ValueError(f"adafactor: d must be >= 1, got {self.d!r}")

    def buffers(self) -> tuple[str, ...]:
        return ("row_var", "col_var", "variance")

    def init_buffer(self, name, shape, dtype, hp):
        factored = len(shape) >= 2
        unused = (1,) * len(shape)
        if name == "variance":
            shape = unused if factored else shape
        elif not factored:
            shape = unused
        elif name == "row_var":
            shape = (*shape[:-1], 1)
        else:
            shape = (*shape[:-2], 1, shape[-1])
        return jnp.zeros(shape, dtype)

    def scalars(self, hp, count):
        t = as_float(count) + 1
        return hp | {
            "weight": t ** hp["beta2_decay"],
            "rho": jnp.minimum(hp["lr"], 1 / jnp.sqrt(t)),
            "1-lr*wd": 1 - hp["lr"] * hp["weight_decay"],
        }

    def kernel(self, p, g, bufs, s, keep):
        eps1 = self.eps1 if self.eps1 is not None else float(jnp.finfo(s["param_dtype"]).eps)
        scale = s["eps2"] if p is None else jnp.maximum(s["eps2"], _rms(p))
        alpha = scale * s["rho"]
        new = dict(bufs)
        if g.ndim >= 2:
            square = g * g
            row = keep("row_var", torch_lerp(bufs["row_var"], _mean(square, -1), s["weight"]))
            col = keep("col_var", torch_lerp(bufs["col_var"], _mean(square, -2), s["weight"]))
            # On a mesh XLA would replicate the new moments (reductions over
            # a sharded axis); keep the layout the old ones had.
            row = shard_alike(bufs["row_var"], row)[1]
            col = shard_alike(bufs["col_var"], col)[1]
            new |= {"row_var": row, "col_var": col}
            var = (row * col) / jnp.maximum(jnp.mean(row, axis=-2, keepdims=True), eps1)
        else:
            var = keep("variance", torch_lerp(bufs["variance"], g * g, s["weight"]))
            new["variance"] = var
        # eps1 is squared because the square root follows (torch's comment).
        u = jax.lax.rsqrt(jnp.maximum(var, eps1 * eps1)) * g
        denom = jnp.maximum(1.0, jnp.sqrt(jnp.sum(u * u)) / (math.sqrt(u.size) * s["d"]))
        update = -(alpha / denom) * u
        if p is not None:
            # Exactly 0 when weight_decay is 0 (the factor is then 1).
            update = update + _decay(p, s)
        return update, new


def _mean(square: jax.Array, axis: int) -> jax.Array:
    """A mean of squares over `axis`, keeping it (torch's ``norm(dim).square() / size``)."""
    return jnp.sum(square, axis=axis, keepdims=True) / square.shape[axis]
