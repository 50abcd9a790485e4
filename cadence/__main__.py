"""Command line: ``python -m cadence plot ...`` and ``python -m cadence demo``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cadence import schedules as S


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _schedule_from_arg(args: argparse.Namespace) -> S.Schedule:
    spec = args.schedule
    extra = {}
    for item in args.kw:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--kw expects KEY=VALUE, got {item!r}")
        extra[key] = _parse_value(value)
    if spec in S.NAMES:
        total = args.total if args.total is not None else args.steps
        return S.get(spec, args.peak, warmup_steps=args.warmup, total_steps=total, **extra)
    if extra or args.warmup:
        raise ValueError("--warmup/--kw apply to registered names only, not to configs")
    path = Path(spec)
    text = path.read_text() if path.suffix == ".json" or path.is_file() else spec
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{spec!r} is neither a registered name ({', '.join(S.NAMES)}), "
            f"nor a JSON file, nor inline JSON: {e}"
        ) from e
    return S.from_config(config)


def _plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedule = _schedule_from_arg(args)
    ax = S.plot(schedule, args.steps)
    ax.set_ylabel(args.ylabel)
    ax.figure.savefig(args.output, dpi=120)
    plt.close(ax.figure)
    print(f"wrote {args.output}: {schedule!r}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cadence import _demo

    return _demo.main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cadence``."""
    parser = argparse.ArgumentParser(
        prog="python -m cadence",
        description="Learning-rate schedules and optimizers for JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "plot",
        help="plot a schedule to a PNG",
        description=(
            "Plot a schedule. SCHEDULE is a registered name "
            f"({', '.join(S.NAMES)}), a path to a JSON config (as written by "
            "cadence.schedules.to_config), or inline JSON."
        ),
        epilog=(
            "examples:\n"
            "  python -m cadence plot cosine --steps 1000 --warmup 100 -o cos.png\n"
            "  python -m cadence plot cosine_with_restarts --steps 1000 "
            "--kw num_cycles=3 -o r.png\n"
            '  python -m cadence plot \'{"type": "linear", "init": 1.0, '
            '"end": 0.0, "steps": 100}\' --steps 120 -o lin.png'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("schedule", metavar="SCHEDULE")
    p.add_argument("--steps", type=int, default=1000, help="last step drawn (default 1000)")
    p.add_argument("-o", "--output", default="schedule.png", help="PNG path")
    p.add_argument("--peak", type=float, default=1e-3, help="peak lr for a name")
    p.add_argument("--warmup", type=int, default=0, help="warmup steps for a name")
    p.add_argument(
        "--total",
        type=int,
        default=None,
        help="total steps for a name (default --steps)",
    )
    p.add_argument(
        "--kw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for a name, e.g. num_cycles=2 (repeatable)",
    )
    p.add_argument("--ylabel", default="learning rate")
    p.set_defaults(run=_plot)

    d = sub.add_parser(
        "demo",
        help="train a digits classifier, checkpoint, interrupt, resume, plot",
        description=(
            "Train a small MLP on scikit-learn's digits with AdamW (no weight decay on "
            "biases), gradient clipping and a warmup + cosine schedule; checkpoint "
            "halfway, discard everything, resume from the checkpoint alone, finish, "
            "report test accuracy and plot learning rate and loss (demo.png)."
        ),
    )
    d.add_argument("--steps", type=int, default=600, help="training steps (default 600)")
    d.add_argument("--output-dir", default=".", help="where demo.png goes (default .)")
    d.add_argument("--no-plot", action="store_true", help="do not write demo.png")
    d.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
