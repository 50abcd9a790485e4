"""Optimizer-step benchmarks: cadence, optax and torch.optim side by side.

Run ``python -m benchmarks`` (or ``make bench``); ``--help`` lists the flags and
``benchmarks/README.md`` explains the columns and holds the latest figures.
Nothing here is imported by cadence or by its tests, except the smoke test that
runs the harness on tiny shapes.
"""
