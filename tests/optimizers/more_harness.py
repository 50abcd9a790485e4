"""Running the cases of `tests.reference.more_optimizer_cases` with cadence.

Per model and dtype, every case runs as a `lax.scan` of `STEPS` updates in
one jitted program (the optimizers are arguments, the problem a traced flag).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests.optimizers.harness import nest, trajectory, unnest
from tests.reference import more_optimizer_cases as C


def loss(params, xa, xb, z, y):
    pred = C.predict(unnest(params), xa, xb, z, jnp.einsum)
    return jnp.sum((pred - y) ** 2) / (2 * C.SAMPLES)


@functools.partial(jax.jit, static_argnames="method")
def _simulate_all(opts, init, grads, data, closed_loop, method):
    return {
        name: trajectory(o, init, grads, loss, data, closed_loop, method)
        for name, o in opts.items()
    }


@functools.cache
def _all(model: str, dtype: str, method: str) -> dict[tuple[str, str], np.ndarray]:
    data = C.problem(model)

    def cast(tree):
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)

    opts = {
        name: case.build()
        for name, case in C.CASES.items()
        if case.model == model and dtype in case.dtypes
    }
    out = {}
    for problem in C.PROBLEMS:
        closed = problem == "lsq"
        grads = {n: np.zeros_like(g) if closed else g for n, g in data.grads.items()}
        trajectories = _simulate_all(
            opts,
            cast(nest(data.init)),
            cast(nest(grads)),
            cast((data.xa, data.xb, data.z, data.y)),
            jnp.asarray(1.0 if closed else 0.0, dtype),
            method,
        )
        for name, traj in trajectories.items():
            assert jax.tree.leaves(traj)[0].dtype == np.dtype(dtype)
            flat = unnest(jax.tree.map(np.asarray, traj))
            out[name, problem] = np.stack(
                [C.flat({n: v[k - 1] for n, v in flat.items()}, model) for k in C.SNAPSHOTS]
            )
    return out


def run_cadence(case_id: str, problem: str, dtype: str, method: str = "update") -> np.ndarray:
    """cadence's parameters after each update in `C.SNAPSHOTS` (float64 needs x64 on)."""
    return _all(C.CASES[case_id].model, dtype, method)[case_id, problem]
