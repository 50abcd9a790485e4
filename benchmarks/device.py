"""``python -m benchmarks.device``: the step on an accelerator, in one bounded run.

Five sections, each under its own time budget and all under a total one; a
section that fails is recorded as an error and the others still run:

- ``parity``: every optimizer of `_parity.optimizers_to_check` (and the clipped
  chain), jitted on the accelerator and on the CPU from the same inputs, through
  ``step`` and ``update`` + ``apply_updates``: the largest relative difference
  of each, and a perturbed control that must be flagged;
- ``timing``: AdamW on shapes (a), (b), (c) and bf16 (b) for cadence's ``step``,
  ``O.flatten``, optax, ``optax.flatten`` and torch's fused and foreach CUDA
  paths, each against the streaming floor measured in the same run;
- ``muon``: Newton–Schulz (cadence's ``O.muon`` where it exists, else a jnp
  reference) against ``optax.contrib.muon`` on transformer-sized matrices;
- ``kernels``: kernel launches of one step on the 2000-leaf tree (c), from the
  compiled HLO, and torch's fused step's CUDA kernels from its profiler;
- ``compile``: lower + compile of the AdamW step at 100, 1000 and 5000 leaves.

It writes ``device.json`` and ``device.txt`` (``dry-run.*`` with ``--dry-run``,
which runs every section on the CPU with tiny shapes) under ``--out``.
benchmarks/README.md, *On an accelerator*, says how to run it and what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from . import _env, _kernels

SECTIONS = ("parity", "timing", "muon", "kernels", "compile")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "device"
SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and time budgets of one mode (seconds; `caps` per section, `budget` in all)."""

    budget: float
    caps: dict[str, float]
    runs: int
    steps: int
    stream_bytes: int
    row_timeout: float
    compile_counts: tuple[int, ...]
    compile_budget: float
    compile_libraries: tuple[str, ...]
    matrices: tuple[tuple[int, int], ...]
    threads: int


# Sized for 8 minutes on one H200: 420 s from the start of `main` (starting
# CUDA and building cadence's CPU kernels included), plus importing JAX and
# torch, plus what the last row or compile started may overrun its section.
# Later sections get what earlier ones leave.
DEVICE = Plan(
    budget=420.0,
    caps={"parity": 75.0, "timing": 200.0, "muon": 45.0, "kernels": 45.0, "compile": 130.0},
    runs=10,
    steps=10,
    stream_bytes=1 << 30,  # 18x the H200's 60 MB of L2
    row_timeout=90.0,
    compile_counts=(100, 1000, 5000),
    compile_budget=30.0,
    compile_libraries=("cadence.step", "cadence.flatten", "optax"),
    matrices=((1024, 1024), (4096, 1024), (1024, 4096)),
    threads=0,
)
# Every section on the CPU with tiny shapes: well under a minute on 2 cores.
DRY_RUN = Plan(
    budget=150.0,
    caps=dict.fromkeys(SECTIONS, 60.0),
    runs=2,
    steps=1,
    stream_bytes=1 << 22,
    row_timeout=60.0,
    compile_counts=(4, 16),
    compile_budget=30.0,
    compile_libraries=("cadence.step", "optax"),
    matrices=((64, 64), (128, 64), (64, 128)),
    threads=1,
)
# A section is not started with less time than this left.
MIN_SECTION_S = 5.0


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.device",
        description="Check and time cadence's optimizer step on an accelerator (JSON + table).",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="every section on the CPU, tiny shapes (a test)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    parser.add_argument("--budget", type=float, help="total seconds for the sections")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--rtol", type=float, help="parity tolerance (default 1e-5)")
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="leave torch out, its rows skipped (if its CUDA libraries clash with JAX's)",
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in (args.only or ",".join(SECTIONS)).split(",") if s.strip()]
    if not only or any(s not in SECTIONS for s in only):
        parser.error(f"--only: expected a subset of {','.join(SECTIONS)}, got {args.only!r}")
    args.only = [s for s in SECTIONS if s in only]  # sections run in their own order
    for flag in ("budget", "rtol"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be positive")
    return args


class Report:
    """The text table, printed as it grows and written at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def _section(
    name: str,
    work: Callable[[dict[str, Any], float], None],
    results: dict[str, Any],
    cap: float,
    start: float,
    run_deadline: float,
    report: Report,
) -> None:
    """Run one section under its budget; an exception becomes its recorded error."""
    now = time.monotonic()
    budget = min(cap, run_deadline - now)
    out: dict[str, Any] = {"status": "running", "budget_s": round(budget, 1)}
    results[name] = out
    report.say(f"\n== {name}  [budget {budget:.0f} s, {now - start:.0f} s into the run]")
    if budget < MIN_SECTION_S:
        out |= {"status": "skipped", "note": "the run's time budget is spent"}
        report.say("skipped: the run's time budget is spent")
        return
    try:
        work(out, now + budget)
        out["status"] = "ok"
    except Exception as e:  # recorded; the other sections still run
        out |= {"status": "error", "error": f"{type(e).__name__}: {e}"}
        out["traceback"] = traceback.format_exc()[-4000:]
        report.say(f"error: {type(e).__name__}: {e}")
    out["seconds"] = round(time.monotonic() - now, 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections; 0 when all ran and parity holds, 1 otherwise, 2 without an accelerator."""
    args = parse(argv)
    start = time.monotonic()
    plan = DRY_RUN if args.dry_run else DEVICE
    if args.budget is not None:
        plan = dataclasses.replace(plan, budget=args.budget)
    # JAX must not take 75% of the GPU up front: torch shares it, and so do the
    # compile-time child processes.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.no_torch:
        sys.modules["torch"] = None  # every `import torch` now raises ImportError
    # Imported only now: they import torch.
    from . import _device_sections, _torch

    settings = _env.configure(plan.threads)
    report = Report()
    if not args.dry_run and jax.default_backend() == "cpu":
        report.say("no accelerator: JAX's default backend is the CPU (use --dry-run here)")
        return 2
    info = _env.machine(settings)
    info["command"] = " ".join(["python", "-m", "benchmarks.device", *sys.argv[1:]])
    accelerator, reference = jax.devices()[0], jax.devices("cpu")[0]
    torch_device, torch_note = _torch_device(_torch, args.dry_run)
    info |= {"accelerator": str(accelerator), "reference": str(reference)}
    info |= {"torch_device": torch_device, "torch_note": torch_note}
    report.say(_env.header(info).replace("optimizer benchmarks", "device check", 1))
    report.say(f"parity: {accelerator} against {reference}; torch: {torch_note}")
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "dry-run" if args.dry_run else "device",
        "meta": info,
        "plan": dataclasses.asdict(plan) | {"only": args.only},
    }
    results |= {name: {"status": "skipped", "note": "not in --only"} for name in SECTIONS}
    ctx = {"args": args, "plan": plan, "results": results, "report": report}
    ctx |= {"accelerator": accelerator, "reference": reference, "torch_device": torch_device}
    works = _device_sections.sections(ctx)
    deadline = start + plan.budget
    stem = args.out / ("dry-run" if args.dry_run else "device")
    for name in args.only:
        _section(name, works[name], results, plan.caps[name], start, deadline, report)
        # Written after every section: a run killed from outside keeps what it measured.
        _write(stem, results | {"total_s": round(time.monotonic() - start, 1)}, report)
    results["total_s"] = round(time.monotonic() - start, 1)
    report.say(_device_sections.summary(results, SECTIONS))
    _write(stem, results, report)
    print(f"wrote {stem}.json and {stem}.txt", flush=True)
    ran = [results[n] for n in args.only]
    parity_ok = results.get("parity", {}).get("all_ok", True)
    code = 0 if all(s["status"] == "ok" for s in ran) and parity_ok else 1
    if any(t.is_alive() for t in _kernels.ABANDONED):
        # A compile that outran its budget is still running in a thread:
        # everything is written, so end without waiting for it.
        sys.stdout.flush()
        os._exit(code)
    return code


def _write(stem: Path, results: dict[str, Any], report: Report) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    stem.with_suffix(".txt").write_text("\n".join(report.lines) + "\n")


def _torch_device(_torch: Any, dry_run: bool) -> tuple[str | None, str]:
    """Where torch's rows run ("cuda", "cpu" in a dry run, or None) and a note saying so."""
    if not _torch.available():
        return None, "torch is not importable: its rows are skipped"
    import torch

    if torch.cuda.is_available():
        return "cuda", f"torch {torch.__version__} on {torch.cuda.get_device_name()}"
    if dry_run:
        return "cpu", f"torch {torch.__version__} on the CPU (dry run)"
    return None, f"torch {torch.__version__} has no CUDA here: its rows are skipped"


if __name__ == "__main__":
    raise SystemExit(main())
