"""AdEMAMix: optax.contrib.ademamix, Adam with a second, slow EMA of the gradients."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

# torch's classics register first: the registry (README table, tests) keeps
# the order of definition, and this module's name sorts before theirs.
from . import _optimizers  # noqa: F401
from ._base import as_float
from ._declare import hyper, optimizer_type
from ._optimizer import Optimizer

__all__ = ["AdEMAMixState", "ademamix"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


class AdEMAMixState(NamedTuple):
    """`ademamix` state: the fast EMA ``m1``, the slow EMA ``m2`` and the second moment ``nu``."""

    count: jax.Array
    m1: Any
    m2: Any
    nu: Any
    hyperparams: dict[str, Any]


@optimizer_type
class ademamix(Optimizer):
    """AdEMAMix (adaptive EMA mixture): optax.contrib.ademamix.

    .. math::
        m^{(1)}_t &= \\beta_1 m^{(1)}_{t-1} + (1 - \\beta_1) g_t, \\quad
        m^{(2)}_t = \\beta_3 m^{(2)}_{t-1} + (1 - \\beta_3) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2 \\\\
        p_t &= p_{t-1} - \\eta \\left(
               \\frac{m^{(1)}_t / (1 - \\beta_1^t) + \\alpha m^{(2)}_t}
                    {\\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon}
               + \\lambda p_{t-1} \\right)

    The slow EMA is not bias-corrected (it fills slowly on purpose). The
    paper warms up ``alpha`` and ``b3`` with schedulers; here, as in optax,
    they take schedules like every hyperparameter (``b3`` is the decay at
    each update, e.g. ``S.from_fn`` of the paper's ``b3`` scheduler).
    Everything is optax's, order included: the weight decay is added to the
    normalized update and scaled by the learning rate with it, as in the
    paper's algorithm (and unlike torch's AdamW, which multiplies the
    parameters by ``1 - lr * weight_decay`` before the step: the same number
    up to rounding). There is no torch.optim counterpart.

    In float64 the two agree to rounding (3.3e-16 of the largest parameter
    after 200 updates). In float32, cadence holds ``b3`` in float32, as every
    hyperparameter, where optax computes ``1 - b3`` from the Python float in
    double: for 0.9999 the two differ by 1.7e-4 relative, which puts the runs
    1.1e-5 of the largest parameter apart after 200 updates at lr 0.01
    (2.6e-7 when optax is given the float32 values).

    Args:
        lr: learning rate (>= 0); required, as in optax.
        b1: decay of the fast EMA, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        b3: decay of the slow EMA, in [0, 1).
        alpha: weight of the slow EMA in the update (>= 0).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: decay coefficient (>= 0), added to the update and
            scaled by lr.
        state_dtype: dtype of the three buffers (default: the parameter's).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O, schedules as S
        >>> opt = O.ademamix(0.1, alpha=S.linear(0.0, 5.0, 100), b3=0.999)
        >>> params = jnp.array([1.0, -1.0])
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update(jnp.array([3.0, -0.5]), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params.tolist(), float(O.hyperparams(state)["alpha"])
        ([0.7, -0.7], 0.1)

    References:
        optax.contrib.ademamix (optax 0.2.8); Pagliardini, Ablin & Grangier,
        "The AdEMAMix Optimizer: Better, Faster, Older", 2024.
    """

    reference: ClassVar[str] = "optax.contrib.ademamix"
    State = AdEMAMixState
    per_leaf = ("m1", "m2", "nu")
    eight_bit: ClassVar[dict[str, str]] = {"m1": "signed", "m2": "signed", "nu": "unsigned"}

    lr: Hyper = hyper(check="nonneg")
    b1: Hyper = hyper(0.9, check="unit")
    b2: Hyper = hyper(0.999, check="unit")
    b3: Hyper = hyper(0.9999, check="unit")
    alpha: Hyper = hyper(5.0, check="nonneg")
    eps: Hyper = hyper(1e-8, check="nonneg")
    weight_decay: Hyper = hyper(0.0, check="nonneg")

    def scalars(self, hp, count):
        t = as_float(count) + 1
        return hp | {
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            "1-b3": 1 - hp["b3"],
            # Products with the reciprocals rather than divisions by the
            # scalars, which XLA rewrites so in some programs only (see `adam`).
            "1/bc1": 1 / (1 - hp["b1"] ** t),
            "1/bc2": 1 / (1 - hp["b2"] ** t),
            "-lr": -hp["lr"],
        }

    def kernel(self, p, g, bufs, s, keep):
        # optax's moment updates: (1 - decay) * g + decay * moment.
        m1 = keep("m1", s["1-b1"] * g + s["b1"] * bufs["m1"])
        m2 = keep("m2", s["1-b3"] * g + s["b3"] * bufs["m2"])
        nu = keep("nu", s["1-b2"] * (g * g) + s["b2"] * bufs["nu"])
        denom = jnp.sqrt(nu * s["1/bc2"]) + s["eps"]
        update = (m1 * s["1/bc1"] + s["alpha"] * m2) / denom
        if p is not None:
            update = update + s["weight_decay"] * p
        return s["-lr"] * update, {"m1": m1, "m2": m2, "nu": nu}
