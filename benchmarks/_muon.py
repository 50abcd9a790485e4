"""Muon's Newton–Schulz on transformer-sized matrices: cadence (or a reference) against optax.

torch.optim.Muon orthogonalizes each update with 5 Newton–Schulz steps of the
quintic ``X <- a X + (b A + c A^2) X``, ``A = X X^T``, coefficients (3.4445,
-4.775, 2.0315), in bfloat16, after scaling X to unit Frobenius norm
(transposed when it has more rows than columns). The rows timed per matrix:

- ``cadence O.muon (step)``: cadence's Muon step, where ``O.muon`` exists;
- ``newton_schulz (local jnp reference, bf16)``: `newton_schulz` below, the
  iteration alone, timed always (and the only cadence-side row without ``O.muon``);
- ``optax newton_schulz (bf16)``: optax's iteration alone on the same bf16 input;
- ``optax.contrib.muon (step)``: optax's whole Muon step on float32 parameters
  (it orthogonalizes in the update's dtype: float32 here).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

from cadence import optimizers as O

from . import _jax
from ._device_steps import MIN_COMPILE_S, jax_runner
from ._timing import interleaved, stats, warm

COEFFS = (3.4445, -4.775, 2.0315)
NS_STEPS = 5
EPS = 1e-7
LR = 1e-3


def newton_schulz(g: jax.Array, steps: int = NS_STEPS, dtype: Any = jnp.bfloat16) -> jax.Array:
    """torch.optim.Muon's orthogonalization of a 2-D `g`, in `dtype`, returned in g's dtype.

    Rounds as torch does: each ``addmm`` (a product plus a scaled matrix)
    accumulates in float32 and rounds to `dtype` once.

    Example:
        >>> import jax.numpy as jnp
        >>> newton_schulz(jnp.eye(4) * 3.0).dtype
        dtype('float32')
    """
    a, b, c = COEFFS
    f32 = jnp.float32

    def mm(u: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.matmul(u, v, preferred_element_type=f32)

    x = g.astype(dtype)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / jnp.maximum(jnp.linalg.norm(x.astype(f32)), EPS).astype(dtype)
    for _ in range(steps):
        gram = mm(x, x.T).astype(dtype)
        update = (b * gram.astype(f32) + c * mm(gram, gram)).astype(dtype)
        x = (a * x.astype(f32) + mm(update, x)).astype(dtype)
    return (x.T if transposed else x).astype(g.dtype)


def flops(rows: int, cols: int, steps: int = NS_STEPS) -> int:
    """Multiply-adds x 2 of the iteration: X X^T, A A and (...) X per step."""
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m**3)


def _optax_ns() -> Any:
    """optax's iteration, or None where this optax keeps it elsewhere (a private module)."""
    module = getattr(optax.contrib, "_muon", None)
    return getattr(module, "orthogonalize_via_newton_schulz", None)


def _variants() -> list[tuple[str, str, Any, str]]:
    """(variant, library, builder of (fn, params, state) from the matrices, note)."""

    def iteration(ns: Any) -> Any:
        def build(w: jax.Array, g: jax.Array) -> tuple[Any, Any, Any]:
            def fn(p: Any, s: Any, grads: Any) -> tuple[Any, Any]:
                return {"w": ns(grads["w"])}, s

            return fn, {"w": jnp.zeros_like(w)}, ()

        return build

    def optimizer(tx: Any, make: Any) -> Any:
        def build(w: jax.Array, g: jax.Array) -> tuple[Any, Any, Any]:
            # A copy: the step is donated, and the other variants need `w`.
            params = {"w": jnp.array(w, copy=True)}
            return make(tx), params, tx.init(params)

        return build

    out = []
    if hasattr(O, "muon"):
        tx = O.muon(LR)
        out.append(("cadence O.muon (step)", "cadence", optimizer(tx, _jax.make_native_step), ""))
    note = "the iteration alone" + ("" if hasattr(O, "muon") else "; O.muon is not in this build")
    out.append(
        ("newton_schulz (local jnp reference, bf16)", "reference", iteration(newton_schulz), note)
    )
    optax_ns = _optax_ns()
    if optax_ns is not None:
        coeffs = jnp.asarray(COEFFS)

        def ns(g: jax.Array) -> jax.Array:
            return optax_ns(g.astype(jnp.bfloat16), coeffs, NS_STEPS).astype(g.dtype)

        out.append(("optax newton_schulz (bf16)", "optax", iteration(ns), "the iteration alone"))
    tx = optax.contrib.muon(LR, ns_coeffs=COEFFS, ns_steps=NS_STEPS)
    note = "whole step; orthogonalizes in float32"
    out.append(("optax.contrib.muon (step)", "optax", optimizer(tx, _jax.make_step), note))
    return out


def run(
    matrices: list[tuple[int, int]], deadline: float, runs: int, steps: int, row_timeout: float
) -> dict[str, Any]:
    """Every variant on every matrix; a variant that fails is reported and the others run."""
    rows = []
    source = "cadence O.muon" if hasattr(O, "muon") else "local jnp reference"
    for rows_, cols in matrices:
        rng = np.random.default_rng(0)
        w = jnp.asarray(rng.standard_normal((rows_, cols), dtype=np.float32) * np.float32(0.02))
        g = {"w": jnp.asarray(rng.standard_normal((rows_, cols), dtype=np.float32) * 1e-2)}
        runners, failed = [], []
        for name, library, build, note in _variants():
            base = {"matrix": f"{rows_}x{cols}", "variant": name, "library": library, "note": note}
            left = deadline - time.monotonic()
            if left < MIN_COMPILE_S:
                failed.append(base | {"status": "skipped", "note": "section out of time"})
                continue
            try:
                fn, params, state = build(w, g["w"])
                r = jax_runner(name, library, fn, params, state, g, min(row_timeout, left))
                r.info |= base
                runners.append(r)
            except Exception as e:  # reported; the other variants still run
                failed.append(base | {"status": "error", "note": f"{type(e).__name__}: {e}"[:2000]})
        warm(runners, 2)
        samples, _ = interleaved(runners, runs, steps)
        for r in runners:
            st = stats(samples[r.name])
            tflops = flops(rows_, cols) / (st["median_ms"] * 1e-3) / 1e12
            rows.append(r.info | {"status": "ok", "ns_tflop_s": tflops} | st)
        rows += failed
    return {
        "ns_source": source,
        "coefficients": list(COEFFS),
        "ns_steps": NS_STEPS,
        "rows": rows,
    }
