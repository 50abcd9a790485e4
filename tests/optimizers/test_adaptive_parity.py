"""Parity of `radam`, `adamax`, `adadelta` (torch.optim) and `ademamix` (optax.contrib).

Every case of `tests.reference.adaptive_cases` runs 200 updates on random
gradients and on a closed-loop least-squares fit, in float64 (to 1e-10 of
the largest parameter) and float32 (to 1e-5), against the golden vectors and
against the live reference. ``PYTHONPATH=. python
tests/optimizers/test_adaptive_parity.py`` prints each case's worst
relative gap, and how far optax's own radam, adamax and adadelta are from
torch's.
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
from cadence.optimizers._radam import rho
from tests.optimizers.harness import TOLERANCE, relative_error, trajectory
from tests.reference import adaptive_cases as C

GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())

RUNS = [(case, dtype) for case in sorted(C.CASES) for dtype in C.DTYPES]


@functools.partial(jax.jit, static_argnames="method")
def _simulate_all(opts, init, grads, data, closed_loop, method):
    # One program for every case: XLA's fixed cost per compilation dominates.
    return {
        name: trajectory(o, init, grads, C.loss, data, closed_loop, method)
        for name, o in opts.items()
    }


@functools.cache
def _all(dtype: str, method: str) -> dict[tuple[str, str], np.ndarray]:
    data = C.problem()

    def cast(tree):
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)

    opts = {name: case.build() for name, case in C.CASES.items()}
    out = {}
    for problem in C.PROBLEMS:
        closed = problem == "lsq"
        grads = {n: np.zeros_like(g) if closed else g for n, g in data.grads.items()}
        trajectories = _simulate_all(
            opts,
            cast(C.nested(data.init)),
            cast(C.nested(grads)),
            cast((data.xa, data.xb, data.z, data.y)),
            jnp.asarray(1.0 if closed else 0.0, dtype),
            method,
        )
        for name, traj in trajectories.items():
            assert jax.tree.leaves(traj)[0].dtype == np.dtype(dtype)
            leaves = {f"{o}/{i}": np.asarray(v) for o, d in traj.items() for i, v in d.items()}
            out[name, problem] = np.stack(
                [C.flat({n: v[k - 1] for n, v in leaves.items()}, "full") for k in C.SNAPSHOTS]
            )
    return out


def run_cadence(case: str, problem: str, dtype: str, method: str = "update") -> np.ndarray:
    """cadence's parameters after each update in `C.SNAPSHOTS` (float64 needs x64 on)."""
    return _all(dtype, method)[case, problem]


@functools.cache
def _reference(case: str, problem: str, dtype: str) -> np.ndarray:
    return C.run_reference(C.CASES[case], problem, dtype)


def _check(ours: np.ndarray, ref: np.ndarray, dtype: str, what: str) -> None:
    error = relative_error(ours, ref)
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"


def test_golden_table_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    assert GOLDEN["meta"]["snapshots"] == list(C.SNAPSHOTS)
    assert GOLDEN["meta"]["leaves"] == list(C.LEAVES)
    for case in C.CASES:
        assert all(sorted(GOLDEN["cases"][case][p]) == sorted(C.DTYPES) for p in C.PROBLEMS)


@pytest.mark.parametrize("dtype", C.DTYPES)
def test_golden(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    for case in sorted(C.CASES):
        for problem in C.PROBLEMS:
            ref = np.asarray(GOLDEN["cases"][case][problem][dtype], dtype)
            _check(run_cadence(case, problem, dtype), ref, dtype, f"{case}/{problem}")


def test_golden_step(x64):
    # `step` (the single-pass loop on CPU) gives the trajectories of `update`.
    dtype = "float64"
    for case in sorted(C.CASES):
        for problem in C.PROBLEMS:
            ref = np.asarray(GOLDEN["cases"][case][problem][dtype], dtype)
            ours = run_cadence(case, problem, dtype, method="step")
            _check(ours, ref, dtype, f"{case}/{problem} (step)")


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_live_reference(case, dtype, request):
    if C.CASES[case].torch is not None:
        pytest.importorskip("torch")
    if dtype == "float64":
        request.getfixturevalue("x64")
    for problem in C.PROBLEMS:
        ref = _reference(case, problem, dtype)
        _check(run_cadence(case, problem, dtype), ref, dtype, f"{case}/{problem} vs live")
        # The golden file is current: it agrees with the live reference.
        golden = np.asarray(GOLDEN["cases"][case][problem][dtype])
        _check(golden, ref, dtype, f"{case}/{problem} golden vs live")


def test_radam_switches_at_torchs_update():
    # Updates 1-5 (rho_t <= 5) are SGD with momentum: the parameters move by
    # lr times the bias-corrected momentum; update 6 is rectified and adaptive.
    params, grad = jnp.array([1.0]), jnp.array([1e-3])
    opt = O.radam(0.1)
    state = opt.init(params)
    moves = []
    for _ in range(6):
        updates, state = opt.update(grad, state, params)
        moves.append(float(updates[0]))
    np.testing.assert_allclose(moves[:5], -1e-4, rtol=1e-5)
    # torch's update 6: lr r_6 m sqrt(1 - b2^6) / (sqrt(v) + eps), where
    # m = g and sqrt(v) = g sqrt(1 - b2^6) for a constant gradient g.
    rho_inf = 2 / (1 - 0.999) - 1
    rho_6 = rho_inf - 2 * 6 * 0.999**6 / (1 - 0.999**6)
    rect = ((rho_6 - 4) * (rho_6 - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_6)) ** 0.5
    root = 1e-3 * (1 - 0.999**6) ** 0.5
    np.testing.assert_allclose(moves[5], -0.1 * rect * root / (root + 1e-8), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rho_is_torchs(dtype):
    # torch evaluates rho_t in Python floats: the same values, and the same
    # switching update, for b2 from 0.5 to 1 - 1e-6 over 3000 updates.
    t = np.arange(1, 3001, dtype=np.float64)
    with jax.enable_x64(dtype == "float64"):
        for b2 in (0.5, 0.7, 0.75, 0.8, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999):
            b = float(np.asarray(b2, dtype))  # the hyperparameter as cadence holds it
            rho_inf = 2 / (1 - b) - 1
            theirs = np.array([rho_inf - 2 * k * (b**k) / (1 - b**k) for k in t])
            ours = np.asarray(jax.jit(rho)(jnp.asarray(b, dtype), jnp.asarray(t, dtype))[1])
            np.testing.assert_allclose(ours, theirs, rtol=1e-13 if dtype == "float64" else 3e-6)
            np.testing.assert_array_equal(ours > 5, theirs > 5, err_msg=f"b2={b2}")


def optax_gaps(steps: int = C.STEPS) -> dict[str, float]:
    """How far optax's radam, adamax and adadelta are from torch's (float64, lsq, lr as named)."""
    import optax

    # eps 1e-4: where optax puts eps (after the bias correction) shows.
    radam_eps = C.Case("radam_eps1e-4", None, ("RAdam", dict(lr=0.01, eps=1e-4)))
    cases = {
        "radam": (optax.radam(0.01), C.CASES["radam_default"]),
        "radam(eps=1e-4)": (optax.radam(0.01, eps=1e-4), radam_eps),
        "adamax": (optax.adamax(0.02), C.CASES["adamax_default"]),
        "adadelta": (optax.adadelta(1.0, rho=0.9, eps=1e-6), C.CASES["adadelta_default"]),
    }
    index = C.SNAPSHOTS.index(steps)
    gaps = {}
    for name, (tx, case) in cases.items():
        theirs = C.run_optax(lambda tx=tx: tx, "lsq", "float64")[index : index + 1]
        ref = C.run_torch(case, "lsq", "float64")[index : index + 1]
        gaps[name] = relative_error(theirs, ref)
    return gaps


if __name__ == "__main__":
    # The worst gap of each case (both problems, every snapshot) to its live reference.
    for case, dtype in RUNS:
        with jax.enable_x64(dtype == "float64"):
            errors = [
                relative_error(run_cadence(case, p, dtype), _reference(case, p, dtype))
                for p in C.PROBLEMS
            ]
        print(f"{case:28s} {dtype}  {max(errors):.2g}")
    # float32 against optax given Python floats (1 - b3 computed in double): `C.held`.
    case = C.CASES["ademamix_default"]
    pure = max(
        relative_error(
            run_cadence(case.id, p, "float32"),
            C.run_optax(lambda: case.optax(lambda x: x), p, "float32"),
        )
        for p in C.PROBLEMS
    )
    print(f"ademamix_default float32 vs optax with Python-float hyperparameters: {pure:.2g}")
    for steps in (10, C.STEPS):
        for name, gap in optax_gaps(steps).items():
            print(f"optax.{name} vs torch, float64 lsq, after {steps} updates: {gap:.3g}")
