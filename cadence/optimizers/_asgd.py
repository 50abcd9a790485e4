"""ASGD: torch.optim.ASGD, with its step sizes as per-group state and the averaged parameters."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import DTYPE, GROUPS, HYPER, NONNEG, as_float, field, transformation_type
from ._optimizer import Optimizer

__all__ = ["ASGDState", "asgd"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class ASGDState(NamedTuple):
    """`asgd` state: the averaged parameters ``ax``, and per group torch's ``eta`` and ``mu``.

    ``eta`` and ``mu`` are the values the next update uses, as torch keeps
    them (one scalar per group, the default group's first).
    """

    count: jax.Array
    ax: Any
    eta: tuple[jax.Array, ...]
    mu: tuple[jax.Array, ...]
    hyperparams: dict[str, Any]


@transformation_type
class asgd(Optimizer):
    """Averaged stochastic gradient descent: torch.optim.ASGD.

    .. math::
        g_t &= \\nabla_t + \\lambda_{wd} p_{t-1}, \\quad
        p_t = p_{t-1} (1 - \\lambda \\eta_{t-1}) - \\eta_{t-1} g_t \\\\
        a_t &= \\begin{cases} p_t & \\mu_{t-1} = 1 \\\\
               a_{t-1} + \\mu_{t-1} (p_t - a_{t-1}) & \\text{otherwise} \\end{cases} \\\\
        \\eta_t &= \\frac{\\text{lr}_t}{(1 + \\lambda\\, \\text{lr}_t\\, t)^{\\alpha}}, \\quad
        \\mu_t = \\frac{1}{\\max(1, t - t_0)}, \\quad \\eta_0 = \\text{lr}_0, \\ \\mu_0 = 1

    The averaged parameters :math:`a_t` (torch's ``ax``) are the parameters
    themselves until update :math:`t_0 + 1`, then their running mean from
    there on; read them with `averaged_params` (evaluate with them, train
    with the parameters). :math:`\\eta` and :math:`\\mu` are per-group scalars
    in the state, computed after each update for the next one, as torch
    computes them: so a scheduled lr reaches the step one update late,
    through :math:`\\eta_t`, exactly as torch's scheduler does.

    torch keeps ``eta`` and ``mu`` in its default dtype: a float64 run in
    torch matches this one only under ``torch.set_default_dtype(torch.float64)``.
    optax has no ASGD (``optax.sgd`` with a schedule has neither the
    :math:`\\lambda` decay of the parameters nor the average).

    Args:
        lr: learning rate (>= 0).
        lambd: decay term :math:`\\lambda` (>= 0).
        alpha: power of the step size's decay (>= 0).
        t0: the update after which averaging starts (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        state_dtype: dtype of ``ax`` (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.asgd(0.25, lambd=0.0, t0=0.0)  # averaging from the third update
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> state = opt.init(params)
        >>> for g in ([1.0, 1.0], [2.0, -2.0], [1.0, 0.0]):
        ...     updates, state = opt.update({"w": jnp.array(g)}, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params["w"], O.averaged_params(state)["w"]
        (Array([ 0.  , -0.75], dtype=float32), Array([ 0.125, -0.75 ], dtype=float32))

    References:
        torch.optim.ASGD (PyTorch 2.x); Polyak & Juditsky, "Acceleration of
        Stochastic Approximation by Averaging", 1992.
    """

    reference: ClassVar[str] = "torch.optim.ASGD"
    State = ASGDState
    shared = ("eta", "mu")

    lr: Hyper = field(HYPER, 1e-2, check=NONNEG)
    lambd: Hyper = field(HYPER, 1e-4, check=NONNEG)
    alpha: Hyper = field(HYPER, 0.75, check=NONNEG)
    t0: Hyper = field(HYPER, 1e6, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def buffers(self) -> tuple[str, ...]:
        return ("ax",)

    def _decays(self) -> list[bool]:
        # The average reads the new parameters whatever the hyperparameters.
        return [True] * (1 + (len(self.groups.patterns) if self.groups is not None else 0))

    def _prepare(self, owner, grads, state, params):
        if params is None:
            raise ValueError(f"{owner}: params are required (asgd averages them)")
        return super()._prepare(owner, grads, state, params)

    def init_shared(self, hp):
        # A copy: the record holds hp["lr"] itself, and one array in two places
        # of a state cannot be donated.
        return {"eta": jnp.array(hp["lr"], copy=True), "mu": 1.0}

    def advance(self, hp, count, shared):
        t = as_float(count) + 1
        return {
            # The values the next update uses, from this update's lr and count.
            "eta": hp["lr"] / (1 + hp["lambd"] * hp["lr"] * t) ** hp["alpha"],
            "mu": 1 / jnp.maximum(1.0, t - hp["t0"]),
            # Not kept in the state: the values this update uses (`scalars`).
            "eta_now": shared["eta"],
            "mu_now": shared["mu"],
        }

    def scalars(self, hp, count):
        return hp | {"-eta": -hp["eta_now"], "1-lambd*eta": 1 - hp["lambd"] * hp["eta_now"]}

    def kernel(self, p, g, bufs, s, keep):
        if self._nonzero("weight_decay"):
            g = g + s["weight_decay"] * p
        # torch's param.mul_(1 - lambd * eta), then param.add_(grad, alpha=-eta).
        update = (p * s["1-lambd*eta"] + s["-eta"] * g) - p
        # The parameters as `optax.apply_updates` leaves them (in their dtype).
        dtype = s["param_dtype"]
        new = (p.astype(dtype) + update.astype(dtype)).astype(p.dtype)
        ax = bufs["ax"]
        ax = jnp.where(s["mu_now"] == 1, new, ax + (new - ax) * s["mu_now"])
        return update, {"ax": keep("ax", ax)}
