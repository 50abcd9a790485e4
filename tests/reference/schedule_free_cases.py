"""Parity cases for `schedule_free_adamw` and `schedule_free_sgd` against the schedulefree package.

The model, its data and the two problems are those of
`more_optimizer_cases` (model ``full``: two weight matrices, biases, a 3-D
leaf and a scalar leaf; ``random``: open-loop gradients whose scale varies
over four orders of magnitude; ``lsq``: a closed-loop least-squares fit
whose gradients each side computes at its own parameters), trained for
`STEPS` updates. The reference is schedulefree 1.4.1's
``AdamWScheduleFree`` / ``SGDScheduleFree`` in train mode; at each update
in `SNAPSHOTS` the golden file keeps the train parameters y and the eval
parameters x (schedulefree's ``optimizer.eval()``, undone afterwards by
restoring y exactly, so the run goes on untouched).

``python -m tests.reference.generate schedule_free`` writes `GOLDEN`;
``tests/optimizers/test_schedule_free.py`` compares cadence against it and
against live schedulefree.
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
from .more_optimizer_cases import MODELS, SAMPLES, STEPS, flat, predict, problem
from .optimizer_cases import cosine

GOLDEN = "schedule_free.json"

MODEL = "full"
SNAPSHOTS = (1, 2, 12, 50, STEPS)
PROBLEMS = ("random", "lsq")
DTYPES = ("float64", "float32")
# The train parameters (y) and the eval parameters (x).
KINDS = ("train", "eval")


@dataclass(frozen=True)
class Case:
    """One configuration, built both ways.

    `reference` names the schedulefree class and its keyword arguments;
    `groups` lists its param groups beyond the default one (leaf names and
    the options that differ), written out from cadence's glob patterns;
    `lr_factor` multiplies every group's lr at update k on the reference
    side (LambdaLR), as the builder's schedules do on cadence's.
    """

    id: str
    build: Callable[[], O.Transformation]
    reference: tuple[str, dict[str, Any]]
    groups: tuple[dict[str, Any], ...] = ()
    lr_factor: Callable[[int], float] | None = None


COSINE = cosine(1.0, 0.0, STEPS)  # S.cosine(lr, STEPS) / lr
ADAMW = "AdamWScheduleFree"
SGD = "SGDScheduleFree"
BIASES = ["encoder/b", "head/b"]
MIX = ["mix/w", "mix/s"]


def _cases() -> list[Case]:
    cos = lambda init: S.cosine(init, STEPS)  # noqa: E731
    return [
        Case("adamw_default", lambda: O.schedule_free_adamw(), (ADAMW, {})),
        Case("adamw_lr0.02", lambda: O.schedule_free_adamw(0.02), (ADAMW, dict(lr=0.02))),
        Case(
            "adamw_warmup_wd",
            lambda: O.schedule_free_adamw(
                0.02, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05, warmup_steps=10
            ),
            (
                ADAMW,
                dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, warmup_steps=10),
            ),
        ),
        Case(
            "adamw_r",
            lambda: O.schedule_free_adamw(0.01, warmup_steps=5, r=1.0, weight_lr_power=1.0),
            (ADAMW, dict(lr=0.01, warmup_steps=5, r=1.0, weight_lr_power=1.0)),
        ),
        Case(
            # Per-group b1 (the eval point's too), lr, b2, r and decay, under a cosine.
            "adamw_groups_cosine",
            lambda: O.schedule_free_adamw(
                cos(0.01),
                weight_decay=0.01,
                warmup_steps=4,
                groups={
                    "*/b": {"weight_decay": 0.0, "b1": 0.5},
                    "mix/**": {"lr": cos(0.03), "b2": 0.95, "r": 0.5},
                },
            ),
            (ADAMW, dict(lr=0.01, weight_decay=0.01, warmup_steps=4)),
            groups=(
                {"params": BIASES, "weight_decay": 0.0, "betas": (0.5, 0.999)},
                {"params": MIX, "lr": 0.03, "betas": (0.9, 0.95), "r": 0.5},
            ),
            lr_factor=COSINE,
        ),
        Case("sgd_lr0.05", lambda: O.schedule_free_sgd(0.05), (SGD, dict(lr=0.05))),
        Case(
            "sgd_warmup_wd",
            lambda: O.schedule_free_sgd(0.05, momentum=0.8, weight_decay=0.01, warmup_steps=8),
            (SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=8)),
        ),
        Case(
            "sgd_warmup_wd_r",
            lambda: O.schedule_free_sgd(
                0.05, momentum=0.8, weight_decay=0.01, warmup_steps=8, r=0.5, weight_lr_power=0.0
            ),
            (
                SGD,
                dict(
                    lr=0.05,
                    momentum=0.8,
                    weight_decay=0.01,
                    warmup_steps=8,
                    r=0.5,
                    weight_lr_power=0.0,
                ),
            ),
        ),
        Case(
            # Momentum 0.3: the eval point's lerp weight 1 - 1/0.3 takes torch's other formula.
            "sgd_groups",
            lambda: O.schedule_free_sgd(
                0.05,
                warmup_steps=3,
                groups={"*/b": {"momentum": 0.3}, "mix/**": {"lr": 0.02, "weight_decay": 0.1}},
            ),
            (SGD, dict(lr=0.05, warmup_steps=3)),
            groups=(
                {"params": BIASES, "momentum": 0.3},
                {"params": MIX, "lr": 0.02, "weight_decay": 0.1},
            ),
        ),
    ]


CASES: dict[str, Case] = {c.id: c for c in _cases()}


def run_reference(case: Case, problem_name: str, dtype: str) -> dict[str, np.ndarray]:
    """schedulefree's y and x after each update in `SNAPSHOTS`: ``{kind: (snapshots, size)}``."""
    import schedulefree
    import torch

    torch.set_num_threads(1)
    tdtype = getattr(torch, dtype)
    data = problem(MODEL)
    leaves = MODELS[MODEL]
    params = {n: torch.nn.Parameter(torch.tensor(v, dtype=tdtype)) for n, v in data.init.items()}
    cls, kwargs = case.reference
    grouped = {n for g in case.groups for n in g["params"]}
    default = [params[n] for n in leaves if n not in grouped]
    extra = [g | {"params": [params[n] for n in g["params"]]} for g in case.groups]
    opt = getattr(schedulefree, cls)([{"params": default}, *extra], **kwargs)
    opt.train()
    scheduler = None
    if case.lr_factor is not None:
        lambdas = [case.lr_factor] * (1 + len(extra))
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    xa, xb, z, y = (torch.tensor(a, dtype=tdtype) for a in (data.xa, data.xb, data.z, data.y))
    out: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
    for k in range(STEPS):
        opt.zero_grad()
        if problem_name == "lsq":
            loss = ((predict(params, xa, xb, z, torch.einsum) - y) ** 2).sum() / (2 * SAMPLES)
            loss.backward()
        else:
            for n, p in params.items():
                p.grad = torch.tensor(data.grads[n][k], dtype=tdtype)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if k + 1 in SNAPSHOTS:
            train = {n: p.detach().clone() for n, p in params.items()}
            opt.eval()
            out["eval"].append(flat({n: p.detach().numpy() for n, p in params.items()}, MODEL))
            opt.train()
            # train() recomputes y from x and z, a rounding away from y: restore y.
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(train[n])
            out["train"].append(flat({n: v.numpy() for n, v in train.items()}, MODEL))
    return {kind: np.stack(v) for kind, v in out.items()}


def generate() -> dict[str, Any]:
    """The golden table: case -> kind -> problem -> dtype -> snapshots of the flat parameters."""
    table: dict[str, Any] = {}
    for name, case in CASES.items():
        table[name] = {kind: {p: {} for p in PROBLEMS} for kind in KINDS}
        for p in PROBLEMS:
            for d in DTYPES:
                runs = run_reference(case, p, d)
                for kind in KINDS:
                    table[name][kind][p][d] = golden.rows(runs[kind], d)
    return {
        "meta": {
            "schedulefree": importlib.metadata.version("schedulefree"),
            "torch": importlib.metadata.version("torch"),
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "model": MODEL,
            "leaves": list(MODELS[MODEL]),
        },
        "cases": table,
    }
