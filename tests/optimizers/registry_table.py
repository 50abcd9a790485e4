"""The README's optimizer table, rendered from the registry (`O.optimizers()`).

``python -m tests.optimizers.registry_table`` rewrites the table in README.md;
``test_registry.py`` fails when the README's table is not this rendering.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from cadence import optimizers as O

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = (
    "<!-- optimizer table: generated from O.optimizers() by tests/optimizers/registry_table.py -->"
)
END = "<!-- end of optimizer table -->"
_SKIP = ("state_dtype", "groups")


def library() -> dict[str, type]:
    """The library's own optimizers (the registry also holds users' types)."""
    return {n: c for n, c in O.optimizers().items() if c.__module__.startswith("cadence.")}


def signature(cls: type) -> str:
    args = []
    for f in dataclasses.fields(cls):
        if f.name in _SKIP:
            continue
        args.append(f.name if f.default is dataclasses.MISSING else f"{f.name}={f.default!r}")
    return f"`O.{cls.__name__}({', '.join(args)})`"


def render() -> str:
    rows = [
        "| optimizer | matches | state per parameter | `step`: one pass per leaf on CPU |",
        "|---|---|---|---|",
    ]
    for cls in library().values():
        fixed = ("count", "hyperparams", *cls.shared)
        state = ", ".join(f"`{n}`" for n in cls.State._fields if n not in fixed) or "none"
        if cls.shared:
            state += " (shared: " + ", ".join(f"`{n}`" for n in cls.shared) + ")"
        single = "yes" if cls.elementwise else "no (whole-leaf math)"
        rows.append(f"| {signature(cls)} | {cls.reference} | {state} | {single} |")
    return "\n".join([BEGIN, *rows, END])


def current() -> str | None:
    match = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), README.read_text(), re.S)
    return match.group(0) if match else None


def main() -> None:
    text = README.read_text()
    old = current()
    if old is None:
        raise SystemExit(f"README.md has no block between {BEGIN!r} and {END!r}")
    README.write_text(text.replace(old, render()))
    print("README.md: optimizer table rewritten")


if __name__ == "__main__":
    main()
