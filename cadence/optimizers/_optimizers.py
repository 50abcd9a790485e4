"""The optimizers: torch.optim's SGD, Adam, AdamW, RMSprop, Adagrad, and Lion.

Each matches its reference update for update, including where optax differs
(see the class docstrings). `update` returns parameter deltas, with the
learning rate and weight decay already applied:
``new_params = optax.apply_updates(params, deltas)``.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from ._base import (
    BOOL,
    DTYPE,
    GROUPS,
    HYPER,
    NONNEG,
    UNIT,
    as_float,
    field,
    is_zero,
    transformation_type,
)
from ._leaf import lerp
from ._optimizer import Optimizer

__all__ = [
    "AdagradState",
    "AdamState",
    "LionState",
    "RMSpropState",
    "SGDState",
    "adagrad",
    "adam",
    "adamw",
    "lion",
    "rmsprop",
    "sgd",
]


class SGDState(NamedTuple):
    """`sgd` state: the update count, torch's momentum buffer (None without momentum)."""

    count: jax.Array
    momentum_buffer: Any
    hyperparams: dict[str, Any]


class AdamState(NamedTuple):
    """`adam` / `adamw` state: first and second moments, and AMSGrad's running max of ``nu``."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any
    hyperparams: dict[str, Any]


class RMSpropState(NamedTuple):
    """`rmsprop` state: torch's square_avg, grad_avg (centered) and momentum_buffer."""

    count: jax.Array
    square_avg: Any
    grad_avg: Any
    momentum_buffer: Any
    hyperparams: dict[str, Any]


class AdagradState(NamedTuple):
    """`adagrad` state: the running sum of squared gradients."""

    count: jax.Array
    sum: Any
    hyperparams: dict[str, Any]


class LionState(NamedTuple):
    """`lion` state: the momentum ``mu``."""

    count: jax.Array
    mu: Any
    hyperparams: dict[str, Any]


Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``


@transformation_type
class sgd(Optimizer):
    """Stochastic gradient descent with momentum: torch.optim.SGD.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1} \\\\
        b_t &= \\begin{cases} g_t & t = 1 \\\\
               \\mu b_{t-1} + (1 - \\tau) g_t & t > 1 \\end{cases} \\\\
        d_t &= g_t + \\mu b_t \\ \\text{(nesterov)}, \\quad b_t \\ \\text{(otherwise)} \\\\
        p_t &= p_{t-1} - \\eta\\, d_t

    Unlike optax's ``sgd``/``trace``, dampening is not applied on the first
    step (the buffer starts as the first gradient), and the learning rate
    multiplies after the buffer, so a schedule changes only later steps. With
    ``momentum=0`` (the number) no buffer is kept, as in torch.

    Args:
        lr: learning rate (>= 0).
        momentum: momentum factor (>= 0).
        dampening: dampening of the gradient in the buffer.
        weight_decay: L2 penalty added to the gradient (>= 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        state_dtype: dtype of the momentum buffer (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Every float argument takes a number, a cadence schedule or a callable of
    the update count.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.sgd(0.1, momentum=0.9)
        >>> params = {"w": jnp.array([1.0, 2.0])}
        >>> state = opt.init(params)
        >>> for _ in range(2):
        ...     updates, state = opt.update({"w": jnp.array([1.0, 1.0])}, state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> params["w"]
        Array([0.71, 1.71], dtype=float32)

    References:
        torch.optim.SGD (PyTorch 2.x); Sutskever et al., 2013.
    """

    reference = "torch.optim.SGD"

    State = SGDState
    _optional = {"momentum_buffer": "momentum"}
    eight_bit = {"momentum_buffer": "signed"}

    lr: Hyper = field(HYPER, check=NONNEG)
    momentum: Hyper = field(HYPER, 0.0, check=NONNEG)
    dampening: Hyper = field(HYPER, 0.0)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    nesterov: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def _validate(self) -> None:
        damped = isinstance(self.dampening, float) and self.dampening != 0
        if self.nesterov and (is_zero(self.momentum) or damped):
            raise ValueError("sgd: nesterov needs momentum > 0 and dampening 0")

    def buffers(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self._nonzero("momentum") else ()

    def scalars(self, hp: dict[str, jax.Array], count: jax.Array) -> dict[str, jax.Array]:
        first = count == 0
        # torch starts the buffer as a copy of the gradient (no dampening), and
        # with momentum 0 uses the gradient itself.
        return hp | {
            "-lr": -hp["lr"],
            "keep": jnp.where(first, 0.0, hp["momentum"]),
            "take": jnp.where(first | (hp["momentum"] == 0), 1.0, 1 - hp["dampening"]),
        }

    def kernel(self, p, g, bufs, s, keep):
        if p is not None:
            g = g + s["weight_decay"] * p
        if "momentum_buffer" in bufs:
            buf = keep("momentum_buffer", s["keep"] * bufs["momentum_buffer"] + s["take"] * g)
            bufs = {"momentum_buffer": buf}
            g = g + s["momentum"] * buf if self.nesterov else buf
        return s["-lr"] * g, bufs


def _decay(p: jax.Array, s: dict[str, jax.Array]) -> jax.Array:
    """The delta of torch's ``p.mul_(1 - lr * wd)``.

    Multiplying by the rounded factor, as torch does, rather than subtracting
    ``lr * wd * p`` keeps float32 runs on torch's trajectory: the factor's
    rounding error (1e-5 of the decay for lr * wd = 1e-3) is systematic.
    """
    return p * s["1-lr*wd"] - p


class _Adam(Optimizer):
    """What `adam` and `adamw` share: moments, bias corrections, AMSGrad.

    They differ in where the weight decay goes (`_decoupled`) and its default.
    """

    State = AdamState
    _decoupled: ClassVar[bool]
    eight_bit = {"mu": "signed", "nu": "unsigned", "nu_max": "unsigned"}

    def buffers(self) -> tuple[str, ...]:
        return ("mu", "nu", "nu_max") if self.amsgrad else ("mu", "nu")

    def scalars(self, hp, count):
        t = as_float(count) + 1
        return hp | {
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            "-step_size": -(hp["lr"] / (1 - hp["b1"] ** t)),
            # torch divides by sqrt(1 - b2^t); XLA turns that division into a
            # product with the reciprocal or not depending on how many leaves
            # share the scalar (and 1/sqrt into rsqrt under jit only). The
            # product with rsqrt, written out, rounds the same in every
            # program, eager or jitted, and in `step`'s native kernel.
            "1/bc2_sqrt": jax.lax.rsqrt(1 - hp["b2"] ** t),
            "1-lr*wd": 1 - hp["lr"] * hp["weight_decay"],
        }

    def kernel(self, p, g, bufs, s, keep):
        if p is not None and not self._decoupled:
            g = g + s["weight_decay"] * p
        mu = keep("mu", lerp(bufs["mu"], g, s["1-b1"]))
        # torch's addcmul_ order, (1 - b2) * g first: g * g alone overflows
        # float32 from |g| = 1.8e19, (1 - b2) * g * g only from 5.8e20.
        nu = keep("nu", s["b2"] * bufs["nu"] + (s["1-b2"] * g) * g)
        new = {"mu": mu, "nu": nu}
        if "nu_max" in bufs:
            # torch keeps the max of the raw second moment and bias-corrects it
            # afterwards (optax takes the max after the correction).
            nu = new["nu_max"] = keep("nu_max", jnp.maximum(bufs["nu_max"], nu))
        update = (s["-step_size"] * mu) / (jnp.sqrt(nu) * s["1/bc2_sqrt"] + s["eps"])
        if p is not None and self._decoupled:
            update = update + _decay(p, s)
        return update, new


@transformation_type
class adam(_Adam):
    """Adam with L2 weight decay: torch.optim.Adam.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1} \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2 \\\\
        \\hat v_t &= \\max(\\hat v_{t-1}, v_t) \\ \\text{(amsgrad)}, \\quad
                     v_t \\ \\text{(otherwise)} \\\\
        p_t &= p_{t-1} - \\frac{\\eta}{1 - \\beta_1^t}
               \\frac{m_t}{\\sqrt{\\hat v_t} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    `weight_decay` is added to the gradient (for decoupled decay use `adamw`).
    AMSGrad keeps the maximum of the raw second moment and bias-corrects it
    afterwards, as torch does (optax takes the maximum after correction).

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1) (torch's ``betas[0]``).
        b2: decay of the second moment, in [0, 1) (torch's ``betas[1]``).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        amsgrad: use AMSGrad.
        state_dtype: dtype of the moments (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adam(0.1)
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> updates, state = opt.update({"w": jnp.array([3.0, -0.5])}, opt.init(params), params)
        >>> optax.apply_updates(params, updates)["w"]
        Array([ 0.9, -0.9], dtype=float32)

    References:
        torch.optim.Adam (PyTorch 2.x); Kingma & Ba, 2015; Reddi et al., 2018 (AMSGrad).
    """

    reference = "torch.optim.Adam"

    _decoupled = False

    lr: Hyper = field(HYPER, 1e-3, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.999, check=UNIT)
    eps: Hyper = field(HYPER, 1e-8, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    amsgrad: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)


@transformation_type
class adamw(_Adam):
    """Adam with decoupled weight decay: torch.optim.AdamW.

    .. math::
        p_t = p_{t-1} (1 - \\eta\\lambda) - \\frac{\\eta}{1 - \\beta_1^t}
              \\frac{m_t}{\\sqrt{\\hat v_t} / \\sqrt{1 - \\beta_2^t} + \\epsilon}

    with the moments of `adam` computed from the raw gradient. The default
    weight decay is torch's 1e-2 (optax's is 1e-4), and the decay is scaled by
    the learning rate, as in torch.

    Args:
        lr: learning rate (>= 0).
        b1: decay of the first moment, in [0, 1).
        b2: decay of the second moment, in [0, 1).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: decoupled decay coefficient (>= 0).
        amsgrad: use AMSGrad (torch's variant, see `adam`).
        state_dtype: dtype of the moments (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adamw(0.1, weight_decay=0.5, groups={"b": {"weight_decay": 0.0}})
        >>> params = {"w": jnp.array([1.0]), "b": jnp.array([1.0])}
        >>> zero = {"w": jnp.zeros(1), "b": jnp.zeros(1)}
        >>> updates, state = opt.update(zero, opt.init(params), params)
        >>> optax.apply_updates(params, updates)
        {'b': Array([1.], dtype=float32), 'w': Array([0.95], dtype=float32)}

    References:
        torch.optim.AdamW (PyTorch 2.x); Loshchilov & Hutter, 2019.
    """

    reference = "torch.optim.AdamW"

    _decoupled = True

    lr: Hyper = field(HYPER, 1e-3, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.999, check=UNIT)
    eps: Hyper = field(HYPER, 1e-8, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 1e-2, check=NONNEG)
    amsgrad: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)


@transformation_type
class rmsprop(Optimizer):
    """RMSprop: torch.optim.RMSprop.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1}, \\quad
        v_t = \\alpha v_{t-1} + (1 - \\alpha) g_t^2 \\\\
        a_t &= \\sqrt{v_t - \\bar g_t^2} + \\epsilon \\ \\text{(centered,}\\
               \\bar g_t = \\alpha \\bar g_{t-1} + (1 - \\alpha) g_t\\text{)}, \\quad
               \\sqrt{v_t} + \\epsilon \\ \\text{(otherwise)} \\\\
        b_t &= \\mu b_{t-1} + g_t / a_t, \\quad p_t = p_{t-1} - \\eta b_t
              \\quad \\text{(or } p_{t-1} - \\eta g_t / a_t \\text{ without momentum)}

    Where optax differs: eps is outside the square root, alpha defaults to
    0.99, and with momentum the learning rate multiplies after the buffer (so a
    schedule on lr matches torch step for step).

    Args:
        lr: learning rate (>= 0).
        alpha: smoothing constant, in [0, 1).
        eps: added to the denominator, outside the square root (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        momentum: momentum factor (>= 0); with the number 0 no buffer is kept.
        centered: normalize by the estimated variance instead of the raw moment.
        state_dtype: dtype of the buffers (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.rmsprop(0.01, alpha=0.75)
        >>> params = jnp.array([1.0])
        >>> updates, state = opt.update(jnp.array([2.0]), opt.init(params), params)
        >>> optax.apply_updates(params, updates)
        Array([0.98], dtype=float32)

    References:
        torch.optim.RMSprop (PyTorch 2.x); Hinton, Coursera lecture 6e; Graves, 2013 (centered).
    """

    reference = "torch.optim.RMSprop"

    State = RMSpropState
    _optional = {"momentum_buffer": "momentum"}
    eight_bit = {"square_avg": "unsigned", "grad_avg": "signed", "momentum_buffer": "signed"}

    lr: Hyper = field(HYPER, 1e-2, check=NONNEG)
    alpha: Hyper = field(HYPER, 0.99, check=UNIT)
    eps: Hyper = field(HYPER, 1e-8, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    momentum: Hyper = field(HYPER, 0.0, check=NONNEG)
    centered: bool = field(BOOL, False)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def buffers(self) -> tuple[str, ...]:
        names = ("square_avg", "grad_avg") if self.centered else ("square_avg",)
        return names + (("momentum_buffer",) if self._nonzero("momentum") else ())

    def scalars(self, hp, count):
        return hp | {"-lr": -hp["lr"], "1-alpha": 1 - hp["alpha"]}

    def kernel(self, p, g, bufs, s, keep):
        if p is not None:
            g = g + s["weight_decay"] * p
        # (1 - alpha) * g first, as torch's addcmul_ (see `_Adam._kernel`).
        square_avg = keep("square_avg", s["alpha"] * bufs["square_avg"] + (s["1-alpha"] * g) * g)
        new = {"square_avg": square_avg}
        if "grad_avg" in bufs:
            grad_avg = new["grad_avg"] = keep("grad_avg", lerp(bufs["grad_avg"], g, s["1-alpha"]))
            avg = jnp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = jnp.sqrt(square_avg)
        avg = avg + s["eps"]
        if "momentum_buffer" in bufs:
            buf = s["momentum"] * bufs["momentum_buffer"] + g / avg
            buf = new["momentum_buffer"] = keep("momentum_buffer", buf)
            return s["-lr"] * buf, new
        return (s["-lr"] * g) / avg, new


@transformation_type
class adagrad(Optimizer):
    """Adagrad: torch.optim.Adagrad.

    .. math::
        g_t &= \\nabla_t + \\lambda p_{t-1}, \\quad s_t = s_{t-1} + g_t^2, \\quad
        s_0 = \\text{initial\\_accumulator\\_value} \\\\
        p_t &= p_{t-1} - \\frac{\\eta}{1 + (t - 1)\\, \\text{lr\\_decay}}
               \\frac{g_t}{\\sqrt{s_t} + \\epsilon}

    Where optax differs: eps (1e-10) is outside the square root and the
    accumulator starts at 0, as in torch; `lr_decay` is torch's.

    Args:
        lr: learning rate (>= 0).
        lr_decay: learning-rate decay per update (>= 0).
        weight_decay: L2 penalty added to the gradient (>= 0).
        initial_accumulator_value: starting value of the sum (>= 0; read at `init`).
        eps: added to the denominator, outside the square root (>= 0).
        state_dtype: dtype of the sum (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.adagrad(0.5)
        >>> params = jnp.array([1.0, 1.0])
        >>> updates, state = opt.update(jnp.array([3.0, -4.0]), opt.init(params), params)
        >>> optax.apply_updates(params, updates)
        Array([0.5, 1.5], dtype=float32)

    References:
        torch.optim.Adagrad (PyTorch 2.x); Duchi et al., 2011.
    """

    reference = "torch.optim.Adagrad"

    State = AdagradState
    eight_bit = {"sum": "unsigned"}

    lr: Hyper = field(HYPER, 1e-2, check=NONNEG)
    lr_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    initial_accumulator_value: Hyper = field(HYPER, 0.0, check=NONNEG)
    eps: Hyper = field(HYPER, 1e-10, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def buffers(self) -> tuple[str, ...]:
        return ("sum",)

    def init_buffer(self, name, shape, dtype, hp):
        return jnp.full(shape, hp["initial_accumulator_value"], dtype)

    def scalars(self, hp, count):
        return hp | {"-clr": -(hp["lr"] / (1 + as_float(count) * hp["lr_decay"]))}

    def kernel(self, p, g, bufs, s, keep):
        if p is not None:
            g = g + s["weight_decay"] * p
        total = keep("sum", bufs["sum"] + g * g)
        return (s["-clr"] * g) / (jnp.sqrt(total) + s["eps"]), {"sum": total}


@transformation_type
class lion(Optimizer):
    """Lion (evolved sign momentum), as in the paper and lucidrains' lion-pytorch.

    .. math::
        c_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) g_t \\\\
        p_t &= p_{t-1} (1 - \\eta\\lambda) - \\eta\\, \\mathrm{sign}(c_t) \\\\
        m_t &= \\beta_2 m_{t-1} + (1 - \\beta_2) g_t

    Weight decay is decoupled and scaled by the learning rate. torch has no
    Lion; the tests compare against a NumPy transcription of the paper's
    Program 1.

    Args:
        lr: learning rate (>= 0); typically 3-10x smaller than AdamW's.
        b1: interpolation factor of the update, in [0, 1).
        b2: decay of the momentum, in [0, 1).
        weight_decay: decoupled decay coefficient (>= 0).
        state_dtype: dtype of the momentum (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.lion(0.1)
        >>> params = jnp.array([1.0, 1.0, 1.0])
        >>> updates, state = opt.update(jnp.array([2.0, 0.0, -1e-9]), opt.init(params), params)
        >>> optax.apply_updates(params, updates)
        Array([0.9, 1. , 1.1], dtype=float32)

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """

    reference = "Lion (the paper; lion-pytorch)"

    State = LionState
    eight_bit = {"mu": "signed"}

    lr: Hyper = field(HYPER, 1e-4, check=NONNEG)
    b1: Hyper = field(HYPER, 0.9, check=UNIT)
    b2: Hyper = field(HYPER, 0.99, check=UNIT)
    weight_decay: Hyper = field(HYPER, 0.0, check=NONNEG)
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def buffers(self) -> tuple[str, ...]:
        return ("mu",)

    def scalars(self, hp, count):
        return hp | {
            "-lr": -hp["lr"],
            "1-b1": 1 - hp["b1"],
            "1-b2": 1 - hp["b2"],
            "1-lr*wd": 1 - hp["lr"] * hp["weight_decay"],
        }

    def kernel(self, p, g, bufs, s, keep):
        update = s["-lr"] * jnp.sign(s["b1"] * bufs["mu"] + s["1-b1"] * g)
        if p is not None:
            update = update + _decay(p, s)
        mu = s["b2"] * bufs["mu"] + s["1-b2"] * g
        return update, {"mu": mu}
