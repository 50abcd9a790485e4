"""``python -m benchmarks``: parse the flags, run the sections, print tables, write JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _env

STEP_SECTIONS = ("a", "b", "c", "bf16")
SECTIONS = (*STEP_SECTIONS, "memory", "compile")


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {text!r}"
            )
        return items

    return parse


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 100,1000, got {text!r}")
    return counts


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    from ._optimizers import DEFAULT, SPECS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time cadence, optax and torch.optim optimizer steps side by side.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (smoke)")
    parser.add_argument(
        "--only", type=_csv(SECTIONS), default=list(SECTIONS), help=f"of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--optimizers",
        type=_csv(tuple(SPECS)),
        default=list(DEFAULT),
        help=f"of {','.join(SPECS)} (default {','.join(DEFAULT)})",
    )
    parser.add_argument("--repeats", type=int, help="timed runs per variant (default 8; quick 3)")
    parser.add_argument("--steps", type=int, help="steps per timed run (default 2)")
    parser.add_argument(
        "--exhaustive",
        action="store_true",
        help="also optax without donation for every optimizer, optax.flatten on every shape",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPUs (and threads) per library; 0: all (default 1)"
    )
    parser.add_argument("--json", type=Path, help="also write every result to this JSON file")
    parser.add_argument(
        "--compile-budget", type=float, help="seconds per compile measurement (default 60)"
    )
    parser.add_argument(
        "--compile-leaves", type=_counts, help="leaf counts (default 100,1000,5000)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "repeats": 3 if quick else 8,
        "steps": 2,
        "compile_budget": 30.0 if quick else 60.0,
        "compile_leaves": [4, 16] if quick else [100, 1000, 5000],
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1 or args.steps < 1 or args.compile_budget <= 0 or args.threads < 0:
        parser.error("--repeats, --steps, --compile-budget and --threads must be positive")
    return args


_START = [time.monotonic()]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _section(title: str) -> None:
    """A section header, with the minutes since the run started."""
    _say(f"\n== {title}  [{(time.monotonic() - _START[0]) / 60:.1f} min]")


def _steps(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from . import _cases, _report, _shapes, _timing
    from ._optimizers import SPECS

    shapes = _shapes.shapes(args.quick)
    specs = [SPECS[n] for n in args.optimizers]
    bandwidths: dict[int, dict[str, Any]] = {}
    for key in [k for k in STEP_SECTIONS if k in args.only]:
        shape = shapes[key]
        n_bytes = shape.n_params * shape.itemsize
        if n_bytes not in bandwidths:
            bandwidths[n_bytes] = _timing.bandwidth(n_bytes, args.repeats, args.steps)
        bw = bandwidths[n_bytes]
        results["bandwidth"][key] = bw
        _section(shape.describe())
        _say(
            f"streaming bandwidth over {bw['bytes_per_array'] / 1e6:.3g} MB arrays:"
            f" axpy {bw['axpy']['gb_s']:.1f} GB/s, scale {bw['scale']['gb_s']:.1f} GB/s"
            f" -> floor uses {bw['gb_s']:.1f} GB/s"
        )
        data = _cases.data_for(shape)
        for spec in specs:
            rows = _cases.run(
                spec, shape, data, bw["gb_s"], args.repeats, args.steps, args.exhaustive
            )
            summary = _report.summarize(rows)
            results["steps"] += rows
            results["summary"].append(summary)
            floor = rows[0]
            _say(
                f"\n-- ({key}) {spec.label}: floor {floor['floor_bytes_per_param']} B/param"
                f" = {floor['floor_ms']:.2f} ms at {bw['gb_s']:.1f} GB/s"
            )
            _say(_report.case_table(rows))
            _say(_report.case_footer(summary))
        del data


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections named by ``--only``; returns the exit status."""
    args = parse(argv)
    _START[0] = time.monotonic()
    settings = _env.configure(args.threads)
    from . import _compile, _memory, _report, _shapes, _torch
    from ._optimizers import SPECS

    info = _env.machine(settings)
    _say(_env.header(info))
    _say(
        f"options: {'quick, ' if args.quick else ''}sections {','.join(args.only)};"
        f" optimizers {','.join(args.optimizers)}; {args.repeats} timed runs x {args.steps}"
        f" steps per variant (median of runs); compile budget {args.compile_budget:g} s"
    )
    if not _torch.available():
        _say("torch is not installed: torch rows print n/a")
    results: dict[str, Any] = {
        "meta": info,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "bandwidth": {},
        "steps": [],
        "summary": [],
        "memory": [],
        "compile": [],
        "targets": [],
    }
    _steps(args, results)
    if results["summary"]:
        _section("summary (medians; c = cadence; torch = fused, else its fastest path)")
        _say(_report.summary_table(results["summary"]))

    if "memory" in args.only:
        shapes = _shapes.shapes(args.quick)
        shape, leaf = shapes["b"], shapes["a"]
        _section(f"optimizer state, bytes per parameter, on {shape.describe()}")
        results["memory"] = _memory.measure([SPECS[n] for n in args.optimizers], shape, leaf)
        _say(_report.memory_table(results["memory"]))
        _section(
            "8-bit state (state_dtype='8bit'; bnb = bitsandbytes' 8-bit optimizers on CPU),"
            f" bytes per parameter, on (b) and on {leaf.describe()}; the ratios on (a)"
        )
        _say(_report.memory_8bit_table(results["memory"], "(b)", "(a)"))

    if "compile" in args.only:
        leaves = ",".join(map(str, args.compile_leaves))
        _section(
            f"compile time of the donated step, leaves of {_compile.LEAF_SIZE} params"
            f" ({leaves}); budget {args.compile_budget:g} s each"
        )
        results["compile"] = _compile.run(args.compile_leaves, args.compile_budget, sys.stdout)
        _say(_report.compile_table(results["compile"], args.compile_budget))

    results["targets"] = _report.targets(
        results["steps"], results["summary"], results["compile"], args.compile_budget
    )
    _section("targets of issue 5")
    _say(_report.targets_table(results["targets"]))
    results["meta"]["load_average_end"] = _env.load_average()
    results["meta"]["minutes"] = (time.monotonic() - _START[0]) / 60
    _say(
        f"\nload average at end: {results['meta']['load_average_end']};"
        f" total {results['meta']['minutes']:.1f} min"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
        _say(f"wrote {args.json}")
    return 0
