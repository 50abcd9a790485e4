"""Parity cases for `lbfgs` against torch.optim.LBFGS.

Three deterministic problems, each written once for both frameworks (the
array module is an argument):

- ``rosenbrock``: the 5-dimensional Rosenbrock function of two leaves
  (``a`` of 3, ``b`` of 2, concatenated in that order);
- ``lsq``: a least-squares fit, ``w`` (4, 2) and ``c`` (2,);
- ``logistic``: an L2-regularised binary logistic regression, ``w`` (4,)
  and ``c`` ().

Each case runs `Case.steps` outer steps (one ``optimizer.step(closure)``,
one cadence ``update``), with and without the strong-Wolfe line search,
histories small enough to wrap, `max_eval` budgets and tolerances that stop
a step early (and later steps at once). After each step the table keeps the
flat parameters (leaves in sorted-name order, as `jax.tree.leaves` and the
torch parameter list have them) and torch's ``state["n_iter"]`` and
``state["func_evals"]``. float64 and float32.

``python -m tests.reference.generate lbfgs`` writes `GOLDEN`;
``tests/optimizers/test_lbfgs.py`` compares cadence against it and against
live torch.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cadence import optimizers as O
from cadence import schedules as S

from . import golden

GOLDEN = "lbfgs.json"
SEED = 20261130
SAMPLES = 24

SHAPES = {
    "rosenbrock": {"a": (3,), "b": (2,)},
    "lsq": {"c": (2,), "w": (4, 2)},
    "logistic": {"c": (), "w": (4,)},
}


@dataclass(frozen=True)
class Data:
    """A problem's fixed data, in float64."""

    init: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray


def data(problem: str) -> Data:
    """The same arrays in the generator and in the tests."""
    rng = np.random.default_rng([SEED, list(SHAPES).index(problem)])
    if problem == "rosenbrock":
        init = {"a": np.array([-1.2, 1.0, -0.5]), "b": np.array([0.8, 1.5])}
        return Data(init, np.zeros(0), np.zeros(0))
    init = {n: 0.3 * rng.standard_normal(s) for n, s in SHAPES[problem].items()}
    x = rng.standard_normal((SAMPLES, 4))
    if problem == "lsq":
        y = x @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((SAMPLES, 2))
    else:
        y = np.where(x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.standard_normal(SAMPLES) > 0, 1, -1)
    return Data(init, x, y.astype(np.float64))


def loss(problem: str, p: dict[str, Any], x: Any, y: Any, xp: Any) -> Any:
    """The problem's loss, for either framework's arrays; `xp` is jax.numpy or torch."""
    if problem == "rosenbrock":
        z = xp.concatenate([p["a"], p["b"]])
        return (100 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2).sum()
    if problem == "lsq":
        return ((x @ p["w"] + p["c"][None, :] - y) ** 2).sum() / (2 * SAMPLES)
    margin = y * (x @ p["w"] + p["c"])
    return xp.logaddexp(0 * margin, -margin).mean() + 0.5e-2 * (p["w"] ** 2).sum()


def flat(params: dict[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(params[n], np.float64).ravel() for n in sorted(params)])


@dataclass(frozen=True)
class Case:
    """One configuration: torch's LBFGS keyword arguments, cadence's `lbfgs` the same ones.

    `lr_factor` multiplies the lr at step k on torch's side (LambdaLR), as
    `schedule` does on cadence's. `steps_float32`: the steps run in float32
    (None: all, or the case is float64-only when 0), where summation order
    puts the two sides one float32 rounding apart (torch's ``|g|_1`` and
    dot products add in another order than XLA's) and an ill-conditioned
    search, or a tolerance met at the last bit, amplifies that.
    """

    id: str
    problem: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 4
    schedule: Any = None
    lr_factor: Any = None
    steps_float32: int | None = None

    def runs(self, dtype: str) -> int:
        """The steps this case runs in `dtype` (0: not run)."""
        if dtype == "float32" and self.steps_float32 is not None:
            return self.steps_float32
        return self.steps

    def build(self) -> O.lbfgs:
        kwargs = dict(self.kwargs)
        if self.schedule is not None:
            kwargs["lr"] = self.schedule
        return O.lbfgs(**kwargs)


def _halving(k: int) -> float:  # S.exponential(lr, 0.5) / lr
    return 0.5**k


CASES: dict[str, Case] = {
    c.id: c
    for c in [
        # Rosenbrock's curved valley turns a rounding of float32 into 1e-5 of
        # the parameters within 20 searched iterations: float64 only.
        Case("rosenbrock_wolfe", "rosenbrock", {"line_search_fn": "strong_wolfe"}, steps_float32=0),
        Case(
            # History of 2: the ring wraps every few iterations.
            "rosenbrock_wolfe_history2",
            "rosenbrock",
            {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 8},
            steps=5,
            steps_float32=0,
        ),
        Case(
            "rosenbrock_wolfe_short",
            "rosenbrock",
            {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 3},
            steps=3,
        ),
        Case(
            # Steps far too long: the zoom shrinks brackets from either side.
            "rosenbrock_wolfe_lr10",
            "rosenbrock",
            {"line_search_fn": "strong_wolfe", "lr": 10.0},
            steps_float32=0,
        ),
        Case("rosenbrock_fixed", "rosenbrock", {"lr": 0.02, "history_size": 4, "max_iter": 10}),
        Case(
            # A quadratic: converges within a step; the change tolerances stop it.
            "lsq_fixed_history3",
            "lsq",
            {"history_size": 3, "max_iter": 12, "tolerance_change": 1e-6},
        ),
        Case("lsq_max_eval", "lsq", {"lr": 0.5, "max_iter": 10, "max_eval": 4}, steps=3),
        Case(
            # Steps so small that max |t d| stops each update at once.
            "lsq_fixed_tiny_steps",
            "lsq",
            {"lr": 1e-6, "tolerance_change": 1e-5, "max_iter": 5},
            steps=2,
        ),
        Case(
            # Stops on tolerance_grad; the next steps return at once.
            "logistic_wolfe_tolerance",
            "logistic",
            {"line_search_fn": "strong_wolfe", "tolerance_grad": 1e-4, "max_iter": 50},
            steps=3,
        ),
        Case(
            # Steps too short: the search extrapolates, and runs out of
            # evaluations. Float64 only: over such short steps the loss is
            # nearly linear, the cubic's discriminant is near 0, and float32
            # rounding picks its midpoint or its bound (0.2 apart after a step).
            "logistic_wolfe_short_steps",
            "logistic",
            {"line_search_fn": "strong_wolfe", "lr": 0.01, "max_iter": 10},
            steps_float32=0,
        ),
        Case(
            # Few evaluations: the line search's budget (max_ls) runs out.
            "logistic_wolfe_max_eval",
            "logistic",
            {"line_search_fn": "strong_wolfe", "max_iter": 10, "max_eval": 5, "history_size": 3},
            steps_float32=2,
        ),
        Case(
            "logistic_fixed_schedule",
            "logistic",
            {"max_iter": 6, "history_size": 5},
            schedule=S.exponential(1.0, 0.5),
            lr_factor=_halving,
            steps_float32=2,
        ),
    ]
}

DTYPES = ("float64", "float32")

# --------------------------------------------------------------------------- line search

# Direct calls of torch's ``_strong_wolfe`` on a wavy 2-D function from
# random points along the steepest descent, with random first steps,
# tolerances and budgets: they reach the branches that the runs above rarely
# take (extrapolation, exhausted budgets, narrow brackets, zoom steps that
# are moved off the bracket's ends). float64.
TRIALS = 600


def wavy(z: Any, xp: Any) -> Any:
    return (z**4 - 3 * z**2 + 0.5 * z).sum() + xp.sin(3 * z[0]) + 2.0 * xp.sin(40 * z[1]) * z[0]


def trials() -> list[tuple[np.ndarray, float, float, int]]:
    """Each trial's start point, first step, tolerance_change and max_ls."""
    rng = np.random.default_rng([SEED, 99])
    out = []
    for k in range(TRIALS):
        x = rng.uniform(-2, 2, 2)
        t = 10 ** rng.uniform(-3, 1.5)
        out.append((x, float(t), [1e-9, 1e-2, 1.0][k % 3], [2, 4, 25, 25][(k // 3) % 4]))
    return out


def line_search_torch() -> dict[str, list]:
    """torch's (f_new, t, ls_func_evals) for every trial."""
    import torch
    from torch.optim.lbfgs import _strong_wolfe

    def value_and_grad(z: Any) -> tuple[float, Any]:
        z = z.detach().requires_grad_(True)
        value = wavy(z, torch)
        value.backward()
        return float(value.detach()), z.grad

    out: dict[str, list] = {"f": [], "t": [], "evals": []}
    for x, t, tolerance_change, max_ls in trials():
        x = torch.tensor(x, dtype=torch.float64)
        f, g = value_and_grad(x)
        d = -g
        f_new, _, t_new, evals = _strong_wolfe(
            lambda x, step, d: value_and_grad(x[0] + step * d),
            [x],
            t,
            d,
            f,
            g,
            g.dot(d),
            tolerance_change=tolerance_change,
            max_ls=max_ls,
        )
        out["f"].append(float(f_new))
        out["t"].append(float(t_new))
        out["evals"].append(int(evals))
    return out


def run_torch(case: Case, dtype: str) -> dict[str, list]:
    """torch's flat parameters, n_iter and func_evals after each step."""
    import torch

    torch.set_num_threads(1)
    tdtype = getattr(torch, dtype)
    d = data(case.problem)
    params = {n: torch.nn.Parameter(torch.tensor(d.init[n], dtype=tdtype)) for n in sorted(d.init)}
    x, y = torch.tensor(d.x, dtype=tdtype), torch.tensor(d.y, dtype=tdtype)
    opt = torch.optim.LBFGS(list(params.values()), **case.kwargs)
    scheduler = None
    if case.lr_factor is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, case.lr_factor)

    def closure() -> Any:
        opt.zero_grad()
        value = loss(case.problem, params, x, y, torch)
        value.backward()
        return value

    out: dict[str, list] = {"params": [], "n_iter": [], "func_evals": []}
    for _ in range(case.runs(dtype)):
        opt.step(closure)
        if scheduler is not None:
            scheduler.step()
        state = opt.state[next(iter(params.values()))]
        out["params"].append(flat({n: p.detach().numpy() for n, p in params.items()}))
        out["n_iter"].append(int(state["n_iter"]))
        out["func_evals"].append(int(state["func_evals"]))
    return out


def generate() -> dict[str, Any]:
    """The golden table: case -> dtype -> {params, n_iter, func_evals} per step."""
    import torch

    table = {}
    for name, case in CASES.items():
        table[name] = {}
        for dtype in (d for d in DTYPES if case.runs(d)):
            run = run_torch(case, dtype)
            table[name][dtype] = run | {"params": golden.rows(run["params"], dtype)}
    return {
        "meta": {
            "torch": torch.__version__,
            "numpy": importlib.metadata.version("numpy"),
            "seed": SEED,
            "shapes": {p: {n: list(s) for n, s in v.items()} for p, v in SHAPES.items()},
        },
        "cases": table,
        "line_search": line_search_torch(),
    }
