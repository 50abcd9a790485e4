"""AdamW's step on the accelerator: cadence, optax and torch rows of one shape, timed together.

The rows are the harness's (benchmarks/README.md, *What is measured*), built
for whatever device JAX and torch run on: each JAX row is the donated step,
compiled ahead of time under a time limit (`_kernels.compile_within`) and
inspected for the kernels it launches; torch's rows run on CUDA where torch
sees a GPU (on the CPU in a dry run).
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _jax, _kernels, _torch
from ._optimizers import SPECS
from ._shapes import Shape
from ._timing import Runner, bandwidth, interleaved, stats, warm

SPEC = SPECS["adamw"]
TORCH_MODES = ("fused", "foreach")  # fused: its multi-tensor kernel; foreach: its CUDA default
# Time a row's compile may not be started with less than this left.
MIN_COMPILE_S = 5.0


def jax_runner(
    name: str,
    library: str,
    fn: Callable[[Any, Any, Any], tuple[Any, Any]],
    params: Any,
    state: Any,
    grads: Any,
    timeout: float,
) -> Runner:
    """The donated, compiled `fn` as a `Runner`; `info` holds compile times and kernel counts.

    Raises `_kernels.CompileTimeout` past `timeout` seconds.
    """
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    jitted = jax.jit(fn, donate_argnums=(0, 1))
    compiled, info = _kernels.compile_within(jitted, (params, state, grads), timeout)
    info |= _jax.analyse(compiled, n_params)
    info["kernels"] = _kernels.count(compiled.as_text())
    info["arrays_in"] = len(jax.tree.leaves((params, state, grads)))
    return _jax.compiled_runner(name, library, jitted, params, state, grads, info)


def _jax_rows() -> list[tuple[str, str, Any, Callable]]:
    """(variant, library, transformation, step maker) of each JAX row."""
    return [
        ("cadence.step", "cadence", SPEC.cadence(None), _jax.make_native_step),
        ("cadence.flatten", "cadence", SPEC.flat(None), _jax.make_native_step),
        ("optax", "optax", SPEC.optax(), _jax.make_step),
        ("optax.flatten", "optax", optax.flatten(SPEC.optax()), _jax.make_step),
    ]


def time_shape(
    shape: Shape,
    deadline: float,
    runs: int,
    steps: int,
    torch_device: str | None,
    row_timeout: float,
    bandwidths: dict[int, dict[str, Any]],
    stream_gb_s: float,
) -> dict[str, Any]:
    """Every row of AdamW on `shape`, related to the streaming floors measured here.

    ``x_floor`` is against the bandwidth over arrays of the shape's own size (as
    the harness's tables; on a GPU arrays of (c)'s size stay in its L2 cache),
    ``x_stream`` against `stream_gb_s`, measured over arrays far larger than
    any cache: the memory's own bandwidth.

    A row that fails or does not compile in time is reported with its error and
    the others still run; rows are not started once `deadline` (monotonic) is near.
    """
    n_bytes = shape.n_params * shape.itemsize
    if n_bytes not in bandwidths:
        bandwidths[n_bytes] = bandwidth(n_bytes, runs, steps)
    bw = bandwidths[n_bytes]
    floor_bpp = SPEC.floor_bytes(shape.itemsize)
    floor_ms = shape.n_params * floor_bpp / (bw["gb_s"] * 1e9) * 1e3
    stream_floor_ms = shape.n_params * floor_bpp / (stream_gb_s * 1e9) * 1e3
    params_np, grads_np = shape.arrays()
    grads = jax.block_until_ready(_jax.to_jax(grads_np, shape.dtype))
    runners: list[Runner] = []
    failed: list[dict[str, Any]] = []
    for name, library, tx, make in _jax_rows():
        left = deadline - time.monotonic()
        if left < MIN_COMPILE_S:
            failed.append({"variant": name, "library": library, "status": "skipped"})
            failed[-1]["note"] = "section out of time"
            continue
        try:
            params = _jax.to_jax(params_np, shape.dtype)
            state = tx.init(params)
            runners.append(
                jax_runner(name, library, make(tx), params, state, grads, min(row_timeout, left))
            )
        except Exception as e:  # one row's failure is reported; the others run
            failed.append({"variant": name, "library": library, "status": "error"})
            failed[-1]["note"] = f"{type(e).__name__}: {e}"[:2000]
    for mode in TORCH_MODES:
        name = f"torch ({mode})"
        if torch_device is None:
            note = "torch with CUDA is not importable"
            failed.append({"variant": name, "library": "torch", "status": "skipped", "note": note})
            continue
        try:
            r = _torch.runner(SPEC, params_np, grads_np, shape.dtype, mode, torch_device)
        except Exception as e:
            failed.append({"variant": name, "library": "torch", "status": "error"})
            failed[-1]["note"] = f"{type(e).__name__}: {e}"[:2000]
            continue
        if r is not None:
            runners.append(r)
    warm(runners, 2)
    samples, _ = interleaved(runners, runs, steps)
    rows = []
    for r in runners:
        st = stats(samples[r.name])
        row = {"variant": r.name, "library": r.library, "status": "ok"} | st | r.info
        row |= {"x_floor": st["median_ms"] / floor_ms, "bw_pct": 100 * floor_ms / st["median_ms"]}
        row["x_stream"] = st["median_ms"] / stream_floor_ms
        row["samples_ms"] = [s * 1e3 for s in samples[r.name]]
        rows.append(row)
    del runners
    gc.collect()
    return {
        "label": shape.describe(),
        "n_params": shape.n_params,
        "n_leaves": shape.n_leaves,
        "dtype": shape.dtype,
        "bandwidth": bw,
        "floor_bytes_per_param": floor_bpp,
        "floor_ms": floor_ms,
        "stream_floor_ms": stream_floor_ms,
        "rows": rows + failed,
    }


def kernel_counts(shape: Shape, deadline: float, row_timeout: float) -> list[dict[str, Any]]:
    """Kernels of each JAX row's step on `shape`, compiled from abstract shapes."""
    dtype = jnp.dtype(shape.dtype)
    params = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in shape.leaves.items()}
    rows = []
    for name, _, tx, make in _jax_rows():
        left = deadline - time.monotonic()
        if left < MIN_COMPILE_S:
            rows.append({"variant": name, "kernels": None, "note": "section out of time"})
            continue
        try:
            jitted = jax.jit(make(tx), donate_argnums=(0, 1))
            state = jax.eval_shape(tx.init, params)
            args = (params, state, params)
            compiled, _ = _kernels.compile_within(jitted, args, min(row_timeout, left))
            counts = _kernels.count(compiled.as_text())
            n = shape.n_params
            rows.append(
                {"variant": name} | counts | {"array_fusions": _jax.analyse(compiled, n)["fusions"]}
            )
        except Exception as e:  # reported; the other rows still compile
            rows.append({"variant": name, "kernels": None, "note": f"{type(e).__name__}: {e}"})
    return rows


def torch_kernels(shape: Shape, mode: str = "fused") -> dict[str, Any]:
    """CUDA kernels one torch AdamW step launches on `shape`, counted by torch's profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    params_np, grads_np = shape.arrays()
    r = _torch.runner(SPEC, params_np, grads_np, shape.dtype, mode, "cuda")
    if r is None:
        raise RuntimeError(f"torch has no {mode} AdamW")
    r.step()
    r.sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        r.step()
        r.sync()
    cuda = torch.autograd.DeviceType.CUDA
    # Kernel names are whole C++ signatures: their first 60 characters name them.
    names = Counter(e.name[:60] for e in prof.events() if e.device_type == cuda)
    return {
        "variant": f"torch ({mode})",
        "kernels": sum(names.values()),
        "top": names.most_common(5),
    }
