"""Timing: interleaved runs of every variant of a case, and the streaming-bandwidth probe."""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Runner:
    """One row of a case: a stateful `step` (one optimizer update) and `sync` (wait for it).

    `info` holds what the row reports besides time (compile time, XLA analysis).
    """

    name: str
    library: str
    step: Callable[[], None]
    sync: Callable[[], None]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def warm(runners: list[Runner], steps: int) -> None:
    for r in runners:
        for _ in range(steps):
            r.step()
        r.sync()


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(
    runners: list[Runner], runs: int, steps: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds and page faults per step of each runner, one sample per run of `steps` steps.

    Runs of the variants alternate (round robin, rotating who goes first), so
    load from other processes and thermal drift fall on all of them alike.
    Each run starts with one untimed step: it absorbs the previous runner's
    threads still spinning down (OpenMP and Eigen pools spin before sleeping).
    Steps within a run are dispatched back to back and waited for once at the
    end, as a training loop runs them.

    Page faults count because every array-sized buffer a step allocates (a
    temporary, an undonated output) is fresh memory the kernel must map and
    zero, page by page: on some machines that costs more than the arithmetic.
    """
    samples: dict[str, list[float]] = {r.name: [] for r in runners}
    faults: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(runs):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:
            r.step()
            r.sync()
            f0 = _faults()
            t0 = time.perf_counter()
            for _ in range(steps):
                r.step()
            r.sync()
            samples[r.name].append((time.perf_counter() - t0) / steps)
            faults[r.name].append((_faults() - f0) / steps)
    return samples, faults


def stats(seconds: list[float]) -> dict[str, float]:
    """Median and quartiles in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    p25, med, p75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(med), "p25_ms": float(p25), "p75_ms": float(p75)}


def bandwidth(n_bytes: int, runs: int, steps: int) -> dict[str, Any]:
    """Streaming bandwidth over fp32 arrays of `n_bytes` each, jitted on the default device.

    Two kernels, both writing into a donated buffer (no allocation per call,
    as in a donated optimizer step): axpy ``b = a * s + b`` moves 12 B per
    element, scale ``b = a * s`` 8 B. The floor uses the faster of the two.
    """
    n = max(1, n_bytes // 4)
    a = jnp.full((n,), 1e-3, jnp.float32)
    s = jnp.float32(0.5)
    kernels = {
        "axpy": (jax.jit(lambda a, b, s: a * s + b, donate_argnums=1), 12),
        # keep_unused: otherwise jit prunes the unused donated `b` and the
        # output gets a fresh buffer.
        "scale": (jax.jit(lambda a, b, s: a * s, donate_argnums=1, keep_unused=True), 8),
    }
    out: dict[str, Any] = {"bytes_per_array": 4 * n}
    holders = {name: [jnp.zeros((n,), jnp.float32)] for name in kernels}

    def runner(name: str) -> Runner:
        fn, _ = kernels[name]
        box = holders[name]

        def step() -> None:
            box[0] = fn(a, box[0], s)

        return Runner(name, "reference", step, lambda: box[0].block_until_ready())

    runners = [runner(name) for name in kernels]
    warm(runners, 3)
    for name, times in interleaved(runners, runs, steps)[0].items():
        st = stats(times)
        out[name] = st | {"gb_s": kernels[name][1] * n / (st["median_ms"] * 1e-3) / 1e9}
    out["gb_s"] = max(out[name]["gb_s"] for name in kernels)
    return out
