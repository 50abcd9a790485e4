"""Parity cases for `loss_scale` against torch.amp.GradScaler (on CPU).

Each case trains a small float32 model for `STEPS` iterations of GradScaler's
loop (``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()``)
on the loss ``sum(c_k * p) + sum(p**2) / 2`` (closed loop: its gradient
``c_k + p`` depends on the parameters), whose coefficients ``c_k`` are
scripted: finite on most iterations, and on some an inf, a NaN, or a finite
1e35 that overflows float32 once multiplied by the scale. Small growth
intervals make the scale grow between the skips.

Recorded per iteration: the scale after ``update`` (``get_scale()``),
whether the step was skipped (torch's scale shrank, which it does exactly
when it skips), and the parameters.

``python -m tests.reference.generate loss_scale`` writes `GOLDEN`;
``tests/optimizers/test_loss_scale.py`` compares cadence against it and
against live torch.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np

GOLDEN = "loss_scale.json"

STEPS = 24
SEED = 20261130
SHAPES = {"b": (2,), "w": (3, 2)}


@dataclass(frozen=True)
class Case:
    init_scale: float
    growth_factor: float
    backoff_factor: float
    growth_interval: int
    optimizer: str  # "adam" (lr 0.01) or "sgd" (lr 0.05, momentum 0.9)
    script: str  # one letter per iteration: . finite, i inf, n NaN, o overflow
    x64: bool = False  # scales exact against torch only under jax_enable_x64


CASES = {
    # GradScaler's defaults but a short interval: it grows, backs off, regrows.
    "defaults": Case(2.0**16, 2.0, 0.5, 3, "adam", "....i.....on..ii......o."),
    "sgd_fast": Case(1024.0, 4.0, 0.25, 2, "sgd", "..o...n.i.....iii.......", False),
    # Factors not exact in float32: torch multiplies in float64.
    "odd_factors": Case(3.1, 1.7, 0.3, 1, "adam", ".i..o.....n.......i.....", True),
}


def init_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def coefficients(case: Case) -> list[dict[str, np.ndarray]]:
    """The scripted ``c_k`` of each iteration (float32)."""
    rng = np.random.default_rng(SEED + 1)
    out = []
    for letter in case.script:
        c = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        bad = {"i": np.inf, "n": np.nan, "o": 1e35}.get(letter)
        if bad is not None:
            c["w"][1, 0] = bad
        out.append(c)
    assert len(out) == STEPS
    return out


def run_torch(case: Case) -> dict[str, Any]:
    """GradScaler's loop; per iteration the scale, the skip and the flat parameters."""
    import torch

    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init_params().items()}
    leaves = [params[k] for k in sorted(params)]
    if case.optimizer == "adam":
        opt = torch.optim.Adam(leaves, lr=0.01)
    else:
        opt = torch.optim.SGD(leaves, lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=case.init_scale,
        growth_factor=case.growth_factor,
        backoff_factor=case.backoff_factor,
        growth_interval=case.growth_interval,
    )
    scales, skipped, flat = [], [], []
    for c in coefficients(case):
        opt.zero_grad()
        loss = sum(
            (torch.tensor(c[k]) * params[k]).sum() + (params[k] ** 2).sum() / 2 for k in params
        )
        before = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        skipped.append(scaler.get_scale() < before)
        flat.append(np.concatenate([params[k].detach().numpy().ravel() for k in sorted(params)]))
    return {"scale": scales, "skipped": skipped, "params": np.stack(flat)}


def generate() -> dict[str, Any]:
    """The golden table: case -> scales, skips and float32 parameters per iteration."""
    import torch

    table = {}
    for name, case in CASES.items():
        out = run_torch(case)
        table[name] = {
            "scale": out["scale"],
            "skipped": out["skipped"],
            # Shortest reprs that read back as the same float32.
            "params": [[float(str(v)) for v in row] for row in out["params"]],
        }
    return {
        "meta": {
            "torch": torch.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "seed": SEED,
            "leaves": sorted(SHAPES),
        },
        "cases": table,
    }
