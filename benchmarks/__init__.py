"""Optimizer-step benchmarks: cadence, optax and torch.optim side by side.

Run ``python -m benchmarks`` (or ``make bench``); ``--help`` lists the flags and
``benchmarks/README.md`` explains the columns and holds the latest figures.
``python -m benchmarks.device`` is the same comparison on an accelerator.
Nothing here is imported by cadence or by its tests, except the tests that run
the harness and the device check on tiny shapes.
"""
