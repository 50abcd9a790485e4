"""Parity cases for `adopt`, `lamb` and `lars` against timm's Adopt, Lamb and Lars.

The model and both problems are `more_optimizer_cases`' ``full`` model (two
weight matrices, biases, a 3-D leaf and a scalar leaf): ``random`` (open
loop: fixed gradients whose scale varies over four orders of magnitude, so
Lamb's global clipping at norm 1 is active on some updates and not on
others) and ``lsq`` (closed loop: each framework steps on the gradient at
its own parameters; there Lamb's clipping is active throughout).

timm runs on CPU, where its optimizers take their single-tensor path (the
default there); float64 runs under ``torch.set_default_dtype(torch.float64)``
so that timm's step counters and scalars are float64 too. `run_timm` can
also force timm's foreach path (``foreach=True``, the default on GPUs).

``python -m tests.reference.generate timm_optim`` writes `GOLDEN`;
``tests/optimizers/test_timm_parity.py`` compares cadence against it and
against live timm.
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
from .more_optimizer_cases import MODELS, default_dtype, problem, torch_trajectory
from .more_optimizer_cases import flat as flat  # the tests flatten cadence's runs the same way
from .optimizer_cases import cosine
from .timm_sources import load_timm

GOLDEN = "timm_optim.json"

STEPS = 120
SNAPSHOTS = (1, 2, 10, 50, 120)
PROBLEMS = ("random", "lsq")
MODEL = "full"
LEAVES = MODELS[MODEL]

# timm's module and class for each cadence optimizer.
CLASSES = {"adopt": ("adopt", "Adopt"), "lamb": ("lamb", "Lamb"), "lars": ("lars", "Lars")}


@dataclass(frozen=True)
class Case:
    """One configuration, built both ways.

    `timm` holds the keyword arguments of timm's class (named by `optimizer`,
    the cadence name); `groups` lists timm param groups beyond the default
    one (leaf names and the options that differ), written out from cadence's
    glob patterns; `lr_factor` multiplies every group's lr at update k on
    timm's side (LambdaLR), as the builder's schedules do on cadence's.
    """

    id: str
    build: Callable[[], O.Transformation]
    timm: dict[str, Any]
    groups: tuple[dict[str, Any], ...] = ()
    lr_factor: Callable[[int], float] | None = None

    @property
    def optimizer(self) -> str:
        return self.id.split("_")[0]


COSINE = cosine(1.0, 0.0, STEPS)  # S.cosine(lr, STEPS) / lr
BIASES = ["encoder/b", "head/b"]  # the pattern "*/b"


def _cos(init: float) -> Any:
    return S.cosine(init, STEPS)


def _cases() -> list[Case]:
    return [
        # ------------------------------------------------------------ Adopt
        Case("adopt_default", lambda: O.adopt(0.01), dict(lr=0.01)),
        Case(
            "adopt_l2",
            lambda: O.adopt(0.01, b1=0.8, b2=0.99, eps=1e-4, weight_decay=0.1),
            dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1),
        ),
        Case(
            "adopt_decoupled",
            lambda: O.adopt(0.02, b2=0.999, weight_decay=0.1, decoupled=True, clip_exp=0.5),
            dict(lr=0.02, betas=(0.9, 0.999), weight_decay=0.1, decoupled=True, clip_exp=0.5),
        ),
        Case(
            # No clipping; b1 below 0.5: torch's lerp takes its other formula.
            "adopt_noclip",
            lambda: O.adopt(0.01, b1=0.3, b2=0.999, clip_exp=None),
            dict(lr=0.01, betas=(0.3, 0.999), clip_exp=None),
        ),
        Case(
            "adopt_groups_cosine",
            lambda: O.adopt(
                _cos(0.01),
                weight_decay=0.05,
                decoupled=True,
                groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": _cos(0.003), "b1": 0.7}},
            ),
            dict(lr=0.01, weight_decay=0.05, decoupled=True),
            groups=(
                {"params": BIASES, "weight_decay": 0.0},
                {"params": ["encoder/w"], "lr": 0.003, "betas": (0.7, 0.9999)},
            ),
            lr_factor=COSINE,
        ),
        # ------------------------------------------------------------- Lamb
        Case("lamb_default", lambda: O.lamb(0.01), dict(lr=0.01)),
        Case(
            "lamb_noclip",
            lambda: O.lamb(0.01, b1=0.8, b2=0.99, eps=1e-4, weight_decay=0.1, max_grad_norm=None),
            dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, max_grad_norm=None),
        ),
        Case(
            "lamb_trust_clip",
            lambda: O.lamb(0.01, weight_decay=0.1, trust_clip=True, max_grad_norm=5.0),
            dict(lr=0.01, weight_decay=0.1, trust_clip=True, max_grad_norm=5.0),
        ),
        Case(
            "lamb_always_adapt",
            lambda: O.lamb(0.01, weight_decay=0.0, always_adapt=True),
            dict(lr=0.01, weight_decay=0.0, always_adapt=True),
        ),
        Case(
            # No averaging; b1 below 0.5 (timm's lerp branch is not taken either way).
            "lamb_no_averaging",
            lambda: O.lamb(0.01, b1=0.3, grad_averaging=False),
            dict(lr=0.01, betas=(0.3, 0.999), grad_averaging=False),
        ),
        Case(
            "lamb_no_bias_correction",
            lambda: O.lamb(0.01, bias_correction=False, max_grad_norm=None),
            dict(lr=0.01, bias_correction=False, max_grad_norm=None),
        ),
        Case(
            # The global norm spans every group; the biases (no decay) are not adapted.
            "lamb_groups_cosine",
            lambda: O.lamb(
                _cos(0.01),
                weight_decay=0.05,
                groups={"*/b": {"weight_decay": 0.0}, "mix/**": {"lr": _cos(0.02), "b2": 0.99}},
            ),
            dict(lr=0.01, weight_decay=0.05),
            groups=(
                {"params": BIASES, "weight_decay": 0.0},
                {"params": ["mix/w", "mix/s"], "lr": 0.02, "betas": (0.9, 0.99)},
            ),
            lr_factor=COSINE,
        ),
        # ------------------------------------------------------------- Lars
        Case(
            "lars_sgd",  # timm's defaults adapt nothing: SGD with momentum
            lambda: O.lars(0.01, momentum=0.9),
            dict(lr=0.01, momentum=0.9),
        ),
        Case(
            "lars_wd",
            lambda: O.lars(0.1, momentum=0.9, weight_decay=0.01, trust_coeff=0.01),
            dict(lr=0.1, momentum=0.9, weight_decay=0.01, trust_coeff=0.01),
        ),
        Case(
            "lars_nesterov",
            lambda: O.lars(0.1, momentum=0.9, nesterov=True, weight_decay=0.05, trust_coeff=0.01),
            dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, trust_coeff=0.01),
        ),
        Case(
            "lars_trust_clip",
            lambda: O.lars(
                0.1,
                momentum=0.5,
                dampening=0.1,
                weight_decay=0.05,
                trust_coeff=0.01,
                eps=1e-3,
                trust_clip=True,
            ),
            dict(
                lr=0.1,
                momentum=0.5,
                dampening=0.1,
                weight_decay=0.05,
                trust_coeff=0.01,
                eps=1e-3,
                trust_clip=True,
            ),
        ),
        Case(
            "lars_always_adapt",
            lambda: O.lars(0.1, momentum=0.9, trust_coeff=0.01, always_adapt=True),
            dict(lr=0.1, momentum=0.9, trust_coeff=0.01, always_adapt=True),
        ),
        Case(
            "lars_groups_cosine",
            lambda: O.lars(
                _cos(0.1),
                momentum=0.9,
                weight_decay=0.01,
                trust_coeff=0.01,
                trust_clip=True,
                groups={
                    "*/b": {"weight_decay": 0.0},
                    "encoder/**": {"lr": _cos(0.2), "momentum": 0.5},
                },
            ),
            dict(lr=0.1, momentum=0.9, weight_decay=0.01, trust_coeff=0.01, trust_clip=True),
            groups=(
                {"params": BIASES, "weight_decay": 0.0},
                {"params": ["encoder/w"], "lr": 0.2, "momentum": 0.5},
            ),
            lr_factor=COSINE,
        ),
    ]


CASES: dict[str, Case] = {c.id: c for c in _cases()}


# --------------------------------------------------------------------------- timm


def timm_class(optimizer: str) -> type:
    """timm's class for a cadence optimizer name (needs timm and torch)."""
    module, name = CLASSES[optimizer]
    return getattr(load_timm("optim", module), name)


def run_timm(case: Case, problem_name: str, dtype: str, foreach: bool | None = None) -> np.ndarray:
    """timm's parameters after each update in `SNAPSHOTS`, shape (len(SNAPSHOTS), size).

    `foreach`: timm's own default (None: single-tensor on CPU) or a forced path.
    """
    import torch

    torch.set_num_threads(1)
    with default_dtype(torch.float64 if dtype == "float64" else torch.float32):
        return _run_timm(case, problem_name, getattr(torch, dtype), foreach)


def _run_timm(case: Case, problem_name: str, tdtype: Any, foreach: bool | None) -> np.ndarray:
    cls = timm_class(case.optimizer)
    return torch_trajectory(
        lambda groups: cls(groups, **case.timm, foreach=foreach),
        case.groups,
        case.lr_factor,
        problem(MODEL),
        MODEL,
        problem_name,
        tdtype,
        STEPS,
        SNAPSHOTS,
    )


DTYPES = ("float64", "float32")


def generate() -> dict[str, Any]:
    """The golden table: case -> problem -> dtype -> snapshots of the flat parameters."""
    import torch

    table = {
        name: {p: {d: golden.rows(run_timm(case, p, d), d) for d in DTYPES} for p in PROBLEMS}
        for name, case in CASES.items()
    }
    return {
        "meta": {
            "timm": importlib.metadata.version("timm"),
            "torch": torch.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "leaves": list(LEAVES),
        },
        "cases": table,
    }
