"""Muon: torch.optim.Muon, momentum orthogonalised by Newton–Schulz iterations, 2-D leaves only."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._base import (
    BOOL,
    DTYPE,
    FLOATS,
    GROUPS,
    HYPER,
    INT,
    MAYBE_STR,
    NONNEG,
    check_choice,
    check_int,
    field,
    transformation_type,
)
from ._leaf import torch_lerp
from ._optimizer import Optimizer
from ._optimizers import _decay

__all__ = ["MuonState", "muon"]

Hyper = Any  # a float, a cadence schedule, or a callable ``step -> value``

# The learning-rate adjustments by the matrix's shape (A, B): torch 2.13's two
# names (None means "original"), and torch 2.14's "spectral_unclamped".
ADJUSTMENTS = (None, "original", "match_rms_adamw", "spectral_unclamped")


class MuonState(NamedTuple):
    """`muon` state: the momentum buffer."""

    count: jax.Array
    momentum_buffer: Any
    hyperparams: dict[str, Any]


def _lr_ratio(adjust: str | None, shape: tuple[int, ...]) -> float:
    """torch's ``_adjust_lr`` factor for a matrix of `shape` (its first two dims)."""
    a, b = shape[:2]
    if adjust in (None, "original"):
        return math.sqrt(max(1.0, a / b))
    if adjust == "match_rms_adamw":
        return 0.2 * math.sqrt(max(a, b))
    return math.sqrt(a / b)


def newton_schulz(
    u: jax.Array, coefficients: tuple[float, ...], steps: int, eps: jax.Array, dtype: Any
) -> jax.Array:
    """torch's ``_zeropower_via_newtonschulz`` on a matrix, computed in `dtype`.

    Every product accumulates in float32 or wider and rounds once to `dtype`,
    as torch's ``addmm`` does: ``A = X Xᵀ``, ``B = b A + c A²``,
    ``X = a X + B X``. A tall matrix is transposed first (and back after).
    """
    a, b, c = coefficients
    dtype = jnp.dtype(dtype)
    acc = jnp.promote_types(dtype, jnp.float32)
    info = jnp.finfo(dtype)

    def rounded(x: jax.Array) -> jax.Array:
        # Under jit XLA drops a float32 -> bfloat16 -> float32 round trip
        # (excess precision); reduce_precision keeps torch's rounding there.
        x = x.astype(acc)
        if dtype != acc:
            x = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
        return x.astype(dtype)

    def dot(x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.matmul(x, y, preferred_element_type=acc)

    tall = u.shape[0] > u.shape[1]
    x = rounded(u.T if tall else u)
    norm = rounded(jnp.sqrt(jnp.sum(jnp.square(x.astype(acc)))))
    x = rounded(x.astype(acc) / jnp.maximum(norm, rounded(eps)).astype(acc))
    for _ in range(steps):
        gram = rounded(dot(x, x.T))
        poly = rounded(b * gram.astype(acc) + c * dot(gram, gram))
        x = rounded(a * x.astype(acc) + dot(poly, x))
    return x.T if tall else x


@transformation_type
class muon(Optimizer):
    """Muon (momentum orthogonalised by Newton–Schulz): torch.optim.Muon.

    .. math::
        B_t &= \\mu B_{t-1} + (1 - \\mu) g_t \\quad
        \\text{(torch's lerp)}, \\qquad
        U_t = \\begin{cases} g_t + \\mu (B_t - g_t) & \\text{nesterov} \\\\
              B_t & \\text{otherwise} \\end{cases} \\\\
        O_t &= \\mathrm{NS}^{(a,b,c)}_k(U_t / \\max(\\lVert U_t \\rVert_F, \\epsilon)), \\quad
        X \\leftarrow a X + (b X X^\\top + c (X X^\\top)^2) X \\\\
        p_t &= p_{t-1}(1 - \\eta\\lambda) - \\eta\\, s(A, B)\\, O_t

    with :math:`U_t` transposed when it has more rows than columns, and the
    shape factor :math:`s` of a matrix with A rows and B columns:
    :math:`\\sqrt{\\max(1, A/B)}` (``adjust_lr_fn=None`` or ``"original"``),
    :math:`0.2\\sqrt{\\max(A, B)}` (``"match_rms_adamw"``) or
    :math:`\\sqrt{A/B}` (``"spectral_unclamped"``, torch 2.14). Weight decay is
    decoupled and scaled by the unadjusted lr.

    Muon is for the 2-D matrices of hidden layers: a leaf that is not 2-D is
    refused; use ``O.partition`` to send the other leaves (embeddings, heads,
    biases, norms) to another optimizer, e.g. `adamw`.

    torch runs Newton–Schulz in bfloat16 whatever the parameter's dtype;
    ``ns_dtype`` chooses it here (``None``: the parameter's dtype). Each
    matrix product accumulates in float32 and rounds once, as torch's
    ``addmm`` does, so on a CPU the iteration gives torch's bfloat16 values
    bit for bit on small matrices, and 150 updates of float32 parameters
    agree with torch's to 1.2e-6. Larger products may sum in another order
    than torch's, which flips a bfloat16 rounding now and then.

    Where optax differs (``optax.contrib.muon``): it bias-corrects its
    momentum (and the gradient in its Nesterov blend) as Adam does; it scales
    by the reciprocal shape factor, :math:`\\sqrt{\\max(1, B/A)}`, so wide
    matrices take the larger steps where torch gives them to tall ones; it
    divides by the norm plus ``eps=1e-8`` instead of clamping; it iterates in
    the parameter's dtype; its weight decay defaults to 0; and it sends leaves
    that are not 2-D to its own AdamW. On a 3x4 matrix in float64 its steps are
    1.14-1.31 times torch's and its parameters 0.17% (of their largest) away
    after one update, 0.64% after five; on a 4x3 matrix its steps are
    0.84-0.89 times torch's.

    Args:
        lr: learning rate (>= 0).
        weight_decay: decoupled decay coefficient (>= 0), scaled by lr.
        momentum: momentum factor (>= 0).
        nesterov: Nesterov momentum.
        ns_coefficients: the quintic iteration's (a, b, c).
        eps: lower bound of the Frobenius norm the update is divided by (>= 0).
        ns_steps: number of Newton–Schulz iterations (0 to 99).
        adjust_lr_fn: None, "original", "match_rms_adamw" or "spectral_unclamped".
        ns_dtype: dtype of the iteration (default bfloat16, as torch's; None:
            the parameter's).
        state_dtype: dtype of the momentum buffer (default: the parameter's), a dict
            by buffer name, or ``"8bit"`` (bitsandbytes' 8-bit blockwise state).
        groups: per-parameter hyperparameters, ``{pattern: {name: value}}``.

    Raises:
        ValueError: (from `init`, `update` and `step`) for a leaf that is not 2-D.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.muon(0.1, weight_decay=0.0, ns_dtype=None)
        >>> params = {"w": jnp.zeros((2, 2))}
        >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
        >>> updates, state = opt.update(grads, opt.init(params), params)
        >>> optax.apply_updates(params, updates)["w"]
        Array([[-0.0689,  0.    ],
               [ 0.    , -0.1114]], dtype=float32)

    References:
        torch.optim.Muon (PyTorch 2.13); Jordan et al., "Muon: An optimizer
        for hidden layers in neural networks", 2024; Liu et al., "Muon is
        Scalable for LLM Training", 2025 (match_rms_adamw).
    """

    reference: ClassVar[str] = "torch.optim.Muon"
    State = MuonState
    elementwise = False  # Newton–Schulz multiplies whole matrices
    eight_bit: ClassVar[dict[str, str]] = {"momentum_buffer": "signed"}
    _static_zero = ("weight_decay",)

    lr: Hyper = field(HYPER, 1e-3, check=NONNEG)
    weight_decay: Hyper = field(HYPER, 0.1, check=NONNEG)
    momentum: Hyper = field(HYPER, 0.95, check=NONNEG)
    nesterov: bool = field(BOOL, True)
    ns_coefficients: tuple[float, ...] = field(FLOATS, (3.4445, -4.775, 2.0315))
    eps: Hyper = field(HYPER, 1e-7, check=NONNEG)
    ns_steps: int = field(INT, 5)
    adjust_lr_fn: str | None = field(MAYBE_STR, None)
    ns_dtype: Any = field(DTYPE, "bfloat16")
    state_dtype: Any = field(DTYPE, None)
    groups: Any = field(GROUPS, None)

    def _validate(self) -> None:
        if len(self.ns_coefficients) != 3:
            raise ValueError(
                f"muon: ns_coefficients must be 3 numbers (a, b, c), got {self.ns_coefficients!r}"
            )
        check_int(self, "ns_steps", minimum=0)
        if self.ns_steps >= 100:  # torch's limit
            raise ValueError(f"muon: ns_steps must be < 100, got {self.ns_steps}")
        check_choice(self, "adjust_lr_fn", ADJUSTMENTS)

    def buffers(self) -> tuple[str, ...]:
        return ("momentum_buffer",)

    def check_leaf(self, owner: str, path: str, leaf: Any) -> None:
        if np.ndim(leaf) != 2:
            raise ValueError(
                f"{owner}: the leaf at {path!r} has shape {np.shape(leaf)}; muon "
                "takes 2-D matrices only: use O.partition to send other leaves to another "
                "optimizer, e.g. adamw"
            )

    def scalars(self, hp, count):
        return hp | {"1-momentum": 1 - hp["momentum"], "1-lr*wd": 1 - hp["lr"] * hp["weight_decay"]}

    def kernel(self, p, g, bufs, s, keep):
        buf = keep("momentum_buffer", torch_lerp(bufs["momentum_buffer"], g, s["1-momentum"]))
        u = torch_lerp(g, buf, s["momentum"]) if self.nesterov else buf
        dtype = self.ns_dtype or s["param_dtype"]
        o = newton_schulz(u, self.ns_coefficients, self.ns_steps, s["eps"], dtype)
        # torch multiplies by the Python float lr * ratio (rounded once).
        step = -(s["lr"] * _lr_ratio(self.adjust_lr_fn, g.shape))
        update = step * o.astype(g.dtype)
        if p is not None:
            update = update + _decay(p, s)
        return update, {"momentum_buffer": buf}
