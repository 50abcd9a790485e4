"""The sections of ``python -m benchmarks.device``: each fills its result dict and prints its table.

Every section is a ``work(out, deadline)`` that writes its results into `out`
as it goes (so a failure part-way keeps what was measured) and starts nothing
new once the monotonic `deadline` is near.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _compile, _device_steps, _muon, _parity, _shapes
from ._report import fmt, table
from ._timing import bandwidth

STEP_SHAPES = ("a", "b", "bf16", "c")  # (c) last: its rows take longest to compile
# Starting a compile child (importing JAX and cadence) before its first count.
CHILD_STARTUP_S = 15.0


def sections(ctx: dict[str, Any]) -> dict[str, Callable[[dict[str, Any], float], None]]:
    """``name -> work(out, deadline)`` for every section, bound to this run's context."""
    plan, say = ctx["plan"], ctx["report"].say
    dry_run = ctx["args"].dry_run
    shapes = step_shapes(dry_run)

    def parity(out: dict[str, Any], deadline: float) -> None:
        rtol = ctx["args"].rtol or _parity.RTOL
        out |= _parity.check(ctx["accelerator"], ctx["reference"], dry_run, deadline, rtol)
        say(parity_table(out))

    def timing(out: dict[str, Any], deadline: float) -> None:
        out["shapes"] = {}
        bandwidths: dict[int, dict[str, Any]] = {}
        out["stream"] = bandwidth(plan.stream_bytes, plan.runs, plan.steps)
        say(
            f"streaming bandwidth over {plan.stream_bytes / 2**20:.0f} MiB arrays:"
            f" {out['stream']['gb_s']:.0f} GB/s (x stream: the step against it)"
        )
        for key in STEP_SHAPES:
            shape = shapes[key]
            entry: dict[str, Any] = {"label": shape.describe()}
            out["shapes"][key] = entry
            if deadline - time.monotonic() < _device_steps.MIN_COMPILE_S:
                entry |= {"status": "skipped", "note": "section out of time"}
                say(f"\n-- {shape.describe()}: skipped, section out of time")
                continue
            try:
                entry |= _device_steps.time_shape(
                    shape,
                    deadline,
                    plan.runs,
                    plan.steps,
                    ctx["torch_device"],
                    plan.row_timeout,
                    bandwidths,
                    out["stream"]["gb_s"],
                )
                entry["status"] = "ok"
            except Exception as e:  # this shape is reported; the next one runs
                entry |= {"status": "error", "error": f"{type(e).__name__}: {e}"}
            say(shape_table(entry))

    def muon(out: dict[str, Any], deadline: float) -> None:
        matrices = list(plan.matrices)
        out |= _muon.run(matrices, deadline, plan.runs, plan.steps, plan.row_timeout)
        say(muon_table(out))

    def kernels(out: dict[str, Any], deadline: float) -> None:
        shape = shapes["c"]
        timed = ctx["results"].get("timing", {}).get("shapes", {}).get("c", {})
        rows = [_kernel_row(r) for r in timed.get("rows", []) if "kernels" in r]
        out |= {"leaves": shape.n_leaves, "leaf_size": shape.n_params // shape.n_leaves}
        out["source"] = "the timing section's steps" if rows else "compiled here, without timing"
        if not rows:  # the timing section did not reach (c): compile the step here
            rows = _device_steps.kernel_counts(shape, deadline, plan.row_timeout)
        out["rows"] = rows
        if ctx["torch_device"] == "cuda":
            try:
                rows.append(_device_steps.torch_kernels(shape))
            except Exception as e:  # the profiler may be unavailable: say so
                out["torch_error"] = f"{type(e).__name__}: {e}"
        else:
            out["torch_note"] = "torch's kernels are counted on CUDA only"
        say(kernels_table(out))

    def compile_(out: dict[str, Any], deadline: float) -> None:
        counts = list(plan.compile_counts)
        out |= {"kind": "adamw", "counts": counts, "rows": []}
        for library in plan.compile_libraries:
            left = deadline - time.monotonic() - CHILD_STARTUP_S
            budget = min(plan.compile_budget, left)
            if budget < _device_steps.MIN_COMPILE_S:
                out["rows"] += [
                    {"library": library, "kind": "adamw", "leaves": n, "status": "skipped"}
                    | {"lower_s": None, "compile_s": None, "budget_s": None}
                    for n in counts
                ]
                continue
            rows = _compile.measure(library, "adamw", counts, budget)
            out["rows"] += [r | {"budget_s": budget} for r in rows]
        say(compile_table(out["rows"]))

    return {
        "parity": parity,
        "timing": timing,
        "muon": muon,
        "kernels": kernels,
        "compile": compile_,
    }


def step_shapes(dry_run: bool) -> dict[str, _shapes.Shape]:
    """The harness's four shapes, or (dry run) smaller ones still of every kind."""
    if not dry_run:
        return _shapes.shapes(quick=False)
    tf = _shapes.transformer(layers=1, d=16, ff=32, vocab=64, ctx=16)
    return {
        "a": _shapes.Shape("a", "one leaf", _shapes.one_leaf(1 << 12)),
        "b": _shapes.Shape("b", "transformer-like", tf),
        "c": _shapes.Shape("c", "many small leaves", _shapes.many_leaves(12, 100)),
        "bf16": _shapes.Shape("bf16", "transformer-like, bf16 params", tf, "bfloat16"),
    }


def _kernel_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"variant": row["variant"]} | row["kernels"] | {"array_fusions": row.get("fusions")}


# ----------------------------------------------------------------------- tables


def _e(x: float | None) -> str | None:
    return None if x is None else f"{x:.2e}"


def parity_table(p: dict[str, Any]) -> str:
    head = (
        f"{p['tree']}; {p['steps']} steps; {p['devices']['accelerator']} against"
        f" {p['devices']['reference']}; tolerance {p['rtol']:g} (max |a - b| / max |b| per leaf)"
    )
    body = [
        [r["optimizer"], r["path"], _e(r["max_rel_diff"]), r.get("worst_leaf") or r.get("error")]
        + ["ok" if r["ok"] else "MISMATCH"]
        for r in p["rows"]
    ]
    c = p["control"]
    verdict = "flagged (as it must be)" if c["flagged"] else "NOT flagged"
    tail = (
        f"control: adamw step, reference params x (1 + {c['perturbation']:g}):"
        f" {c['max_rel_diff']:.2e} -> {verdict}"
    )
    unchecked = f"registered optimizers not checked: {', '.join(p['unchecked']) or 'none'}"
    rows = table(["optimizer", "path", "max rel diff", "worst leaf", "result"], body)
    return "\n".join([head, rows, tail, unchecked])


def shape_table(s: dict[str, Any]) -> str:
    if s.get("status") != "ok":
        return f"\n-- {s['label']}: {s.get('status')}: {s.get('error', s.get('note', ''))}"
    bw = s["bandwidth"]
    head = (
        f"\n-- {s['label']}: floor {s['floor_bytes_per_param']} B/param = {s['floor_ms']:.4f} ms"
        f" at {bw['gb_s']:.0f} GB/s (axpy {bw['axpy']['gb_s']:.0f}, scale"
        f" {bw['scale']['gb_s']:.0f} GB/s over {bw['bytes_per_array'] / 1e6:.3g} MB arrays)"
    )
    headers = ["variant", "ms/step", "p25-p75", "x floor", "BW %", "x stream", "kernels", "fusions"]
    headers += ["custom calls", "compile s", "note"]
    body = []
    for r in s["rows"]:
        if r["status"] != "ok":
            body.append([r["variant"], None, *[""] * 8, r.get("note", "")])
            continue
        k = r.get("kernels", {})
        compile_s = r["lower_s"] + r["compile_s"] if "compile_s" in r else None
        body.append(
            [
                r["variant"],
                fmt(r["median_ms"], ".4f"),
                f"{r['p25_ms']:.4f}-{r['p75_ms']:.4f}",
                fmt(r["x_floor"]),
                fmt(r["bw_pct"], ".0f"),
                fmt(r["x_stream"]),
                k.get("kernels", ""),
                k.get("fusions", ""),
                k.get("custom_calls", ""),
                fmt(compile_s) or "",
                r.get("device", ""),
            ]
        )
    return "\n".join([head, table(headers, body)])


def kernels_table(k: dict[str, Any]) -> str:
    head = f"one step on {k['leaves']} leaves of {k['leaf_size']} ({k['source']})"
    headers = ["variant", "kernels", "fusions", "array fusions", "custom calls", "copies"]
    headers += ["command buffers", "other"]
    body = [
        [
            r["variant"],
            r["kernels"],
            r.get("fusions", ""),
            r.get("array_fusions", ""),
            r.get("custom_calls", ""),
            r.get("copies", ""),
            r.get("command_buffers", ""),
            ", ".join(f"{n} {c}" for n, c in _others(r)),
        ]
        for r in k["rows"]
    ]
    notes = [k[n] for n in ("torch_note", "torch_error") if n in k]
    return "\n".join([head, table(headers, body), *notes])


def _others(row: dict[str, Any]) -> list[tuple[str, int]]:
    """XLA's other launching opcodes, or torch's most frequent kernels."""
    return list(row.get("other", {}).items()) or list(row.get("top", []))


def muon_table(m: dict[str, Any]) -> str:
    head = (
        f"Newton-Schulz: {m['ns_steps']} steps, coefficients {tuple(m['coefficients'])};"
        f" cadence side: {m['ns_source']}"
    )
    headers = ["matrix", "variant", "ms", "p25-p75", "NS TFLOP/s", "note"]
    body = []
    for r in m["rows"]:
        if r["status"] != "ok":
            body.append([r["matrix"], r["variant"], None, "", "", f"{r['status']}: {r['note']}"])
            continue
        spread = f"{r['p25_ms']:.3f}-{r['p75_ms']:.3f}"
        tflops = fmt(r["ns_tflop_s"], ".1f")
        body.append(
            [r["matrix"], r["variant"], fmt(r["median_ms"], ".3f"), spread, tflops, r["note"]]
        )
    return "\n".join([head, table(headers, body, left=2)])


def compile_table(rows: list[dict[str, Any]]) -> str:
    headers = ["library", "leaves", "lower s", "compile s", "total"]
    body = [
        [r["library"], r["leaves"], fmt(r["lower_s"]), fmt(r["compile_s"])]
        + [_compile.describe(r, r["budget_s"]) if r["budget_s"] else r["status"]]
        for r in rows
    ]
    return table(headers, body, left=2)


def summary(results: dict[str, Any], names: Sequence[str]) -> str:
    """The last lines: the status of each section of `names`, and whether parity held."""
    parts = []
    for name in names:
        s = results[name]
        seconds = f" {s['seconds']:.0f} s" if "seconds" in s else ""
        parts.append(f"{name} {s['status']}{seconds}")
    lines = [f"\n== done in {results['total_s']:.0f} s: " + ", ".join(parts)]
    p = results["parity"]
    if "all_ok" in p:
        bad = [f"{r['optimizer']} {r['path']}" for r in p["rows"] if not r["ok"]]
        verdict = "every optimizer within tolerance" if not bad else "MISMATCH: " + ", ".join(bad)
        if not p["control"]["flagged"]:
            verdict += "; the perturbed control was NOT flagged"
        lines.append(f"parity: {verdict}")
    return "\n".join(lines)
