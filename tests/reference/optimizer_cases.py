"""Parity cases for the optimizers: a cadence builder beside a torch.optim run, per case.

Each case trains the same four-leaf model for `STEPS` updates on two problems:

- ``random``: open loop; the gradient of update k is fixed NumPy noise whose
  scale varies over four orders of magnitude from update to update and leaf
  to leaf (``gradients``);
- ``lsq``: closed loop; a linear least-squares fit whose gradients each
  framework computes from its own parameters.

The reference is torch.optim (with ``clip_grad_norm_``, ``clip_grad_value_``,
lr schedulers and param groups as the case asks), and for Lion, which torch
lacks, a NumPy transcription of the paper's Program 1. Runs are in float64 and
float32; the golden file keeps the parameters after the updates in
`SNAPSHOTS` (the last is the final one).

``python -m tests.reference.generate optimizers`` writes `GOLDEN`;
``tests/optimizers/test_parity.py`` compares cadence against it and against
live torch.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadence import optimizers as O
from cadence import schedules as S

from . import golden

GOLDEN = "optimizers.json"

STEPS = 200
SNAPSHOTS = (1, 2, 5, 25, 100, 200)
PROBLEMS = ("random", "lsq")
DTYPES = ("float64", "float32")
SEED = 20240611

# The model: pred = xa @ encoder/w + encoder/b + xb @ head/w + head/b.
LEAVES = {"encoder/w": (4, 3), "encoder/b": (3,), "head/w": (2, 3), "head/b": (3,)}
SIZE = sum(math.prod(s) for s in LEAVES.values())
SAMPLES = 16


@dataclass(frozen=True)
class Problem:
    """The data of both problems, in float64 (each run casts it to its dtype)."""

    init: dict[str, np.ndarray]
    xa: np.ndarray
    xb: np.ndarray
    y: np.ndarray
    grads: dict[str, np.ndarray]  # leaf -> (STEPS, *shape), the random problem's gradients


def problem() -> Problem:
    """The fixed data: the same in the generator and in the tests."""
    rng = np.random.default_rng(SEED)
    init = {name: rng.standard_normal(shape) for name, shape in LEAVES.items()}
    xa = rng.standard_normal((SAMPLES, 4))
    xb = rng.standard_normal((SAMPLES, 2))
    y = rng.standard_normal((SAMPLES, 3))
    grads = {}
    for name, shape in LEAVES.items():
        scale = 10.0 ** rng.uniform(-3, 1, size=(STEPS,) + (1,) * len(shape))
        grads[name] = rng.standard_normal((STEPS, *shape)) * scale
    return Problem(init, xa, xb, y, grads)


def flat(params: dict[str, Any]) -> np.ndarray:
    """The parameters as one float64 vector, leaves in `LEAVES` order."""
    return np.concatenate([np.asarray(params[n], dtype=np.float64).ravel() for n in LEAVES])


# --------------------------------------------------------------------------- schedules
# Closed forms in Python floats, for torch's LambdaLR and the NumPy Lion.


def cosine(init: float, end: float, steps: int) -> Callable[[int], float]:
    return lambda k: end + (init - end) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))


def warmup_cosine(init: float, warmup: int, steps: int) -> Callable[[int], float]:
    decay = cosine(init, 0.0, steps - warmup)
    return lambda k: init * k / warmup if k < warmup else decay(k - warmup)


def linear(init: float, steps: int) -> Callable[[int], float]:
    return lambda k: init * (steps - min(k, steps)) / steps


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One optimizer configuration, built both ways.

    `torch` names the torch.optim class and its keyword arguments; `groups`
    lists torch param groups beyond the default one (leaf names and the
    options that differ), written out by hand from cadence's glob patterns;
    `lr`/`wd`/`group_lr` describe schedules on the torch side; `clip` a
    gradient clipping step before the optimizer.
    """

    id: str
    build: Callable[[], O.Transformation]
    torch: tuple[str, dict[str, Any]] | None  # None: the NumPy Lion reference
    lion: dict[str, Any] = field(default_factory=dict)
    groups: tuple[dict[str, Any], ...] = ()
    lr: tuple[str, Any] | None = None  # ("cosine", eta_min) | ("lambda", f) | ("step", (n, g))
    group_lr: Callable[[int], float] | None = None  # LambdaLR factor of the first extra group
    wd: Callable[[int], float] | None = None  # weight decay of update k (default group)
    clip: tuple[str, float, float] | None = None  # ("norm", max_norm, p) | ("value", v, 0)


def _cases() -> list[Case]:
    cases = []
    # SGD: momentum, dampening, nesterov, weight decay.
    for momentum, dampening, nesterov in [
        (0.0, 0.0, False),
        (0.9, 0.0, False),
        (0.9, 0.5, False),
        (0.9, 0.0, True),
    ]:
        for wd in (0.0, 0.01):
            kw = dict(momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov)
            name = f"sgd_m{momentum}_d{dampening}{'_nesterov' if nesterov else ''}_wd{wd}"
            cases.append(Case(name, lambda kw=kw: O.sgd(0.05, **kw), ("SGD", dict(lr=0.05, **kw))))
    # Adam / AdamW: amsgrad, weight decay.
    for opt, cls in ((O.adam, "Adam"), (O.adamw, "AdamW")):
        for amsgrad in (False, True):
            for wd in (0.0, 0.1):
                torch_kw = dict(
                    lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd, amsgrad=amsgrad
                )
                cases.append(
                    Case(
                        f"{opt.__name__}_amsgrad{amsgrad}_wd{wd}",
                        lambda o=opt, wd=wd, a=amsgrad: o(0.01, 0.9, 0.99, 1e-6, wd, amsgrad=a),
                        (cls, torch_kw),
                    )
                )
    # RMSprop: centered, momentum, weight decay.
    for centered in (False, True):
        for momentum in (0.0, 0.9):
            for wd in (0.0, 0.01):
                kw = dict(
                    alpha=0.99, eps=1e-6, weight_decay=wd, momentum=momentum, centered=centered
                )
                cases.append(
                    Case(
                        f"rmsprop_centered{centered}_m{momentum}_wd{wd}",
                        lambda kw=kw: O.rmsprop(0.003, **kw),
                        ("RMSprop", dict(lr=0.003, **kw)),
                    )
                )
    # Adagrad: lr_decay, initial_accumulator_value, weight decay.
    for lr_decay in (0.0, 0.01):
        for iav in (0.0, 0.1):
            for wd in (0.0, 0.01):
                kw = dict(lr_decay=lr_decay, weight_decay=wd, initial_accumulator_value=iav)
                cases.append(
                    Case(
                        f"adagrad_decay{lr_decay}_init{iav}_wd{wd}",
                        lambda kw=kw: O.adagrad(0.1, **kw),
                        ("Adagrad", dict(lr=0.1, **kw)),
                    )
                )
    # Lion against the NumPy reference.
    for wd in (0.0, 0.5):
        kw = dict(lr=0.003, b1=0.9, b2=0.99, weight_decay=wd)
        cases.append(Case(f"lion_wd{wd}", lambda kw=kw: O.lion(**kw), None, lion=kw))
    lion_lr = cosine(0.003, 0.0003, STEPS)
    cases.append(
        Case(
            "lion_cosine",
            lambda: O.lion(S.cosine(0.003, STEPS, end=0.0003), b1=0.95, b2=0.98, weight_decay=0.1),
            None,
            lion=dict(lr=lion_lr, b1=0.95, b2=0.98, weight_decay=0.1),
        )
    )
    # Clipping chained before an optimizer.
    for p, name in ((1.0, "1"), (2.0, "2"), (math.inf, "inf")):
        cases.append(
            Case(
                f"clip_norm{name}_sgd",
                lambda p=p: O.chain(O.clip_by_global_norm(1.0, p), O.sgd(0.05, momentum=0.9)),
                ("SGD", dict(lr=0.05, momentum=0.9)),
                clip=("norm", 1.0, p),
            )
        )
        cases.append(
            Case(
                f"clip_norm{name}_adamw",
                lambda p=p: O.chain(O.clip_by_global_norm(0.5, p), O.adamw(0.01)),
                ("AdamW", dict(lr=0.01)),
                clip=("norm", 0.5, p),
            )
        )
    cases.append(
        Case(
            "clip_value_sgd",
            lambda: O.chain(O.clip_by_value(0.3), O.sgd(0.05, momentum=0.9, dampening=0.1)),
            ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1)),
            clip=("value", 0.3, 0.0),
        )
    )
    # Schedules on lr (torch's own schedulers, or LambdaLR) and on weight decay.
    cases += [
        Case(
            "sgd_nesterov_cosine",
            lambda: O.sgd(S.cosine(0.05, STEPS, end=0.001), momentum=0.9, nesterov=True),
            ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
            lr=("cosine", 0.001),
        ),
        Case(
            "adam_amsgrad_warmup_cosine",
            lambda: O.adam(
                S.warmup(S.cosine(0.01, STEPS - 20), 20), amsgrad=True, weight_decay=0.01
            ),
            ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
            lr=("lambda", lambda k: warmup_cosine(1.0, 20, STEPS)(k)),
        ),
        Case(
            "rmsprop_momentum_step",
            lambda: O.rmsprop(S.step_decay(0.003, 50, 0.5), momentum=0.9, centered=True),
            ("RMSprop", dict(lr=0.003, momentum=0.9, centered=True)),
            lr=("step", (50, 0.5)),
        ),
        Case(
            "adagrad_step",
            lambda: O.adagrad(S.step_decay(0.1, 40, 0.7), lr_decay=0.01),
            ("Adagrad", dict(lr=0.1, lr_decay=0.01)),
            lr=("step", (40, 0.7)),
        ),
        Case(
            "adamw_wd_linear",
            lambda: O.adamw(0.01, weight_decay=S.linear(0.5, 0.0, STEPS)),
            ("AdamW", dict(lr=0.01, weight_decay=0.5)),
            wd=linear(0.5, STEPS),
        ),
        Case(
            "sgd_wd_linear_cosine",
            lambda: O.sgd(
                S.cosine(0.05, STEPS), momentum=0.9, weight_decay=S.linear(0.05, 0.0, STEPS)
            ),
            ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.05)),
            lr=("cosine", 0.0),
            wd=linear(0.05, STEPS),
        ),
    ]
    # Parameter groups, against torch param groups.
    cases += [
        Case(
            "adamw_groups",
            lambda: O.adamw(
                0.01,
                weight_decay=0.2,
                groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": 0.001, "b2": 0.9}},
            ),
            ("AdamW", dict(lr=0.01, weight_decay=0.2)),
            groups=(
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0},
                {"params": ["encoder/w"], "lr": 0.001, "betas": (0.9, 0.9)},
            ),
        ),
        Case(
            "sgd_groups_schedule",
            lambda: O.sgd(
                0.05,
                momentum=0.9,
                weight_decay=0.01,
                groups={"encoder/**": {"lr": S.cosine(0.02, STEPS), "momentum": 0.5}},
            ),
            ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
            groups=({"params": ["encoder/w", "encoder/b"], "lr": 0.02, "momentum": 0.5},),
            group_lr=lambda k: cosine(1.0, 0.0, STEPS)(k),
        ),
    ]
    return cases


CASES: dict[str, Case] = {c.id: c for c in _cases()}


# --------------------------------------------------------------------------- references


def run_torch(case: Case, problem_name: str, dtype: str) -> np.ndarray:
    """torch's parameters after each update in `SNAPSHOTS`, shape (len(SNAPSHOTS), SIZE)."""
    import torch

    torch.set_num_threads(1)
    data = problem()
    tdtype = getattr(torch, dtype)
    params = {n: torch.nn.Parameter(torch.tensor(v, dtype=tdtype)) for n, v in data.init.items()}
    cls, kwargs = case.torch
    grouped = {n for g in case.groups for n in g["params"]}
    default = [params[n] for n in LEAVES if n not in grouped]
    extra = [g | {"params": [params[n] for n in g["params"]]} for g in case.groups]
    opt = getattr(torch.optim, cls)([{"params": default}, *extra], **kwargs)
    scheduler = None
    if case.lr is not None or case.group_lr is not None:
        sched = torch.optim.lr_scheduler
        kind, arg = case.lr if case.lr is not None else ("lambda", lambda k: 1.0)
        if kind == "cosine":
            scheduler = sched.CosineAnnealingLR(opt, T_max=STEPS, eta_min=arg)
        elif kind == "step":
            scheduler = sched.StepLR(opt, step_size=arg[0], gamma=arg[1])
        else:
            lambdas = [arg] + [case.group_lr or (lambda k: 1.0)] * len(extra)
            scheduler = sched.LambdaLR(opt, lambdas)
    xa, xb, y = (torch.tensor(a, dtype=tdtype) for a in (data.xa, data.xb, data.y))
    out = []
    for k in range(STEPS):
        if case.wd is not None:
            opt.param_groups[0]["weight_decay"] = case.wd(k)
        opt.zero_grad()
        if problem_name == "lsq":
            pred = xa @ params["encoder/w"] + params["encoder/b"]
            pred = pred + xb @ params["head/w"] + params["head/b"]
            loss = ((pred - y) ** 2).sum() / (2 * SAMPLES)
            loss.backward()
        else:
            for n, p in params.items():
                p.grad = torch.tensor(data.grads[n][k], dtype=tdtype)
        if case.clip is not None:
            kind, limit, norm_type = case.clip
            if kind == "norm":
                torch.nn.utils.clip_grad_norm_(list(params.values()), limit, norm_type)
            else:
                torch.nn.utils.clip_grad_value_(list(params.values()), limit)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if k + 1 in SNAPSHOTS:
            out.append(flat({n: p.detach().numpy() for n, p in params.items()}))
    return np.stack(out)


def lsq_grads(params: dict[str, np.ndarray], data: Problem, dtype: str) -> dict[str, np.ndarray]:
    xa, xb, y = (a.astype(dtype) for a in (data.xa, data.xb, data.y))
    r = (
        xa @ params["encoder/w"]
        + params["encoder/b"]
        + xb @ params["head/w"]
        + params["head/b"]
        - y
    )
    r = r / np.asarray(SAMPLES, dtype)
    return {
        "encoder/w": xa.T @ r,
        "encoder/b": r.sum(0),
        "head/w": xb.T @ r,
        "head/b": r.sum(0),
    }


def run_lion(case: Case, problem_name: str, dtype: str) -> np.ndarray:
    """The paper's Program 1 (decoupled weight decay scaled by lr), in NumPy."""
    data = problem()
    kw = case.lion
    lr = kw["lr"] if callable(kw["lr"]) else (lambda k, v=kw["lr"]: v)
    b1, b2, wd = kw["b1"], kw["b2"], kw["weight_decay"]
    params = {n: v.astype(dtype) for n, v in data.init.items()}
    mu = {n: np.zeros_like(v) for n, v in params.items()}
    out = []
    for k in range(STEPS):
        if problem_name == "lsq":
            grads = lsq_grads(params, data, dtype)
        else:
            grads = {n: data.grads[n][k].astype(dtype) for n in LEAVES}
        eta = np.asarray(lr(k), dtype)
        for n in LEAVES:
            g = grads[n]
            c = np.asarray(b1, dtype) * mu[n] + np.asarray(1 - b1, dtype) * g
            params[n] = params[n] * (1 - eta * np.asarray(wd, dtype)) - eta * np.sign(c)
            mu[n] = np.asarray(b2, dtype) * mu[n] + np.asarray(1 - b2, dtype) * g
        if k + 1 in SNAPSHOTS:
            out.append(flat(params))
    return np.stack(out)


def reference(case: Case, problem_name: str, dtype: str) -> np.ndarray:
    """The reference trajectory of a case (torch, or NumPy for Lion)."""
    if case.torch is None:
        return run_lion(case, problem_name, dtype)
    return run_torch(case, problem_name, dtype)


def generate() -> dict[str, Any]:
    """The golden table: case -> problem -> dtype -> snapshots of the flat parameters."""
    import torch

    table: dict[str, Any] = {}
    for name, case in CASES.items():
        table[name] = {
            p: {d: golden.rows(reference(case, p, d), d) for d in DTYPES} for p in PROBLEMS
        }
    return {
        "meta": {
            "torch": torch.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "leaves": list(LEAVES),
            "seed": SEED,
        },
        "cases": table,
    }
