"""Parity cases for `asgd` and `rprop` against torch.optim's ASGD and Rprop.

The model, data and problems are `optimizer_cases`' (four leaves, 200
updates, ``random`` open-loop gradients over four orders of magnitude and the
``lsq`` closed-loop fit). Besides the parameters, the golden file keeps ASGD's
averaged parameters (torch's ``state["ax"]``, read through
`O.averaged_params` on cadence's side) at every snapshot: with ``t0`` at 20
or 50 the average switches on within the run.

In float64 torch runs under ``torch.set_default_dtype(torch.float64)``, so
that ASGD's ``eta`` and ``mu`` (kept in torch's default dtype) are float64.

``python -m tests.reference.generate asgd_rprop`` writes `GOLDEN`;
``tests/optimizers/test_asgd_rprop_parity.py`` compares cadence against it
and against live torch.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadence import optimizers as O
from cadence import schedules as S

from . import golden
from .more_optimizer_cases import default_dtype
from .optimizer_cases import LEAVES, SAMPLES, SNAPSHOTS, STEPS, cosine, flat, problem

GOLDEN = "asgd_rprop.json"

PROBLEMS = ("random", "lsq")
DTYPES = ("float64", "float32")

COSINE = cosine(1.0, 0.0, STEPS)  # S.cosine(lr, STEPS) / lr


@dataclass(frozen=True)
class Case:
    """One configuration, built both ways.

    `torch` names the torch.optim class and its keyword arguments; `groups`
    lists torch param groups beyond the default one (leaf names and the
    options that differ), written out from cadence's glob patterns;
    `lr_factor` multiplies every group's lr at update k on the torch side
    (LambdaLR), as the builder's schedules do on cadence's.
    """

    id: str
    build: Callable[[], O.Transformation]
    torch: tuple[str, dict[str, Any]]
    groups: tuple[dict[str, Any], ...] = ()
    lr_factor: Callable[[int], float] | None = None

    @property
    def averages(self) -> bool:
        return self.torch[0] == "ASGD"


def _cases() -> list[Case]:
    cos = lambda init: S.cosine(init, STEPS)  # noqa: E731
    return [
        Case("asgd_t0", lambda: O.asgd(0.01, t0=50.0), ("ASGD", dict(lr=0.01, t0=50))),
        Case(
            "asgd_decay",
            lambda: O.asgd(0.05, lambd=1e-2, alpha=0.5, t0=20.0, weight_decay=0.05),
            ("ASGD", dict(lr=0.05, lambd=1e-2, alpha=0.5, t0=20, weight_decay=0.05)),
        ),
        Case(
            # A scheduled lr reaches the step through eta, one update late.
            "asgd_groups_cosine",
            lambda: O.asgd(
                cos(0.02),
                lambd=1e-3,
                t0=50.0,
                weight_decay=0.01,
                groups={
                    "*/b": {"weight_decay": 0.0, "lambd": 0.0},
                    "encoder/**": {"lr": cos(0.005), "t0": 100.0},
                },
            ),
            ("ASGD", dict(lr=0.02, lambd=1e-3, t0=50, weight_decay=0.01)),
            groups=(
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0, "lambd": 0.0},
                {"params": ["encoder/w"], "lr": 0.005, "t0": 100},
            ),
            lr_factor=COSINE,
        ),
        Case("rprop_default", lambda: O.rprop(0.01), ("Rprop", dict(lr=0.01))),
        Case(
            "rprop_bounds",
            lambda: O.rprop(0.05, eta_minus=0.3, eta_plus=1.5, min_step=1e-3, max_step=0.2),
            ("Rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2))),
        ),
        Case(
            # torch's scheduler changes the group's lr, which Rprop reads only
            # when it creates the step sizes: the schedule has no effect after.
            "rprop_groups_cosine",
            lambda: O.rprop(
                cos(0.01),
                groups={"*/b": {"lr": cos(0.002), "max_step": 0.05, "eta_plus": 1.1}},
            ),
            ("Rprop", dict(lr=0.01)),
            groups=(
                {
                    "params": ["encoder/b", "head/b"],
                    "lr": 0.002,
                    "step_sizes": (1e-6, 0.05),
                    "etas": (0.5, 1.1),
                },
            ),
            lr_factor=COSINE,
        ),
    ]


CASES: dict[str, Case] = {c.id: c for c in _cases()}


# --------------------------------------------------------------------------- torch


def run_torch(case: Case, problem_name: str, dtype: str) -> dict[str, np.ndarray]:
    """torch's parameters (and ASGD's ``ax``) after each update in `SNAPSHOTS`.

    ``{"params": (len(SNAPSHOTS), SIZE), "ax": same or None}``.
    """
    import torch

    torch.set_num_threads(1)
    with default_dtype(torch.float64 if dtype == "float64" else torch.float32):
        return _run_torch(case, problem_name, getattr(torch, dtype))


def _run_torch(case: Case, problem_name: str, tdtype: Any) -> dict[str, np.ndarray]:
    import torch

    data = problem()
    params = {n: torch.nn.Parameter(torch.tensor(v, dtype=tdtype)) for n, v in data.init.items()}
    cls, kwargs = case.torch
    grouped = {n for g in case.groups for n in g["params"]}
    default = [params[n] for n in LEAVES if n not in grouped]
    extra = [g | {"params": [params[n] for n in g["params"]]} for g in case.groups]
    opt = getattr(torch.optim, cls)([{"params": default}, *extra], **kwargs)
    scheduler = None
    if case.lr_factor is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, [case.lr_factor] * (1 + len(extra)))
    xa, xb, y = (torch.tensor(a, dtype=tdtype) for a in (data.xa, data.xb, data.y))
    out: dict[str, list[np.ndarray]] = {"params": [], "ax": []}
    for k in range(STEPS):
        opt.zero_grad()
        if problem_name == "lsq":
            pred = xa @ params["encoder/w"] + params["encoder/b"]
            pred = pred + xb @ params["head/w"] + params["head/b"]
            loss = ((pred - y) ** 2).sum() / (2 * SAMPLES)
            loss.backward()
        else:
            for n, p in params.items():
                p.grad = torch.tensor(data.grads[n][k], dtype=tdtype)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if k + 1 in SNAPSHOTS:
            out["params"].append(flat({n: p.detach().numpy() for n, p in params.items()}))
            if case.averages:
                out["ax"].append(flat({n: opt.state[p]["ax"].numpy() for n, p in params.items()}))
    return {k: np.stack(v) if v else None for k, v in out.items()}


def _rows(x: np.ndarray | None, dtype: str) -> list[list[float]] | None:
    return None if x is None else golden.rows(x, dtype)


def generate() -> dict[str, Any]:
    """The golden table: case -> problem -> dtype -> {"params", "ax"} snapshots."""
    import torch

    table = {
        name: {
            p: {d: {k: _rows(v, d) for k, v in run_torch(case, p, d).items()} for d in DTYPES}
            for p in PROBLEMS
        }
        for name, case in CASES.items()
    }
    return {
        "meta": {
            "torch": torch.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "leaves": list(LEAVES),
        },
        "cases": table,
    }
