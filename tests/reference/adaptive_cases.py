"""Parity cases for `radam`, `adamax`, `adadelta` (torch.optim) and `ademamix` (optax.contrib).

The model is `more_optimizer_cases`' ``full`` one (two weight matrices,
biases, a 3-D leaf and a scalar), trained for `STEPS` updates on two
problems: ``random`` (open loop: fixed NumPy gradients whose scale varies
over four orders of magnitude between updates and leaves) and ``lsq``
(closed loop: a least-squares fit whose gradients each side computes at its
own parameters). Runs are in float64 and float32. The snapshots include
updates 5 and 6, where RAdam's rectification switches on for
``b2 >= 0.9`` (update 8 for b2 = 0.75, 7 for 0.8: cases below).

The reference of the ``radam``, ``adamax`` and ``adadelta`` cases is
torch.optim (param groups and LambdaLR as the case asks); that of the
``ademamix`` cases is optax.contrib.ademamix (groups as ``optax.partition``
of one ademamix per group, schedules passed to optax as they are, float
hyperparameters as each dtype holds them: `held`).

``python -m tests.reference.generate adaptive`` writes `GOLDEN`;
``tests/optimizers/test_adaptive_parity.py`` compares cadence against it and
against the live references.
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
from .more_optimizer_cases import (
    MODELS,
    SAMPLES,
    Problem,
    default_dtype,
    flat,
    predict,
    torch_trajectory,
)
from .more_optimizer_cases import problem as more_problem
from .optimizer_cases import cosine

GOLDEN = "adaptive.json"

STEPS = 200
SNAPSHOTS = (1, 2, 5, 6, 7, 8, 10, 50, 200)
PROBLEMS = ("random", "lsq")
DTYPES = ("float64", "float32")
SEED = 20261201
LEAVES = MODELS["full"]


def problem() -> Problem:
    """The fixed data (`more_optimizer_cases`' linear model, drawn from `SEED` for `STEPS`)."""
    return more_problem("full", seed=SEED, steps=STEPS)


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One configuration, built both ways.

    `torch` names the torch.optim class and its keyword arguments, with
    `groups` (torch param groups beyond the default one: leaf names and the
    options that differ) and `lr_factor` (LambdaLR's factor at update k); or
    `optax` builds the optax reference from `held` (called with the dtype's
    x64 setting in force).
    """

    id: str
    build: Callable[[], O.Transformation]
    torch: tuple[str, dict[str, Any]] | None = None
    groups: tuple[dict[str, Any], ...] = ()
    lr_factor: Callable[[int], float] | None = None
    optax: Callable[[Callable[[Any], Any]], Any] | None = None


COSINE = cosine(1.0, 0.0, STEPS)  # S.cosine(lr, STEPS) / lr


def _cos(init: float) -> S.Schedule:
    return S.cosine(init, STEPS)


def _torch_cases() -> list[Case]:
    return [
        # b2 0.999: updates 1-5 unrectified, from 6 on rectified.
        Case("radam_default", lambda: O.radam(0.01), ("RAdam", dict(lr=0.01))),
        Case(
            "radam_l2",
            lambda: O.radam(0.01, 0.8, 0.99, 1e-6, weight_decay=0.1),
            ("RAdam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
        ),
        Case(
            "radam_decoupled",
            lambda: O.radam(0.02, weight_decay=0.1, decoupled_weight_decay=True),
            ("RAdam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)),
        ),
        # b2 0.75: rho_t crosses 5 between updates 7 (4.84) and 8 (5.22). At lr
        # 0.01 the fit nears its minimum, where the noisy normalised steps part
        # both runs by 1e-13 (float64) and 1e-4 (float32) at update 200.
        Case(
            "radam_b2_0.75",
            lambda: O.radam(0.003, b2=0.75),
            ("RAdam", dict(lr=0.003, betas=(0.9, 0.75))),
        ),
        Case(
            # Groups switching at different updates (b2 0.8: update 7).
            "radam_groups_cosine",
            lambda: O.radam(
                _cos(0.01),
                weight_decay=0.05,
                groups={"*/b": {"weight_decay": 0.0}, "mix/**": {"lr": _cos(0.02), "b2": 0.8}},
            ),
            ("RAdam", dict(lr=0.01, weight_decay=0.05)),
            groups=(
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0},
                {"params": ["mix/w", "mix/s"], "lr": 0.02, "betas": (0.9, 0.8)},
            ),
            lr_factor=COSINE,
        ),
        Case("adamax_default", lambda: O.adamax(0.02), ("Adamax", dict(lr=0.02))),
        Case(
            "adamax_wd",
            lambda: O.adamax(0.02, 0.8, 0.99, 1e-4, weight_decay=0.1),
            ("Adamax", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)),
        ),
        Case(
            "adamax_groups_cosine",
            lambda: O.adamax(
                _cos(0.02),
                weight_decay=0.05,
                groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": _cos(0.01), "b2": 0.9}},
            ),
            ("Adamax", dict(lr=0.02, weight_decay=0.05)),
            groups=(
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0},
                {"params": ["encoder/w"], "lr": 0.01, "betas": (0.9, 0.9)},
            ),
            lr_factor=COSINE,
        ),
        Case("adadelta_default", lambda: O.adadelta(), ("Adadelta", {})),
        Case(
            "adadelta_wd",
            lambda: O.adadelta(0.5, rho=0.95, eps=1e-4, weight_decay=0.1),
            ("Adadelta", dict(lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.1)),
        ),
        Case(
            "adadelta_groups_cosine",
            lambda: O.adadelta(
                _cos(1.0),
                weight_decay=0.05,
                groups={"*/b": {"weight_decay": 0.0}, "mix/**": {"lr": _cos(2.0), "rho": 0.5}},
            ),
            ("Adadelta", dict(lr=1.0, weight_decay=0.05)),
            groups=(
                {"params": ["encoder/b", "head/b"], "weight_decay": 0.0},
                {"params": ["mix/w", "mix/s"], "lr": 2.0, "rho": 0.5},
            ),
            lr_factor=COSINE,
        ),
    ]


def held(dtype: str) -> Callable[[Any], Any]:
    """A Python float hyperparameter as a run in `dtype` holds it (schedules pass through).

    cadence keeps hyperparameters in the default float dtype; optax, given
    Python floats, computes ``1 - b3`` in double before rounding. In float32
    that alone parts the runs: 1 - 0.9999 differs by 1.7e-4 relative from
    1 - float32(0.9999), and ademamix_default's runs by 1.1e-5 of the largest
    parameter after 200 updates. The float32 references take the float32
    values, so that the comparison is of the arithmetic.
    """
    if dtype == "float64":
        return lambda x: x
    return lambda x: float(np.float32(x)) if isinstance(x, float) else x


def _ademamix(h: Callable[[Any], Any], lr: Any, **kwargs: Any) -> Any:
    """optax.contrib.ademamix with every float hyperparameter (defaults too) passed through `h`."""
    from optax import contrib

    defaults = dict(b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, weight_decay=0.0)
    return contrib.ademamix(h(lr), **{k: h(v) for k, v in (defaults | kwargs).items()})


def _ademamix_groups_optax(h: Callable[[Any], Any]) -> Any:
    import optax

    labels = {
        n: ("b" if n.endswith("/b") else "encoder" if n == "encoder/w" else "rest") for n in LEAVES
    }
    return optax.partition(
        {
            "rest": _ademamix(h, _cos(0.01), weight_decay=0.05),
            "b": _ademamix(h, _cos(0.01)),
            "encoder": _ademamix(h, _cos(0.003), b3=0.99, weight_decay=0.05),
        },
        lambda params: {o: {i: labels[f"{o}/{i}"] for i in d} for o, d in params.items()},
    )


def _ademamix_cases() -> list[Case]:
    alpha = S.linear(0.0, 5.0, 100)  # the paper's warmup of alpha, linear
    b3 = S.linear(0.99, 0.9999, 100)
    wd = dict(b1=0.8, b2=0.99, b3=0.999, alpha=3.0, eps=1e-6, weight_decay=0.1)
    return [
        Case("ademamix_default", lambda: O.ademamix(0.01), optax=lambda h: _ademamix(h, 0.01)),
        Case(
            "ademamix_wd",
            lambda: O.ademamix(0.01, **wd),
            optax=lambda h: _ademamix(h, 0.01, **wd),
        ),
        Case(
            # Schedules on lr, b3 and alpha, the same objects on both sides.
            "ademamix_schedules",
            lambda: O.ademamix(_cos(0.01), b3=b3, alpha=alpha),
            optax=lambda h: _ademamix(h, _cos(0.01), b3=b3, alpha=alpha),
        ),
        Case(
            "ademamix_groups_cosine",
            lambda: O.ademamix(
                _cos(0.01),
                weight_decay=0.05,
                groups={"*/b": {"weight_decay": 0.0}, "encoder/w": {"lr": _cos(0.003), "b3": 0.99}},
            ),
            optax=_ademamix_groups_optax,
        ),
    ]


CASES: dict[str, Case] = {c.id: c for c in _torch_cases() + _ademamix_cases()}


# --------------------------------------------------------------------------- references


def run_reference(case: Case, problem_name: str, dtype: str) -> np.ndarray:
    """The reference's parameters after each update in `SNAPSHOTS`, shape (len(SNAPSHOTS), size)."""
    if case.optax is not None:
        return run_optax(lambda: case.optax(held(dtype)), problem_name, dtype)
    return run_torch(case, problem_name, dtype)


def run_torch(case: Case, problem_name: str, dtype: str) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    tdtype = getattr(torch, dtype)
    with default_dtype(torch.float64 if dtype == "float64" else torch.float32):
        return _run_torch(case, problem_name, tdtype)


def _run_torch(case: Case, problem_name: str, tdtype: Any) -> np.ndarray:
    import torch

    cls, kwargs = case.torch
    return torch_trajectory(
        lambda groups: getattr(torch.optim, cls)(groups, **kwargs),
        case.groups,
        case.lr_factor,
        problem(),
        "full",
        problem_name,
        tdtype,
        STEPS,
        SNAPSHOTS,
    )


def nested(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"encoder/w": x}`` -> ``{"encoder": {"w": x}}``."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        outer, inner = name.split("/")
        out.setdefault(outer, {})[inner] = value
    return out


def loss(params: dict[str, dict[str, Any]], xa: Any, xb: Any, z: Any, y: Any) -> Any:
    """The closed-loop problem's loss, in JAX, on nested parameters."""
    import jax.numpy as jnp

    flat_params = {f"{o}/{i}": v for o, d in params.items() for i, v in d.items()}
    pred = predict(flat_params, xa, xb, z, jnp.einsum)
    return jnp.sum((pred - y) ** 2) / (2 * SAMPLES)


def run_optax(build: Callable[[], Any], problem_name: str, dtype: str) -> np.ndarray:
    """An optax transformation's run (a `lax.scan`), in `dtype` (x64 switched on for float64)."""
    import jax
    import jax.numpy as jnp
    import optax

    with jax.enable_x64(dtype == "float64"):
        data = problem()
        cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)  # noqa: E731
        opt = build()
        closed = problem_name == "lsq"
        grads = {n: (np.zeros_like(g) if closed else g) for n, g in data.grads.items()}

        @jax.jit
        def run(init, grads, xa, xb, z, y):
            def step(carry, g):
                params, state = carry
                if closed:
                    g = jax.grad(loss)(params, xa, xb, z, y)
                updates, state = opt.update(g, state, params)
                params = optax.apply_updates(params, updates)
                return (params, state), params

            return jax.lax.scan(step, (init, opt.init(init)), grads)[1]

        traj = run(
            cast(nested(data.init)), cast(nested(grads)), *cast((data.xa, data.xb, data.z, data.y))
        )
        assert jax.tree.leaves(traj)[0].dtype == np.dtype(dtype)
        leaves = {f"{o}/{i}": np.asarray(v) for o, d in traj.items() for i, v in d.items()}
        return np.stack([flat({n: v[k - 1] for n, v in leaves.items()}, "full") for k in SNAPSHOTS])


def generate() -> dict[str, Any]:
    """The golden table: case -> problem -> dtype -> snapshots of the flat parameters."""
    import torch

    table = {
        name: {p: {d: golden.rows(run_reference(case, p, d), d) for d in DTYPES} for p in PROBLEMS}
        for name, case in CASES.items()
    }
    return {
        "meta": {
            "torch": torch.__version__,
            "optax": importlib.metadata.version("optax"),
            "numpy": importlib.metadata.version("numpy"),
            "steps": STEPS,
            "snapshots": list(SNAPSHOTS),
            "leaves": list(LEAVES),
            "seed": SEED,
        },
        "cases": table,
    }
