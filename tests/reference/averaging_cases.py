"""Parity cases for `lookahead` and `average` against timm's Lookahead and torch's AveragedModel.

The model and data are `optimizer_cases`' (a four-leaf linear model), trained
for `STEPS` updates on its two problems: ``random`` (open loop, fixed NumPy
gradients over four orders of magnitude) and ``lsq`` (closed loop, a
least-squares fit whose gradients each framework computes at its own
parameters). Each run records, after the updates in `SNAPSHOTS`, the
parameters and the second copy the wrapper keeps: timm's slow weights
(``lookahead_slow_buff``; before timm creates it at the first sync, the
initial parameters, as cadence's state holds) or the AveragedModel's
parameters.

The torch side is torch.optim with timm's ``Lookahead`` around it (loaded
without importing timm, see `timm_sources`), or the loop

.. code-block:: python

    for t in range(STEPS):
        ...; optimizer.step(); scheduler.step()
        if t >= start and (t + 1 - start) % every == 0:
            averaged.update_parameters(model)

with ``AveragedModel(model)`` (SWA) or ``AveragedModel(model,
multi_avg_fn=get_ema_multi_avg_fn(decay))`` (EMA). One case is torch's SWA
recipe: CosineAnnealingLR until ``swa_start``, then SWALR, averaging
``if t > swa_start``.

``python -m tests.reference.generate averaging`` writes `GOLDEN`;
``tests/optimizers/test_averaging.py`` compares cadence against it and
against live torch and timm.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadence import optimizers as O
from cadence import schedules as S

from . import golden
from .optimizer_cases import LEAVES, SAMPLES, cosine, flat, problem
from .timm_sources import load_timm

GOLDEN = "averaging.json"

STEPS = 120
SNAPSHOTS = (1, 2, 7, 30, 61, 120)
PROBLEMS = ("random", "lsq")
DTYPES = ("float64", "float32")

# The SWA recipe's case: the cosine's horizon, the last update it drives, SWALR's arguments.
T_MAX, SWA_START, SWA_LR, ANNEAL = 100, 59, 0.01, 10


@dataclass(frozen=True)
class Case:
    """One configuration, built both ways.

    `torch`: the torch.optim class and its keyword arguments; `groups`: torch
    param groups beyond the default one (leaf names and the options that
    differ); `wrapper`: ``("lookahead", {"alpha": ..., "k": ...})`` or
    ``("average", {"decay": ..., "every": ..., "start": ...})`` in cadence's
    names; `lr_factor`: a LambdaLR factor of update k on the torch side;
    `clip`: ``clip_grad_norm_`` before each step; `swa_recipe`: torch's SWA
    recipe drives the lr (CosineAnnealingLR, then SWALR).
    """

    id: str
    build: Callable[[], O.Transformation]
    torch: tuple[str, dict[str, Any]]
    wrapper: tuple[str, dict[str, Any]]
    groups: tuple[dict[str, Any], ...] = ()
    lr_factor: Callable[[int], float] | None = None
    clip: float | None = None
    swa_recipe: bool = False


def swa_recipe_lr(lr: float) -> S.Schedule:
    """The lr torch's SWA recipe gives update k: the cosine, then SWALR from where it left it."""
    at = SWA_START + 1  # SWALR first steps after update SWA_START + 1
    found = lr * (1 + math.cos(math.pi * at / T_MAX)) / 2  # CosineAnnealingLR's lr there
    return S.join([S.cosine(lr, T_MAX), S.swa(found, SWA_LR, ANNEAL)], [at])


def _cases() -> list[Case]:
    cos = cosine(1.0, 0.0, STEPS)  # S.cosine(lr, STEPS) / lr
    la = "lookahead"
    av = "average"
    return [
        Case(
            "lookahead_adam",
            lambda: O.lookahead(O.adam(0.01)),
            ("Adam", dict(lr=0.01)),
            (la, dict(alpha=0.5, k=6)),
        ),
        Case(
            "lookahead_sgd_nesterov_k3",
            lambda: O.lookahead(O.sgd(0.05, momentum=0.9, nesterov=True), alpha=0.8, k=3),
            ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
            (la, dict(alpha=0.8, k=3)),
        ),
        Case(
            "lookahead_sgd_k1",
            lambda: O.lookahead(O.sgd(0.02), alpha=0.3, k=1),
            ("SGD", dict(lr=0.02)),
            (la, dict(alpha=0.3, k=1)),
        ),
        Case(
            "lookahead_adamw_clip_groups_cosine",
            lambda: O.lookahead(
                O.chain(
                    O.clip_by_global_norm(1.0),
                    O.adamw(
                        S.cosine(0.02, STEPS),
                        weight_decay=0.1,
                        groups={"*/b": {"weight_decay": 0.0}},
                    ),
                ),
                alpha=0.6,
                k=5,
            ),
            ("AdamW", dict(lr=0.02, weight_decay=0.1)),
            (la, dict(alpha=0.6, k=5)),
            groups=({"params": ["encoder/b", "head/b"], "weight_decay": 0.0},),
            lr_factor=cos,
            clip=1.0,
        ),
        Case(
            "ema_sgd",
            lambda: O.average(O.sgd(0.05, momentum=0.9), decay=0.9),
            ("SGD", dict(lr=0.05, momentum=0.9)),
            (av, dict(decay=0.9, every=1, start=0)),
        ),
        Case(
            # decay 0.3: lerp weight 0.7, torch's second formula.
            "ema_adam_low_decay",
            lambda: O.average(O.adam(0.01), decay=0.3),
            ("Adam", dict(lr=0.01)),
            (av, dict(decay=0.3, every=1, start=0)),
        ),
        Case(
            "ema_adamw_every3_start10",
            lambda: O.average(O.adamw(0.01, weight_decay=0.05), decay=0.95, every=3, start=10),
            ("AdamW", dict(lr=0.01, weight_decay=0.05)),
            (av, dict(decay=0.95, every=3, start=10)),
        ),
        Case(
            "swa_sgd_every5_start20",
            lambda: O.average(O.sgd(0.02, momentum=0.5), every=5, start=20),
            ("SGD", dict(lr=0.02, momentum=0.5)),
            (av, dict(decay=None, every=5, start=20)),
        ),
        Case(
            "swa_adamw_clip",
            lambda: O.average(O.chain(O.clip_by_global_norm(1.0), O.adamw(0.01))),
            ("AdamW", dict(lr=0.01)),
            (av, dict(decay=None, every=1, start=0)),
            clip=1.0,
        ),
        Case(
            "swa_recipe_sgd_swalr",
            lambda: O.average(
                O.sgd(swa_recipe_lr(0.05), momentum=0.9, weight_decay=1e-3),
                start=SWA_START + 1,
            ),
            ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
            (av, dict(decay=None, every=1, start=SWA_START + 1)),
            swa_recipe=True,
        ),
    ]


CASES: dict[str, Case] = {c.id: c for c in _cases()}


# --------------------------------------------------------------------------- torch


def _module(params: dict[str, Any]) -> Any:
    """A torch Module holding the leaves (AveragedModel averages a Module's parameters)."""
    import torch

    module = torch.nn.Module()
    module.leaves = torch.nn.ParameterDict({n.replace("/", "__"): p for n, p in params.items()})
    return module


def _scheduler(case: Case, opt: Any) -> Any:
    """An object whose ``step()`` follows each update as the case's torch loop does."""
    import torch

    L = torch.optim.lr_scheduler
    if case.lr_factor is not None:
        return L.LambdaLR(opt, [case.lr_factor] * len(opt.param_groups))
    if not case.swa_recipe:
        return None
    from torch.optim.swa_utils import SWALR

    class Recipe:
        # torch's recipe: `if t > swa_start: swa_scheduler.step() else: scheduler.step()`.
        def __init__(self) -> None:
            self.first = L.CosineAnnealingLR(opt, T_max=T_MAX)
            self.swa = SWALR(opt, swa_lr=SWA_LR, anneal_epochs=ANNEAL)
            self.t = 0

        def step(self) -> None:
            (self.swa if self.t > SWA_START else self.first).step()
            self.t += 1

    return Recipe()


def run_torch(case: Case, problem_name: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The parameters and the slow/averaged copy after each update in `SNAPSHOTS`."""
    import torch

    torch.set_num_threads(1)
    tdtype = getattr(torch, dtype)
    data = problem()
    params = {n: torch.nn.Parameter(torch.tensor(data.init[n], dtype=tdtype)) for n in LEAVES}
    grouped = {n for g in case.groups for n in g["params"]}
    default = [params[n] for n in LEAVES if n not in grouped]
    extra = [g | {"params": [params[n] for n in g["params"]]} for g in case.groups]
    cls, kwargs = case.torch
    base = getattr(torch.optim, cls)([{"params": default}, *extra], **kwargs)
    kind, wrap = case.wrapper
    averaged = None
    if kind == "lookahead":
        lookahead = load_timm("optim", "lookahead").Lookahead
        opt = lookahead(base, alpha=wrap["alpha"], k=wrap["k"])
    else:
        opt = base
        from torch.optim import swa_utils

        model = _module(params)
        if wrap["decay"] is None:
            averaged = swa_utils.AveragedModel(model)
        else:
            ema = swa_utils.get_ema_multi_avg_fn(wrap["decay"])
            averaged = swa_utils.AveragedModel(model, multi_avg_fn=ema)
    scheduler = _scheduler(case, base)
    xa, xb, y = (torch.tensor(a, dtype=tdtype) for a in (data.xa, data.xb, data.y))
    out, second = [], []
    for t in range(STEPS):
        opt.zero_grad()
        if problem_name == "lsq":
            p = params
            pred = xa @ p["encoder/w"] + p["encoder/b"] + xb @ p["head/w"] + p["head/b"]
            (((pred - y) ** 2).sum() / (2 * SAMPLES)).backward()
        else:
            for n, p in params.items():
                p.grad = torch.tensor(data.grads[n][t], dtype=tdtype)
        if case.clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), case.clip)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if averaged is not None:
            start, every = wrap["start"], wrap["every"]
            if t >= start and (t + 1 - start) % every == 0:
                averaged.update_parameters(model)
        if t + 1 in SNAPSHOTS:
            out.append(flat({n: p.detach().numpy() for n, p in params.items()}))
            if averaged is not None:
                copies = dict(averaged.module.leaves.items())
                copy = {n: copies[n.replace("/", "__")] for n in LEAVES}
            else:
                # timm creates the slow buffer at the first sync; before, cadence's
                # state holds the initial parameters.
                copy = {
                    n: base.state[p].get("lookahead_slow_buff", data.init[n])
                    for n, p in params.items()
                }
            copy = {n: np.asarray(torch.as_tensor(v).detach()) for n, v in copy.items()}
            second.append(flat(copy))
    return np.stack(out), np.stack(second)


def generate() -> dict[str, Any]:
    """The golden table: case -> problem -> dtype -> {"params", "second"} snapshots."""
    import torch

    table: dict[str, Any] = {}
    for name, case in CASES.items():
        table[name] = {}
        for p in PROBLEMS:
            table[name][p] = {}
            for d in DTYPES:
                params, second = run_torch(case, p, d)
                table[name][p][d] = {
                    "params": golden.rows(params, d),
                    "second": golden.rows(second, d),
                }
    return {
        "meta": {
            "torch": torch.__version__,
            "timm": importlib.metadata.version("timm"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "leaves": list(LEAVES),
        },
        "cases": table,
    }
