"""Optimizer-state memory per parameter: cadence (param-dtype and bf16 state), optax, torch."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import _jax, _torch
from ._optimizers import Spec
from ._shapes import Shape


def measure(specs: list[Spec], shape: Shape) -> list[dict[str, Any]]:
    """Bytes of state per parameter for each optimizer on `shape`.

    JAX states are measured from shapes after one update (``jax.eval_shape``:
    nothing is allocated); torch's after one real step, counting every tensor in
    ``optimizer.state`` (its per-parameter ``step`` counters included).
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
            }
        )
    return rows
