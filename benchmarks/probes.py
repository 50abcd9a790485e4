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
- ``boundary``: what each array passed into a jitted call, and each array
  donated and returned, costs per call; and the compile time of a donated
  identity with an AdamW step's signature as the leaves grow (moments per
  leaf, and as `flatten` holds them: two vectors).

Timings are medians of interleaved runs, like the main harness; run it with
``--threads 1`` semantics (the process is pinned to one CPU on Linux).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._env import configure
from ._timing import Runner, interleaved, stats, warm

_N_LEAVES = 1000
_LEAF = 1000
_LARGE = 1 << 24
_CHUNK = 1 << 15


def _medians_ms(runners: list[Runner], repeats: int) -> dict[str, float]:
    """Median ms per step of each runner, runs interleaved as in the main harness."""
    warm(runners, 2)
    samples, _ = interleaved(runners, repeats, steps=2)
    return {name: stats(s)["median_ms"] for name, s in samples.items()}


def _compile_s(fn: Callable[..., Any], *args: Any) -> float:

    t = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - t


def _adam(p: Any, g: Any, m: Any, v: Any) -> tuple[Any, Any, Any]:
    """AdamW's arithmetic at step 1 (constants stand in for the scalars)."""

    m = m + 0.1 * (g - m)
    v = 0.999 * v + 0.001 * (g * g)
    u = -0.01 * m / (jnp.sqrt(v) / 0.0316 + 1e-8) + (p * 0.9999 - p)
    return u, m, v


def siblings() -> str:

    x = jax.ShapeDtypeStruct((1000,), jnp.float32)
    text = jax.jit(lambda a, b: (a + b, a * b)).lower(x, x).compile().as_text()
    entry = text[text.find("\nENTRY") :]
    return f"siblings: (a + b, a * b) compiles to {entry.count(' fusion(')} loop(s)"


def distinct(n: int = _N_LEAVES) -> str:

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

    runners, compile_s = [], {}
    for name, fn, state in [
        ("per-leaf state", per_leaf, tuple([jnp.zeros(_LEAF) for _ in range(n)] for _ in "mv")),
        ("flat state", flat_state, (jnp.zeros(n * _LEAF), jnp.zeros(n * _LEAF))),
    ]:
        p = [x + 0 for x in params]
        t = time.perf_counter()
        step = jax.jit(fn, donate_argnums=(0, 1)).lower(p, state, grads).compile()
        compile_s[name] = time.perf_counter() - t
        box = [p, state]

        def run(step: Any = step, box: list[Any] = box) -> None:
            box[0], box[1] = step(box[0], box[1], grads)

        runners.append(Runner(name, "jax", run, lambda box=box: box[0][0].block_until_ready()))
    ms = _medians_ms(runners, repeats)
    rows = [f"{name} {ms[name]:.1f} ms/step, compile {compile_s[name]:.1f} s" for name in ms]
    return f"flat: AdamW over {n} leaves of {_LEAF}: " + "; ".join(rows)


def chunked(size: int = _LARGE, chunk: int = _CHUNK, repeats: int = 15) -> str:

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
    runners, arrays = [], {}
    for name, fn in [("XLA's loops", xla), ("one chunked pass", one_pass)]:
        arrays[name] = [jax.random.normal(k, (size,)) * 1e-2 for k in keys]
        arrays[name][3] = jnp.abs(arrays[name][3])
        step = jax.jit(fn, donate_argnums=(0, 2, 3))

        def run(step: Any = step, a: list[Any] = arrays[name]) -> None:
            a[0], a[2], a[3] = step(*a)

        runners.append(Runner(name, "jax", run, lambda a=arrays[name]: a[0].block_until_ready()))
    ms = _medians_ms(runners, repeats)
    rows = [f"{name} {ms[name]:.1f} ms" for name in ms]
    # Both ran the same steps from the same arrays: the pass must agree.
    a, b = arrays.values()
    agree = all(bool(jnp.allclose(x, y, rtol=1e-5, atol=0)) for x, y in zip(a, b, strict=True))
    return (
        f"chunked: AdamW on one leaf of {size:,}: "
        + "; ".join(rows)
        + ("" if agree else " (RESULTS DIFFER)")
    )


def boundary(n: int = 2000, counts: tuple[int, ...] = (1000, 5000), repeats: int = 9) -> str:
    """What an array crossing the jit boundary costs: per call, and to compile."""
    xs = [jnp.full((_LEAF,), float(i)) for i in range(n)]
    taken = jax.jit(lambda xs: xs[0][0])
    returned = jax.jit(lambda xs: list(xs), donate_argnums=0)
    box = [returned(xs)]

    def run_returned() -> None:
        box[0] = returned(box[0])

    runners = [
        Runner("in", "jax", lambda: taken(box[0]), lambda: None),
        Runner("out", "jax", run_returned, lambda: box[0][0].block_until_ready()),
    ]
    ms = _medians_ms(runners, repeats)
    per_leaf, flat = [], []
    for count in counts:
        leaves = [jax.ShapeDtypeStruct((_LEAF,), jnp.float32)] * count
        vector = jax.ShapeDtypeStruct((count * _LEAF,), jnp.float32)
        # An AdamW step's signature: params, two moments (donated) and grads;
        # under `flatten` the moments are two vectors.
        for out, state in ((per_leaf, leaves), (flat, vector)):
            t = time.perf_counter()
            identity = jax.jit(lambda p, m, v, g: (p, m, v), donate_argnums=(0, 1, 2))
            identity.lower(leaves, state, state, leaves).compile()
            out.append(f"{count} leaves {time.perf_counter() - t:.1f} s")
    return (
        f"boundary: {n} arrays of {_LEAF} into a jitted call {ms['in'] * 1e3 / n:.2f} us each, "
        f"donated and returned {ms['out'] * 1e3 / n:.2f} us each; "
        f"a donated identity with AdamW's signature compiles in {', '.join(per_leaf)}; "
        f"with flatten(AdamW)'s in {', '.join(flat)}"
    )


PROBES = {
    "siblings": siblings,
    "distinct": distinct,
    "flat": flat,
    "chunked": chunked,
    "boundary": boundary,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"probes to run: {', '.join(PROBES)} (all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(PROBES))
    if unknown:
        parser.error(f"unknown probes {unknown}; known: {', '.join(PROBES)}")
    configure(1)  # one CPU, as the main harness's default, before JAX starts

    print(f"jax {jax.__version__} on {jax.default_backend()}", flush=True)
    for name in args.names or PROBES:
        print(PROBES[name](), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
