"""Parity of `asgd` and `rprop` with torch.optim's ASGD and Rprop: golden vectors, live torch.

Every case of `tests.reference.asgd_rprop_cases` runs 200 updates on random
gradients and on a closed-loop least-squares fit, in float64 (to 1e-10 of the
largest parameter) and float32 (to 1e-5); ASGD's averaged parameters
(`O.averaged_params`) are compared with torch's ``state["ax"]`` alike.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import optimizers as O
from tests.optimizers.harness import TOLERANCE, lsq_loss, nest, relative_error, trajectory, unnest
from tests.reference import asgd_rprop_cases as C
from tests.reference import optimizer_cases as OC

GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())

RUNS = [(case, dtype) for case in sorted(C.CASES) for dtype in C.DTYPES]


def _trajectory(opt, init, grads, data, closed_loop, method):
    """Parameters and averaged parameters (the parameters without averaging) after each update."""

    def averaged(state, params):
        return O.averaged_params(state) if isinstance(opt, O.asgd) else params

    return trajectory(opt, init, grads, lsq_loss, data, closed_loop, method, read=averaged)


@functools.partial(jax.jit, static_argnames="method")
def _simulate_all(opts, init, grads, data, closed_loop, method):
    # One program for every case (the optimizers are arguments).
    return {
        name: _trajectory(o, init, grads, data, closed_loop, method) for name, o in opts.items()
    }


@functools.cache
def _all(dtype: str, method: str) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    data = OC.problem()

    def cast(tree):
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)

    opts = {name: case.build() for name, case in C.CASES.items()}
    out = {}
    for problem in C.PROBLEMS:
        closed = problem == "lsq"
        grads = {n: np.zeros_like(g) if closed else g for n, g in data.grads.items()}
        runs = _simulate_all(
            opts,
            cast(nest(data.init)),
            cast(nest(grads)),
            cast((data.xa, data.xb, data.y)),
            jnp.asarray(1.0 if closed else 0.0, dtype),
            method,
        )
        for name, (params, averaged) in runs.items():
            assert jax.tree.leaves(params)[0].dtype == np.dtype(dtype)
            snaps = {}
            for key, traj in (("params", params), ("ax", averaged)):
                flat = unnest(jax.tree.map(np.asarray, traj))
                snaps[key] = np.stack(
                    [OC.flat({n: v[k - 1] for n, v in flat.items()}) for k in C.SNAPSHOTS]
                )
            out[name, problem] = snaps
    return out


def run_cadence(case: str, problem: str, dtype: str, method: str = "update") -> dict:
    """cadence's ``{"params", "ax"}`` snapshots (float64 needs x64 on)."""
    return _all(dtype, method)[case, problem]


def _check(ours: dict, ref: dict, case: str, dtype: str, what: str) -> None:
    limit = TOLERANCE[dtype]
    for key in ("params", "ax") if C.CASES[case].averages else ("params",):
        error = relative_error(np.asarray(ours[key]), np.asarray(ref[key]))
        assert error <= limit, f"{what} {key}: relative error {error:.3g} > {limit}"


@functools.cache
def _reference(case: str, problem: str, dtype: str) -> dict:
    return C.run_torch(C.CASES[case], problem, dtype)


def test_golden_table_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    assert GOLDEN["meta"]["snapshots"] == list(C.SNAPSHOTS)
    assert GOLDEN["meta"]["leaves"] == list(OC.LEAVES)
    for case, c in C.CASES.items():
        for p in C.PROBLEMS:
            assert sorted(GOLDEN["cases"][case][p]) == sorted(C.DTYPES)
            assert (GOLDEN["cases"][case][p]["float64"]["ax"] is not None) == c.averages


def test_averaging_switches_on_within_the_run():
    # The average is not the parameters at the end: the cases exercise it.
    for case, c in C.CASES.items():
        if c.averages:
            golden = GOLDEN["cases"][case]["random"]["float64"]
            params, ax = (np.asarray(golden[k]) for k in ("params", "ax"))
            assert np.array_equal(params[0], ax[0])  # before t0: ax is the parameters
            assert relative_error(ax[-1:], params[-1:]) > 1e-4, case


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_golden(case, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    for problem in C.PROBLEMS:
        ref = {
            k: None if v is None else np.asarray(v, dtype)
            for k, v in GOLDEN["cases"][case][problem][dtype].items()
        }
        _check(run_cadence(case, problem, dtype), ref, case, dtype, f"{case}/{problem}")


def test_golden_step(x64):
    # `step` (one native pass per leaf on CPU) gives the same trajectories.
    dtype = "float64"
    for case in sorted(C.CASES):
        for problem in C.PROBLEMS:
            ref = GOLDEN["cases"][case][problem][dtype]
            ours = run_cadence(case, problem, dtype, method="step")
            _check(ours, ref, case, dtype, f"{case}/{problem} (step)")


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_live_reference(case, dtype, request):
    pytest.importorskip("torch")
    if dtype == "float64":
        request.getfixturevalue("x64")
    for problem in C.PROBLEMS:
        ref = _reference(case, problem, dtype)
        _check(run_cadence(case, problem, dtype), ref, case, dtype, f"{case}/{problem} vs live")
        # The golden file is current: it agrees with the live reference.
        golden = GOLDEN["cases"][case][problem][dtype]
        _check(golden, ref, case, dtype, f"{case}/{problem} golden vs live")


@pytest.mark.parametrize("opt", [O.asgd(0.1, groups={"b": {"lr": 0.01}}), O.rprop(0.1)])
def test_donated_step_runs(opt):
    # A fresh state holds no array twice (ASGD's eta starts as a copy of lr).
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = opt.init(params)
    step = jax.jit(lambda p, s, g: opt.step(g, s, p), donate_argnums=(0, 1))
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(2):
        params, state = step(params, state, grads)
    assert int(state.count) == 2


if __name__ == "__main__":
    # The worst error of each optimizer against live torch, per dtype.
    worst: dict[tuple[str, str], float] = {}
    for case, dtype in RUNS:
        with jax.enable_x64(dtype == "float64"):
            for p in C.PROBLEMS:
                ours, ref = run_cadence(case, p, dtype), _reference(case, p, dtype)
                for key in ("params", "ax") if C.CASES[case].averages else ("params",):
                    error = relative_error(ours[key], ref[key])
                    name = case.split("_")[0] + (" ax" if key == "ax" else "")
                    worst[name, dtype] = max(worst.get((name, dtype), 0.0), error)
    for (name, dtype), error in sorted(worst.items()):
        print(f"{name:10s} {dtype}  {error:.2g}")
