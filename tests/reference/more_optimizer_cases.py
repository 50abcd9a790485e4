"""Parity cases for `nadam`, `muon` and `adafactor` against torch.optim's NAdam, Muon, Adafactor.

Two models, each trained for `STEPS` updates on two problems:

- ``full`` (NAdam, Adafactor): a linear model with two weight matrices,
  biases, a 3-D leaf (Adafactor factors its last two dimensions) and a
  scalar leaf;
- ``matrices`` (Muon, which takes 2-D leaves only): the two weight matrices,
  one tall (5x3, transposed by Newton–Schulz) and one wide (2x3);

and the problems ``random`` (open loop: fixed NumPy gradients whose scale
varies over four orders of magnitude between updates and leaves) and
``lsq`` (closed loop: a least-squares fit whose gradients each framework
computes at its own parameters).

Runs are in float64 and float32. In float64 torch runs under
``torch.set_default_dtype(torch.float64)``, so that NAdam's ``mu_product``
(kept in torch's default dtype) is float64 too. torch's Muon always casts to
bfloat16 for Newton–Schulz; for the float64 and float32 cases
(`Case.ns_native`) the generator runs torch's own iteration with that one
cast replaced by a copy (`ns_in_param_dtype`), and cadence runs with
``ns_dtype=None``. The ``*_bf16`` Muon cases run torch unpatched against
cadence's default ``ns_dtype=bfloat16``, in float32.

``python -m tests.reference.generate more_optimizers`` writes `GOLDEN`;
``tests/optimizers/test_more_parity.py`` compares cadence against it and
against live torch.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadence import optimizers as O
from cadence import schedules as S

from . import golden
from .optimizer_cases import cosine

GOLDEN = "more_optimizers.json"

STEPS = 150
SNAPSHOTS = (1, 2, 10, 50, 150)
PROBLEMS = ("random", "lsq")
SEED = 20261130
SAMPLES = 16

MODELS = {
    "full": {
        "encoder/w": (5, 3),
        "encoder/b": (3,),
        "head/w": (2, 3),
        "head/b": (3,),
        "mix/w": (2, 4, 3),
        "mix/s": (),
    },
    "matrices": {"encoder/w": (5, 3), "head/w": (2, 3)},
}


@dataclass(frozen=True)
class Problem:
    """A model's data, in float64 (each run casts it to its dtype)."""

    init: dict[str, np.ndarray]
    xa: np.ndarray
    xb: np.ndarray
    z: np.ndarray
    y: np.ndarray
    grads: dict[str, np.ndarray]  # leaf -> (STEPS, *shape): the random problem's gradients


def problem(model: str, *, seed: Any = None, steps: int = STEPS) -> Problem:
    """The fixed data of a model: the same in the generator and in the tests.

    Another table draws its own data with `seed` and gradients for `steps` updates.
    """
    rng = np.random.default_rng([SEED, list(MODELS).index(model)] if seed is None else seed)
    leaves = MODELS[model]
    init = {name: 0.5 * rng.standard_normal(shape) for name, shape in leaves.items()}
    xa = rng.standard_normal((SAMPLES, 5))
    xb = rng.standard_normal((SAMPLES, 2))
    z = rng.standard_normal((SAMPLES, 2, 4))
    # Far from the initial fit, so that no run gets near the minimum within
    # STEPS updates: there the direction of a normalised update (Muon, the
    # Adam family) follows rounding noise, and trajectories part chaotically.
    y = 20.0 * rng.standard_normal((SAMPLES, 3))
    grads = {}
    for name, shape in leaves.items():
        scale = 10.0 ** rng.uniform(-3, 1, size=(steps,) + (1,) * len(shape))
        grads[name] = rng.standard_normal((steps, *shape)) * scale
    return Problem(init, xa, xb, z, y, grads)


def predict(p: dict[str, Any], xa: Any, xb: Any, z: Any, einsum: Callable[..., Any]) -> Any:
    """The linear model's prediction, for arrays of either framework (flat leaf names)."""
    pred = xa @ p["encoder/w"] + xb @ p["head/w"]
    if "encoder/b" not in p:
        return pred
    bias = (p["encoder/b"] + p["head/b"])[None, :] + p["mix/s"]
    return pred + bias + einsum("ski,kij->sj", z, p["mix/w"])


def flat(params: dict[str, Any], model: str) -> np.ndarray:
    """The parameters as one float64 vector, leaves in `MODELS` order."""
    return np.concatenate([np.asarray(params[n], np.float64).ravel() for n in MODELS[model]])


def size(model: str) -> int:
    return sum(math.prod(s) for s in MODELS[model].values())


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One configuration, built both ways.

    `torch` names the torch.optim class and its keyword arguments; `groups`
    lists torch param groups beyond the default one (leaf names and the
    options that differ), written out from cadence's glob patterns;
    `lr_factor` multiplies every group's lr at update k on the torch side
    (LambdaLR), as the builder's schedules do on cadence's. `ns_native`:
    torch's Newton–Schulz runs in the parameter's dtype (see the module
    docstring); `dtypes`: the dtypes the case runs in.
    """

    id: str
    build: Callable[[], O.Transformation]
    torch: tuple[str, dict[str, Any]]
    model: str = "full"
    groups: tuple[dict[str, Any], ...] = ()
    lr_factor: Callable[[int], float] | None = None
    ns_native: bool = False
    dtypes: tuple[str, ...] = ("float64", "float32")


COSINE = cosine(1.0, 0.0, STEPS)  # S.cosine(lr, STEPS) / lr


def _step_decay(k: int) -> float:  # S.step_decay(lr, 10, 0.1) / lr
    return 0.1 ** (k // 10)


def _cases() -> list[Case]:
    cos = lambda init: S.cosine(init, STEPS)  # noqa: E731
    cases = [
        Case("nadam_default", lambda: O.nadam(0.01), ("NAdam", dict(lr=0.01))),
        Case(
            "nadam_l2",
            lambda: O.nadam(0.01, 0.8, 0.99, 1e-6, weight_decay=0.1, momentum_decay=0.01),
            (
                "NAdam",
                dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, momentum_decay=0.01),
            ),
        ),
        Case(
            "nadam_decoupled",
            lambda: O.nadam(0.02, weight_decay=0.1, decoupled_weight_decay=True),
            ("NAdam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
        ),
        Case(
            # Groups with different b1 keep different mu_products.
            "nadam_groups_cosine",
            lambda: O.nadam(
                cos(0.01),
                weight_decay=0.05,
                decoupled_weight_decay=True,
                groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": cos(0.003), "b1": 0.7}},
            ),
            ("NAdam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
            groups=(
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0},
                {"params": ["encoder/w"], "lr": 0.003, "betas": (0.7, 0.999)},
            ),
            lr_factor=COSINE,
        ),
    ]
    muon = [
        ("default", dict(lr=0.02)),
        ("plain", dict(lr=0.02, momentum=0.9, nesterov=False, weight_decay=0.0)),
        # Momentum below 0.5: torch's lerp takes its other formula.
        ("momentum0.3", dict(lr=0.02, momentum=0.3)),
        ("match_rms_adamw", dict(lr=0.005, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")),
        (
            "original_steps3",
            dict(
                lr=0.02,
                adjust_lr_fn="original",
                ns_steps=3,
                ns_coefficients=(3.0, -3.2, 1.2),
                eps=1e-4,
            ),
        ),
    ]
    for name, kw in muon:
        cases.append(
            Case(
                f"muon_{name}",
                lambda kw=kw: O.muon(**kw, ns_dtype=None),
                ("Muon", kw),
                model="matrices",
                ns_native=True,
            )
        )
    cases.append(
        Case(
            "muon_groups_cosine",
            lambda: O.muon(
                cos(0.02),
                ns_dtype=None,
                groups={"head/**": {"lr": cos(0.01), "momentum": 0.8, "weight_decay": 0.0}},
            ),
            ("Muon", dict(lr=0.02)),
            model="matrices",
            groups=({"params": ["head/w"], "lr": 0.01, "momentum": 0.8, "weight_decay": 0.0},),
            lr_factor=COSINE,
            ns_native=True,
        )
    )
    for name, kw in (muon[0], muon[3]):
        cases.append(
            Case(
                f"muon_{name}_bf16",
                lambda kw=kw: O.muon(**kw),
                ("Muon", kw),
                model="matrices",
                dtypes=("float32",),
            )
        )
    cases += [
        Case("adafactor_default", lambda: O.adafactor(), ("Adafactor", {})),
        Case(
            "adafactor_wd_d",
            lambda: O.adafactor(0.01, beta2_decay=-0.5, eps2=1e-2, d=2.0, weight_decay=0.1),
            (
                "Adafactor",
                dict(lr=0.01, beta2_decay=-0.5, eps=(None, 1e-2), d=2.0, weight_decay=0.1),
            ),
        ),
        Case(
            "adafactor_eps1",
            lambda: O.adafactor(0.01, eps1=1e-3, d=1.5),
            ("Adafactor", dict(lr=0.01, eps=(1e-3, 1e-3), d=1.5)),
        ),
        Case(
            # lr 0.5 above 1/sqrt(t) from update 5 to 10: rho_t = 1/sqrt(t) there.
            "adafactor_rho_step",
            lambda: O.adafactor(S.step_decay(0.5, 10, 0.1)),
            ("Adafactor", dict(lr=0.5)),
            lr_factor=_step_decay,
        ),
        Case(
            "adafactor_groups_cosine",
            lambda: O.adafactor(
                cos(0.02),
                weight_decay=0.05,
                groups={"mix/**": {"lr": cos(0.05), "d": 1.5}, "*/b": {"weight_decay": 0.0}},
            ),
            ("Adafactor", dict(lr=0.02, weight_decay=0.05)),
            groups=(
                {"params": ["mix/w", "mix/s"], "lr": 0.05, "d": 1.5},
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0},
            ),
            lr_factor=COSINE,
        ),
    ]
    return cases


CASES: dict[str, Case] = {c.id: c for c in _cases()}


# --------------------------------------------------------------------------- torch


@contextlib.contextmanager
def ns_in_param_dtype() -> Iterator[None]:
    """torch's Muon with Newton–Schulz in the parameter's dtype instead of bfloat16.

    Rebuilds torch's own ``_zeropower_via_newtonschulz`` from its source with
    the one cast (``grad.bfloat16()``) replaced by a copy, for the duration.
    """
    from torch.optim import _muon

    original = _muon._zeropower_via_newtonschulz
    source = inspect.getsource(original)
    if source.count("grad.bfloat16()") != 1:
        raise RuntimeError("torch's Newton–Schulz changed: its bfloat16 cast is not found")
    namespace = dict(vars(_muon))
    exec(source.replace("grad.bfloat16()", "grad.clone()"), namespace)  # noqa: S102
    _muon._zeropower_via_newtonschulz = namespace[original.__name__]
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def run_torch(case: Case, problem_name: str, dtype: str) -> np.ndarray:
    """torch's parameters after each update in `SNAPSHOTS`, shape (len(SNAPSHOTS), size)."""
    import torch

    torch.set_num_threads(1)
    tdtype = getattr(torch, dtype)
    patch = ns_in_param_dtype() if case.ns_native else contextlib.nullcontext()
    with default_dtype(torch.float64 if dtype == "float64" else torch.float32), patch:
        return _run_torch(case, problem_name, tdtype)


def _run_torch(case: Case, problem_name: str, tdtype: Any) -> np.ndarray:
    import torch

    cls, kwargs = case.torch
    return torch_trajectory(
        lambda groups: getattr(torch.optim, cls)(groups, **kwargs),
        case.groups,
        case.lr_factor,
        problem(case.model),
        case.model,
        problem_name,
        tdtype,
    )


def torch_trajectory(
    make: Callable[[list[dict[str, Any]]], Any],
    groups: tuple[dict[str, Any], ...],
    lr_factor: Callable[[int], float] | None,
    data: Problem,
    model: str,
    problem_name: str,
    tdtype: Any,
    steps: int = STEPS,
    snapshots: tuple[int, ...] = SNAPSHOTS,
) -> np.ndarray:
    """A torch optimizer's parameters of `model` after each update in `snapshots`.

    `make` builds the optimizer from torch param groups: the leaves no group
    of `groups` names, then each group with its leaves' tensors. `lr_factor`
    multiplies every group's lr at update k (LambdaLR, stepped per update).
    On ``problem_name == "lsq"`` torch differentiates the least-squares loss
    at its own parameters; otherwise it reads `data`'s random gradients.
    """
    import torch

    params = {n: torch.nn.Parameter(torch.tensor(v, dtype=tdtype)) for n, v in data.init.items()}
    grouped = {n for g in groups for n in g["params"]}
    default = [params[n] for n in MODELS[model] if n not in grouped]
    extra = [g | {"params": [params[n] for n in g["params"]]} for g in groups]
    opt = make([{"params": default}, *extra])
    scheduler = None
    if lr_factor is not None:
        lambdas = [lr_factor] * (1 + len(extra))
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    xa, xb, z, y = (torch.tensor(a, dtype=tdtype) for a in (data.xa, data.xb, data.z, data.y))
    out = []
    for k in range(steps):
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
        if k + 1 in snapshots:
            out.append(flat({n: p.detach().numpy() for n, p in params.items()}, model))
    return np.stack(out)


def generate() -> dict[str, Any]:
    """The golden table: case -> problem -> dtype -> snapshots of the flat parameters."""
    import torch

    table = {
        name: {p: {d: golden.rows(run_torch(case, p, d), d) for d in case.dtypes} for p in PROBLEMS}
        for name, case in CASES.items()
    }
    return {
        "meta": {
            "torch": torch.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "models": {m: list(leaves) for m, leaves in MODELS.items()},
            "seed": SEED,
        },
        "cases": table,
    }
