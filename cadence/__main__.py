"""Command line: ``python -m cadence plot ...`` and ``python -m cadence demo``."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cadence import schedules as S

MAX_STEP = 2**31 - 1  # schedules count steps in int32
# `plot` evaluates and draws every step: 10 million points take seconds and
# about 200 MB; beyond that the picture would not change, only the wait.
MAX_PLOT_STEPS = 10_000_000
# No schedule config needs more levels; deeper ones only exhaust the stack.
MAX_JSON_DEPTH = 100

# Errors that a bad argument can raise anywhere on the way to the picture.
_BAD_INPUT = (ValueError, TypeError, OSError, OverflowError, RecursionError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_in(low: int, high: int, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}{why}, got {value}")
        return value

    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _json_depth(data: Any) -> int:
    """How deeply `data` nests (iteratively: a deep config must not exhaust the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def _load_json(text: str, what: str) -> Any:
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} nests too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    depth = _json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{what} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are read")
    return data


def _parse_value(text: str, key: str) -> Any:
    try:
        return _load_json(text, f"--kw {key}")
    except json.JSONDecodeError:
        return text


def _examples(peak: float, total: int) -> dict[str, Any]:
    """Every schedule type that `get` does not name, built to fill a run of `total` steps.

    ``--kw`` overrides any of the keyword arguments shown here.
    """
    q = max(1, total // 4)
    return {
        "exponential": lambda **kw: S.exponential(
            **{"init": peak, "rate": 0.01 ** (1 / total)} | kw
        ),
        "step_decay": lambda **kw: S.step_decay(**{"init": peak, "every": q, "gamma": 0.5} | kw),
        "multistep": lambda **kw: S.multistep(
            **{"init": peak, "milestones": [2 * q, 3 * q], "gamma": 0.1} | kw
        ),
        "piecewise": lambda **kw: S.piecewise(
            **{"boundaries": [q, 3 * q], "values": [peak, peak / 2, peak / 10]} | kw
        ),
        "noam": lambda **kw: S.noam(**{"d_model": 512, "warmup": q} | kw),
        "one_cycle": lambda **kw: S.one_cycle(**{"peak": peak, "steps": total} | kw),
        "cyclic": lambda **kw: S.cyclic(**{"base": peak / 10, "peak": peak, "up": q // 2} | kw),
        # The momentum (or b1) torch cycles against those two lr schedules.
        "one_cycle_momentum": lambda **kw: S.one_cycle_momentum(**{"steps": total} | kw),
        "cyclic_momentum": lambda **kw: S.cyclic_momentum(
            **{"base": 0.8, "peak": 0.9, "up": q // 2} | kw
        ),
        "wsd": lambda **kw: S.wsd(
            **{"peak": peak, "warmup": q // 2, "stable": 2 * q, "decay": q} | kw
        ),
        "restarts": lambda **kw: S.restarts(
            **{"s": S.cosine(peak, q, end=peak / 100), "period": q // 2 or 1, "mult": 2.0} | kw
        ),
        "per_epoch": lambda **kw: S.per_epoch(
            **{"s": S.step_decay(peak, 2, 0.5), "steps_per_epoch": max(1, total // 10)} | kw
        ),
        "join": lambda **kw: S.join(
            **{"schedules": [S.constant(peak), S.linear(peak, 0.0, total - q)], "boundaries": [q]}
            | kw
        ),
        "warmup": lambda **kw: S.warmup(**{"s": S.cosine(peak, total - q), "steps": q} | kw),
        "shift": lambda **kw: S.shift(**{"s": S.cosine(peak, total + q), "steps": q} | kw),
        "clip": lambda **kw: S.clip(**{"s": S.cyclic(0.0, 2 * peak, q), "hi": peak} | kw),
        # torch's SWALR: from the lr SWA starts at down to the constant SWA lr.
        "swa": lambda **kw: S.swa(**{"init": peak, "swa_lr": peak / 5, "steps": q} | kw),
    }


def _schedule_from_arg(args: argparse.Namespace) -> S.Schedule:
    spec = args.schedule
    extra = {}
    for item in args.kw:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--kw expects KEY=VALUE, got {item!r}")
        extra[key] = _parse_value(value, key)
    total = args.total if args.total is not None else args.steps
    if spec in S.NAMES:
        # The names transformers gives no default for get one for plotting.
        if spec in ("cosine_with_min_lr", "cosine_warmup_with_min_lr") and not (
            {"min_lr", "min_lr_rate"} & set(extra)
        ):
            extra["min_lr_rate"] = 0.1
        if spec == "warmup_stable_decay":
            extra.setdefault("num_decay_steps", max(1, (total - args.warmup) // 5))
        return S.get(spec, args.peak, warmup_steps=args.warmup, total_steps=total, **extra)
    examples = _examples(args.peak, max(2, total - args.warmup))
    if spec in examples:
        schedule = examples[spec](**extra)
        return S.warmup(schedule, args.warmup) if args.warmup else schedule
    if extra or args.warmup:
        raise ValueError("--warmup/--kw apply to registered names only, not to configs")
    text, what = spec, "the inline JSON"
    if not spec.lstrip().startswith(("{", "[")):  # not inline JSON: a file, if any
        path = Path(spec)
        try:
            is_file = path.is_file()
        except OSError:  # e.g. a name too long to be a file
            is_file = False
        if path.suffix == ".json" or is_file:
            text, what = path.read_text(), str(path)
    try:
        config = _load_json(text, what)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{spec!r} is neither a schedule name ({', '.join(_names())}), "
            f"nor a JSON file, nor inline JSON: {e}"
        ) from e
    return S.from_config(config)


def _names() -> list[str]:
    return [*S.NAMES, *_examples(1.0, 100)]


def _output_path(output: str) -> Path:
    """The file `plot` writes: `output`, with ".png" added when it has no suffix."""
    from matplotlib.figure import Figure

    path = Path(output)
    if not path.parent.is_dir():
        raise ValueError(f"-o {output}: there is no directory {path.parent}")
    if not path.suffix:
        return path.with_name(path.name + ".png")
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ValueError(
            f"-o {output}: cannot write {path.suffix} files; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    return path


def _check_values(schedule: S.Schedule, steps: int) -> None:
    """Refuse a schedule that cannot be drawn: one not finite at some step."""
    import jax.numpy as jnp
    import numpy as np

    try:
        with warnings.catch_warnings():
            # An overflow to inf is reported below, naming the step.
            warnings.simplefilter("ignore", RuntimeWarning)
            values = np.asarray(schedule(jnp.arange(steps + 1)))
    except (OverflowError, ValueError, TypeError) as e:
        raise ValueError(f"cannot evaluate {schedule!r}: {e}") from e
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        step = int(bad[0])
        raise ValueError(f"{schedule!r} is {values[step]} at step {step}: nothing to plot")


def _plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = _output_path(args.output)
    schedule = _schedule_from_arg(args)
    _check_values(schedule, args.steps)
    ax = S.plot(schedule, args.steps)
    ax.set_ylabel(args.ylabel)
    try:
        ax.figure.savefig(output, dpi=120)
    finally:
        plt.close(ax.figure)
    print(f"wrote {output}: {schedule!r}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cadence import _demo

    return _demo.main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cadence``."""
    parser = _Parser(
        prog="python -m cadence",
        description="Learning-rate schedules and optimizers for JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "plot",
        help="plot a schedule to a PNG",
        description=(
            "Plot a schedule. SCHEDULE is one of transformers' names "
            f"({', '.join(S.NAMES)}), another schedule type, shown with "
            f"example arguments that --kw overrides ({', '.join(_examples(1.0, 100))}), "
            "a path to a JSON config (as written by cadence.schedules.to_config), or "
            "inline JSON."
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
    p.add_argument(
        "--steps",
        type=_int_in(1, MAX_PLOT_STEPS, " (every step is drawn)"),
        default=1000,
        help=f"last step drawn, at most {MAX_PLOT_STEPS} (default 1000)",
    )
    p.add_argument(
        "-o",
        "--output",
        default="schedule.png",
        help="image path (default schedule.png; .png is added to a name without a suffix)",
    )
    p.add_argument("--peak", type=_finite_float, default=1e-3, help="peak lr for a name")
    p.add_argument(
        "--warmup",
        type=_int_in(0, MAX_STEP),
        default=0,
        help="warmup steps before a named schedule",
    )
    p.add_argument(
        "--total",
        type=_int_in(1, MAX_STEP),
        default=None,
        help="total steps for a name (default --steps)",
    )
    p.add_argument(
        "--kw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for a named schedule, e.g. num_cycles=2 (repeatable; JSON values)",
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
    d.add_argument(
        "--steps", type=_int_in(1, MAX_STEP), default=600, help="training steps (default 600)"
    )
    d.add_argument("--output-dir", default=".", help="where demo.png goes (default .)")
    d.add_argument("--no-plot", action="store_true", help="do not write demo.png")
    d.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="the parameters' and activations' dtype (default float32)",
    )
    d.add_argument(
        "--master-weights",
        action="store_true",
        help="keep a float32 copy of low-precision parameters (O.master_weights)",
    )
    d.add_argument("--loss-scale", action="store_true", help="dynamic loss scaling (O.loss_scale)")
    d.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except _BAD_INPUT as e:
        # One line: the first of the message (tracebacks are for bugs).
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
