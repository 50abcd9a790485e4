"""One case = one shape x one optimizer: build every library's row, time them together."""

from __future__ import annotations

import gc
from typing import Any

import jax
import numpy as np
import optax

from . import _jax, _torch
from ._optimizers import Spec
from ._shapes import Shape
from ._timing import Runner, interleaved, stats, warm

# Rows that run by default only for the optimizers the issue makes claims about:
# optax without donation (AdamW, the chain) everywhere, and on trees of more than
# BIG_TREE leaves also optax.flatten (AdamW): at 2000 leaves each of these takes
# 30-100 s to compile here. --exhaustive runs them for every optimizer.
NO_DONATION = ("adamw", "chain")
BIG_TREE = 1000
BIG_TREE_FLATTEN = ("adamw",)


def _runners(
    spec: Spec, shape: Shape, data: dict[str, Any], exhaustive: bool
) -> tuple[list[Runner], list[dict]]:
    """The timed runners and the rows that do not run (n/a, with the reason)."""
    params_np, grads = data["params_np"], data["grads"]
    dtype = shape.dtype

    def jax_row(
        name: str, library: str, tx: Any, donate: bool = True, make: Any = _jax.make_step
    ) -> Runner:
        return _jax.runner(name, library, make(tx), tx.init, params_np, grads, dtype, donate)

    cadence = spec.cadence(None)
    runners = [jax_row("cadence.step", "cadence", cadence, make=_jax.make_native_step)]
    missing = []
    if spec.flattenable:
        runners.append(
            jax_row("cadence.flatten", "cadence", spec.flat(None), make=_jax.make_native_step)
        )
    else:
        note = f"O.flatten does not take {spec.name}"
        missing.append(
            {"variant": "cadence.flatten", "library": "cadence", "median_ms": None, "note": note}
        )
    runners.append(jax_row("cadence", "cadence", cadence))
    big = shape.n_leaves > BIG_TREE
    if spec.optax is None:
        note = f"optax has no {spec.name} with these numerics"
        missing += [
            {"variant": v, "library": "optax", "median_ms": None, "note": note}
            for v in ("optax", "optax.flatten")
        ]
        return runners + _torch_rows(spec, data, dtype, missing), missing
    runners.append(jax_row("optax", "optax", spec.optax()))

    def skip(variant: str) -> None:
        note = f"skipped: slow to compile at {shape.n_leaves} leaves (--exhaustive runs it)"
        missing.append({"variant": variant, "library": "optax", "median_ms": None, "note": note})

    if exhaustive or (spec.name in NO_DONATION and not big):
        runners.append(jax_row("optax (no donation)", "optax", spec.optax(), donate=False))
    elif spec.name in NO_DONATION:
        skip("optax (no donation)")
    if exhaustive or not big or spec.name in BIG_TREE_FLATTEN:
        runners.append(jax_row("optax.flatten", "optax", optax.flatten(spec.optax())))
    else:
        skip("optax.flatten")
    return runners + _torch_rows(spec, data, dtype, missing), missing


def _torch_rows(spec: Spec, data: dict[str, Any], dtype: Any, missing: list[dict]) -> list[Runner]:
    """The jitted identity (the dispatch floor) and torch's runners; n/a rows go to `missing`."""
    params_np, grads_np, grads = data["params_np"], data["grads_np"], data["grads"]
    cadence = spec.cadence(None)
    runners = [
        _jax.runner(
            "jit identity", "reference", _jax.identity, cadence.init, params_np, grads, dtype, True
        )
    ]
    for mode in _torch.MODES:
        name = f"torch ({mode})"
        r = _torch.runner(spec, params_np, grads_np, dtype, mode)
        if r is not None:
            runners.append(r)
            continue
        if not _torch.available():
            note = "torch not installed"
        elif spec.torch is None:
            note = f"torch has no {spec.name}"
        else:
            note = f"torch {spec.torch[0]} has no {mode} path"
        missing.append({"variant": name, "library": "torch", "median_ms": None, "note": note})
    return runners


def run(
    spec: Spec,
    shape: Shape,
    data: dict[str, Any],
    bw_gb_s: float,
    runs: int,
    steps: int,
    exhaustive: bool = False,
) -> list[dict[str, Any]]:
    """Time every variant of `spec` on `shape`; one result row per variant (n/a rows included)."""
    runners, missing = _runners(spec, shape, data, exhaustive)
    warm(runners, 2)
    samples, faults = interleaved(runners, runs, steps)
    floor_bpp = spec.floor_bytes(shape.itemsize)
    floor_ms = shape.n_params * floor_bpp / (bw_gb_s * 1e9) * 1e3
    base = {
        "shape": shape.key,
        "optimizer": spec.name,
        "n_params": shape.n_params,
        "n_leaves": shape.n_leaves,
        "dtype": shape.dtype,
        "floor_bytes_per_param": floor_bpp,
        "floor_ms": floor_ms,
    }
    rows = []
    for r in runners:
        st = stats(samples[r.name])
        row = base | {"variant": r.name, "library": r.library} | st | r.info
        row["samples_ms"] = [s * 1e3 for s in samples[r.name]]
        row["page_faults_per_step"] = float(np.median(faults[r.name]))
        if r.library != "reference":
            row["x_floor"] = st["median_ms"] / floor_ms
            row["bw_pct"] = 100 * floor_ms / st["median_ms"]
        rows.append(row)
    rows += [base | m for m in missing]
    del runners
    gc.collect()
    return rows


def data_for(shape: Shape) -> dict[str, Any]:
    """The shape's arrays: NumPy for torch and fresh JAX params, shared JAX grads."""
    params_np, grads_np = shape.arrays()
    return {
        "params_np": params_np,
        "grads_np": grads_np,
        "grads": jax.block_until_ready(_jax.to_jax(grads_np, shape.dtype)),
    }
