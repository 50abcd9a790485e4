"""Compile time of the full donated step (lower, then compile) as the number of leaves grows.

Each (library, optimizer) pair is measured in a fresh child process
(``python -m benchmarks._compile``) that lowers and compiles the step for each
leaf count in increasing order, printing one JSON line per phase. The parent
gives every leaf count `budget` seconds: past it the child is killed, that
count is reported as ``> budget`` and larger counts as skipped, so a
many-minute compile never blocks the run. The child first compiles a tiny
tree, so one-time start-up work is charged to neither library.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KINDS = ("adamw", "chain")
# cadence.step: `step` (native loops on CPU); cadence.flatten: `step` of the
# optimizer under `O.flatten`; cadence: `update` + apply_updates.
LIBRARIES = ("cadence.step", "cadence.flatten", "cadence", "optax")
LEAF_SIZE = 1000
# Importing jax, optax and cadence in the child; not part of any budget.
STARTUP_S = 120.0


def _reader(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _lower_bound(done: list[dict[str, Any]], n: int) -> float | None:
    """Seconds at `n` leaves on the line through the last two measured counts."""
    if len(done) < 2:
        return None
    (n1, t1), (n2, t2) = [(r["leaves"], r["lower_s"] + r["compile_s"]) for r in done[-2:]]
    return t2 + max(0.0, (t2 - t1) / (n2 - n1)) * (n - n2)


def measure(library: str, kind: str, counts: list[int], budget: float) -> list[dict[str, Any]]:
    """Lower and compile seconds per leaf count.

    ``status`` is ok, timeout, extrapolated (not run; ``at_least_s`` holds the
    bound), skipped (after a timeout or an extrapolation) or error.
    """
    rows = {
        n: {"library": library, "kind": kind, "leaves": n, "lower_s": None, "compile_s": None}
        | {"status": "skipped"}
        for n in counts
    }
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "benchmarks._compile", library, kind, ",".join(map(str, counts))]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=err, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + STARTUP_S
        current: int | None = None
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    if current is not None:
                        rows[current]["status"] = "timeout"
                    break
                if line is None:  # the child exited
                    if current is not None:
                        rows[current]["status"] = "error"
                    break
                msg = json.loads(line)
                if "next" in msg:
                    current = msg["next"]
                    if current is None:
                        break
                    done = [r for r in rows.values() if r["status"] == "ok"]
                    bound = _lower_bound(done, current)
                    if bound is not None and bound > budget:
                        rows[current] |= {"status": "extrapolated", "at_least_s": bound}
                        current = None
                        break
                    rows[current]["status"] = "running"
                    deadline = time.monotonic() + budget
                else:
                    rows[msg["leaves"]][f"{msg['phase']}_s"] = msg["seconds"]
                    if msg["phase"] == "compile":
                        rows[msg["leaves"]]["status"] = "ok"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if any(r["status"] == "error" for r in rows.values()):
            err.seek(0)
            tail = err.read()[-2000:]
            for r in rows.values():
                if r["status"] == "error":
                    r["stderr"] = tail
    return list(rows.values())


def run(counts: list[int], budget: float, log: Any = None) -> list[dict[str, Any]]:
    """Every (kind, library) pair; prints progress to `log` as it goes."""
    out = []
    for kind in KINDS:
        for library in LIBRARIES:
            rows = measure(library, kind, counts, budget)
            out += rows
            if log is not None:
                done = ", ".join(f"{r['leaves']}: {describe(r, budget)}" for r in rows)
                print(f"  compile {library} {kind} (s): {done}", file=log, flush=True)
    return out


def describe(row: dict[str, Any], budget: float) -> str:
    """A row's total seconds as the tables print it."""
    if row["status"] == "ok":
        return f"{row['lower_s'] + row['compile_s']:.2f}"
    if row["status"] == "timeout":
        return f"> {budget:g}"
    if row["status"] == "extrapolated":
        return f"> {budget:g} (est. >= {row['at_least_s']:.3g}, not run)"
    return row["status"]


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._compile")
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("counts")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from ._jax import make_native_step, make_step
    from ._optimizers import SPECS

    jax.config.update("jax_enable_compilation_cache", False)
    spec = SPECS[args.kind]
    if args.library == "optax":
        if spec.optax is None:
            raise SystemExit(f"optax has no {spec.name} with cadence's numerics")
        tx = spec.optax()
    else:
        tx = spec.flat(None) if args.library == "cadence.flatten" else spec.cadence(None)
    make = make_native_step if args.library in ("cadence.step", "cadence.flatten") else make_step

    def lower_compile(n: int, size: int) -> tuple[float, float]:
        params = {f"leaf{i:05d}": jax.ShapeDtypeStruct((size,), jnp.float32) for i in range(n)}
        state = jax.eval_shape(tx.init, params)
        jitted = jax.jit(make(tx), donate_argnums=(0, 1))
        t0 = time.perf_counter()
        lowered = jitted.lower(params, state, params)
        t1 = time.perf_counter()
        lowered.compile()
        return t1 - t0, time.perf_counter() - t1

    def emit(msg: dict[str, Any]) -> None:
        print(json.dumps(msg), flush=True)

    lower_compile(2, 8)
    for n in map(int, args.counts.split(",")):
        emit({"next": n})
        lowered_s, compiled_s = lower_compile(n, LEAF_SIZE)
        emit({"leaves": n, "phase": "lower", "seconds": lowered_s})
        emit({"leaves": n, "phase": "compile", "seconds": compiled_s})
    emit({"next": None})


if __name__ == "__main__":
    _child(sys.argv[1:])
