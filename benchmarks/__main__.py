"""``python -m benchmarks``: see `benchmarks._cli.main`."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
