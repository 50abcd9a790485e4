"""Optimizer-state memory per parameter: cadence (param-dtype, bf16 and 8-bit state), optax, torch.

The 8-bit columns set cadence's ``state_dtype="8bit"`` beside bitsandbytes'
8-bit optimizers (its CPU backend), on the tree and on one large leaf (under
4096 elements both keep float32 state, so the tree's small leaves count at
4 bytes per buffer element).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import _jax, _torch
from ._optimizers import Spec
from ._shapes import Shape


def _cadence_8bit(spec: Spec, params: Any, n: int) -> float | None:
    """cadence's bytes per parameter with 8-bit state, or None where the rule has no moments."""
    try:
        tx = spec.cadence("8bit")
    except ValueError:
        return None
    return _jax.state_bytes(tx, params) / n


def measure(specs: list[Spec], shape: Shape, leaf: Shape | None = None) -> list[dict[str, Any]]:
    """Bytes of state per parameter for each optimizer on `shape`.

    JAX states are measured from shapes after one update (``jax.eval_shape``:
    nothing is allocated); torch's after one real step, counting every tensor in
    ``optimizer.state`` (its per-parameter ``step`` counters included). `leaf`
    (one large leaf) adds the 8-bit columns measured there.
    """
    params = {k: jax.ShapeDtypeStruct(s, jnp.dtype(shape.dtype)) for k, s in shape.leaves.items()}
    n = shape.n_params
    params_np = shape.arrays()[0] if _torch.available() else {}
    rows = []
    for spec in specs:
        torch_bytes = _torch.state_bytes(spec, params_np, shape.dtype)
        rows.append(
            {
                "optimizer": spec.name,
                "shape": shape.key,
                "n_params": n,
                "cadence": _jax.state_bytes(spec.cadence(None), params) / n,
                "cadence_bf16_state": _jax.state_bytes(spec.cadence(jnp.bfloat16), params) / n,
                "optax": _jax.state_bytes(spec.optax(), params) / n if spec.optax else None,
                "torch": torch_bytes / n if torch_bytes is not None else None,
                "cadence_8bit": _cadence_8bit(spec, params, n),
                "bnb_8bit": _per(_torch.state_bytes_8bit(spec, params_np), n),
            }
        )
        if leaf is not None:
            leaf_params = {
                k: jax.ShapeDtypeStruct(s, jnp.dtype(leaf.dtype)) for k, s in leaf.leaves.items()
            }
            leaf_np = leaf.arrays()[0] if _torch.available() else {}
            rows[-1]["leaf_cadence_8bit"] = _cadence_8bit(spec, leaf_params, leaf.n_params)
            rows[-1]["leaf_bnb_8bit"] = _per(_torch.state_bytes_8bit(spec, leaf_np), leaf.n_params)
    return rows


def _per(total: int | None, n: int) -> float | None:
    return total / n if total is not None else None
