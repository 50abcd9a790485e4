"""Running the parity cases of `tests.reference.optimizer_cases` with cadence.

Every case runs as a 200-step `lax.scan`, all of them in one jitted program
per dtype; the optimizers are arguments (hyperparameters traced) and the two
problems are selected by a traced flag, so the program compiles once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.reference import optimizer_cases as C


def nest(flat: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"encoder/w": x}`` -> ``{"encoder": {"w": x}}`` (so group patterns see paths)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, value in flat.items():
        outer, inner = name.split("/")
        out.setdefault(outer, {})[inner] = value
    return out


def unnest(params: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{o}/{i}": v for o, d in params.items() for i, v in d.items()}


def lsq_loss(params, xa, xb, y):
    bias = params["encoder"]["b"][None, :] + params["head"]["b"][None, :]
    pred = xa @ params["encoder"]["w"] + xb @ params["head"]["w"] + bias
    return jnp.sum((pred - y) ** 2) / (2 * C.SAMPLES)


def trajectory(opt, init, grads, loss, data, closed_loop, method="update", read=None):
    """Parameters after every update: the gradient is ``closed_loop * grad(loss) + grads[k]``.

    ``loss(params, *data)`` is the closed-loop problem. `method` "update"
    applies ``opt.update`` and ``optax.apply_updates``; "step" calls ``opt.step``.
    With ``read(state, params)`` (averaged or evaluation parameters, say) each
    update also gives what it returns: the output is ``(params, read)``.
    """

    def step(carry, g):
        params, state = carry
        lsq = jax.grad(loss)(params, *data)
        g = jax.tree.map(lambda a, b: closed_loop * a + b, lsq, g)
        if method == "step":
            params, state = opt.step(g, state, params)
        else:
            updates, state = opt.update(g, state, params)
            params = optax.apply_updates(params, updates)
        return (params, state), (params if read is None else (params, read(state, params)))

    _, out = jax.lax.scan(step, (init, opt.init(init)), grads)
    return out


def simulate(opt, init, grads, xa, xb, y, closed_loop, method="update"):
    """`trajectory` on this table's least-squares problem."""
    return trajectory(opt, init, grads, lsq_loss, (xa, xb, y), closed_loop, method)


@functools.partial(jax.jit, static_argnames="method")
def _simulate_all(opts, init, grads, xa, xb, y, closed_loop, method):
    # One program for every case: XLA's fixed cost per compilation dominates
    # these small loops, so one large compilation beats fifty small ones.
    return {
        name: simulate(o, init, grads, xa, xb, y, closed_loop, method) for name, o in opts.items()
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
            cast(nest(data.init)),
            cast(nest(grads)),
            *cast((data.xa, data.xb, data.y)),
            jnp.asarray(1.0 if closed else 0.0, dtype),
            method,
        )
        for name, traj in trajectories.items():
            assert jax.tree.leaves(traj)[0].dtype == np.dtype(dtype)
            flat = unnest(jax.tree.map(np.asarray, traj))
            out[name, problem] = np.stack(
                [C.flat({n: v[k - 1] for n, v in flat.items()}) for k in C.SNAPSHOTS]
            )
    return out


def run_cadence(case_id: str, problem: str, dtype: str, method: str = "update") -> np.ndarray:
    """cadence's parameters after each update in `C.SNAPSHOTS`, like `C.reference`.

    Every case is computed on first use (per dtype and method); float64 needs
    x64 enabled.
    """
    return _all(dtype, method)[case_id, problem]


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """The largest error of a snapshot relative to that snapshot's largest parameter."""
    scale = np.max(np.abs(ref), axis=1)
    return float(np.max(np.max(np.abs(ours - ref), axis=1) / scale))


TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
