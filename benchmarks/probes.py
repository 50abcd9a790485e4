"""Probes of XLA's behaviour behind cadence's design (``python -m benchmarks.probes``).

Each probe prints one line of figures on the current JAX backend:

- ``siblings``: whether two elementwise outputs of the same inputs become one
  loop (multi-output fusion) or two.
- ``distinct``: compile time of N identical per-leaf loops against N loops
  that differ (different leaf sizes), and of N slices of one flat array.
- ``flat``: an AdamW step over N leaves of 1000 with per-leaf state against
  the same step with the state held as two flat vectors and the updates
  sliced back per leaf: step time and compile time.
- ``chunked``: AdamW on one large leaf as XLA compiles it against a single
  pass written as a loop over chunks updating the donated buffers in place.

Timings are medians of interleaved runs, like the main harness; run it with
``--threads 1`` semantics (the process is pinned to one CPU on Linux).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

_N_LEAVES = 1000
_LEAF = 1000
_LARGE = 1 << 24
_CHUNK = 1 << 15


def _median_ms(fn: Callable[[], Any], sync: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        fn()
        sync()
        t = time.perf_counter()
        fn()
        fn()
        sync()
        samples.append((time.perf_counter() - t) / 2 * 1e3)
    return statistics.median(samples)


def _compile_s(fn: Callable[..., Any], *args: Any) -> float:
    import jax

    t = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t


def _adam(p: Any, g: Any, m: Any, v: Any) -> tuple[Any, Any, Any]:
    """AdamW's arithmetic at step 1 (constants stand in for the scalars)."""
    import jax.numpy as jnp

    m = m + 0.1 * (g - m)
    v = 0.999 * v + 0.001 * (g * g)
    u = -0.01 * m / (jnp.sqrt(v) / 0.0316 + 1e-8) + (p * 0.9999 - p)
    return u, m, v


def siblings() -> str:
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((1000,), jnp.float32)
    text = jax.jit(lambda a, b: (a + b, a * b)).lower(x, x).compile().as_text()
    entry = text[text.find("\nENTRY") :]
    return f"siblings: (a + b, a * b) compiles to {entry.count(' fusion(')} loop(s)"


def distinct(n: int = _N_LEAVES) -> str:
    import jax
    import jax.numpy as jnp

    same = [jax.ShapeDtypeStruct((_LEAF,), jnp.float32)] * n
    differ = [jax.ShapeDtypeStruct((_LEAF + i,), jnp.float32) for i in range(n)]
    flat = jax.ShapeDtypeStruct((n * _LEAF,), jnp.float32)

    def double(xs: list[Any]) -> list[Any]:
        return [x * 2 for x in xs]

    def split(x: Any) -> list[Any]:
        return [x[i * _LEAF : (i + 1) * _LEAF] * 2 for i in range(n)]

    return (
        f"distinct: {n} loops compile in {_compile_s(double, same):.1f} s when identical, "
        f"{_compile_s(double, differ):.1f} s when each leaf has its own size, "
        f"{_compile_s(split, flat):.1f} s as slices of one flat array"
    )


def flat(n: int = _N_LEAVES, repeats: int = 9) -> str:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.normal(size=_LEAF), jnp.float32) for _ in range(n)]
    grads = [p * 1e-2 for p in params]
    offsets = np.arange(n + 1) * _LEAF

    def per_leaf(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        out = [_adam(*args) for args in zip(p, g, *s, strict=True)]
        return [x + u for x, (u, _, _) in zip(p, out, strict=True)], (
            [m for _, m, _ in out],
            [v for _, _, v in out],
        )

    def flat_state(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        u, m, v = _adam(jnp.concatenate(p), jnp.concatenate(g), *s)
        return [x + u[offsets[i] : offsets[i + 1]] for i, x in enumerate(p)], (m, v)

    rows = []
    for name, fn, state in [
        ("per-leaf state", per_leaf, tuple([jnp.zeros(_LEAF) for _ in range(n)] for _ in "mv")),
        ("flat state", flat_state, (jnp.zeros(n * _LEAF), jnp.zeros(n * _LEAF))),
    ]:
        p = [x + 0 for x in params]
        t = time.perf_counter()
        step = jax.jit(fn, donate_argnums=(0, 1)).lower(p, state, grads).compile()
        compile_s = time.perf_counter() - t
        box = [p, state]

        def run(step: Any = step, box: list[Any] = box) -> None:
            box[0], box[1] = step(box[0], box[1], grads)

        ms = _median_ms(run, lambda box=box: jax.block_until_ready(box[0][0]), repeats)
        rows.append(f"{name} {ms:.1f} ms/step, compile {compile_s:.1f} s")
    return f"flat: AdamW over {n} leaves of {_LEAF}: " + "; ".join(rows)


def chunked(size: int = _LARGE, chunk: int = _CHUNK, repeats: int = 15) -> str:
    import jax
    import jax.numpy as jnp
    from jax import lax

    def xla(p: Any, g: Any, m: Any, v: Any) -> tuple[Any, Any, Any]:
        u, m, v = _adam(p, g, m, v)
        return p + u, m, v

    def one_pass(p: Any, g: Any, m: Any, v: Any) -> tuple[Any, Any, Any]:
        def body(i: Any, carry: Any) -> Any:
            p, m, v = carry
            start = i * chunk
            pi, gi, mi, vi = (lax.dynamic_slice_in_dim(x, start, chunk) for x in (p, g, m, v))
            ui, mi, vi = _adam(pi, gi, mi, vi)
            # Materialise the chunk's results before writing any of them back,
            # so XLA updates the three buffers in place.
            new = lax.optimization_barrier(jnp.stack([pi + ui, mi, vi]))
            return tuple(
                lax.dynamic_update_slice_in_dim(x, new[k], start, 0)
                for k, x in enumerate((p, m, v))
            )

        return lax.fori_loop(0, size // chunk, body, (p, m, v))

    keys = jax.random.split(jax.random.key(0), 4)
    runners = {}
    for name, fn in [("XLA's loops", xla), ("one chunked pass", one_pass)]:
        arrays = [jax.random.normal(k, (size,)) * 1e-2 for k in keys]
        arrays[3] = jnp.abs(arrays[3])
        runners[name] = (jax.jit(fn, donate_argnums=(0, 2, 3)), arrays)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):  # interleaved, so load falls on both alike
        for name, (step, arrays) in runners.items():

            def run(step: Any = step, arrays: list[Any] = arrays) -> None:
                arrays[0], arrays[2], arrays[3] = step(*arrays)

            samples[name].append(
                _median_ms(run, lambda arrays=arrays: arrays[0].block_until_ready(), 1)
            )
    rows = [f"{name} {statistics.median(s):.1f} ms" for name, s in samples.items()]
    # Both ran the same steps from the same arrays: the pass must agree.
    (_, a), (_, b) = runners.values()
    agree = all(bool(jnp.allclose(x, y, rtol=1e-5, atol=0)) for x, y in zip(a, b, strict=True))
    return (
        f"chunked: AdamW on one leaf of {size:,}: "
        + "; ".join(rows)
        + ("" if agree else " (RESULTS DIFFER)")
    )


PROBES = {"siblings": siblings, "distinct": distinct, "flat": flat, "chunked": chunked}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"probes to run: {', '.join(PROBES)} (all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(PROBES))
    if unknown:
        parser.error(f"unknown probes {unknown}; known: {', '.join(PROBES)}")
    if hasattr(os, "sched_setaffinity"):
        # One CPU, as the main harness's default: before JAX starts its pool.
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    import jax

    print(f"jax {jax.__version__} on {jax.default_backend()}", flush=True)
    for name in args.names or PROBES:
        print(PROBES[name](), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
