"""Regenerate the golden vectors from the live reference libraries.

Run from the repository root, with the references installed (``make
references``: torch, transformers, timm, schedulefree, bitsandbytes)::

    python -m tests.reference.generate            # every table
    python -m tests.reference.generate schedules  # one table

Each table module in `TABLES` defines ``GOLDEN`` (the JSON file name, beside
this script) and ``generate()``, which runs the reference libraries and
returns a JSON-safe dict. The suite compares
cadence against these files always, and against the live libraries when they
are importable.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLES = {
    "schedules": "schedule_cases",
    "optimizers": "optimizer_cases",
    "more_optimizers": "more_optimizer_cases",
    "lbfgs": "lbfgs_cases",
    "loss_scale": "loss_scale_cases",
    "timm_optim": "timm_optim_cases",
    "averaging": "averaging_cases",
    "asgd_rprop": "asgd_rprop_cases",
    "eight_bit": "eight_bit_cases",
    "adaptive": "adaptive_cases",
    "schedule_free": "schedule_free_cases",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="*", metavar="TABLE", help=", ".join(TABLES))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tables) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; known: {', '.join(TABLES)}")
    for table in args.tables or list(TABLES):
        module = importlib.import_module(f"tests.reference.{TABLES[table]}")
        data = module.generate()
        path = HERE / module.GOLDEN
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
