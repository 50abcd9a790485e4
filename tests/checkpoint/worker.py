"""Training runs for the checkpoint tests, executed in fresh Python processes.

    python -m tests.checkpoint.worker run DIR NAMES STEPS     # train, then save step STEPS
    python -m tests.checkpoint.worker resume DIR NAMES STEPS  # restore, train STEPS more
    python -m tests.checkpoint.worker saveloop DIR         # save steps until killed
    python -m tests.checkpoint.worker writer DIR FIRST COUNT  # on "go", save FIRST, FIRST+2...

`run` and `resume` write the final params and opt_state leaves to DIR/NAME.npz
so the test can compare them byte for byte with an uninterrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S

SCHEDULE = S.warmup(S.cosine(5e-2, 30, end=1e-3), 5)

OPTIMIZERS = {
    "adamw": O.chain(O.clip_by_global_norm(1.0), O.adamw(SCHEDULE, weight_decay=0.1)),
    "accumulate": O.accumulate(O.adam(SCHEDULE), 3),
    "plateau": O.reduce_on_plateau(O.sgd(0.05, momentum=0.9), patience=2, factor=0.5),
    # Scalar state per group (mu_product), and factored moments with empty
    # placeholders (row_var, col_var for w; variance for b).
    "nadam": O.nadam(SCHEDULE, weight_decay=0.1, groups={"b": {"b1": 0.5}}),
    "adafactor": O.adafactor(SCHEDULE, weight_decay=0.1),
    # Scalar state per group (eta, mu) and the average switched on mid-way.
    "asgd": O.asgd(SCHEDULE, t0=3.0, groups={"b": {"lambd": 0.0}}),
}


def init_params() -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.zeros(3, jnp.float32),
    }


def batch(step: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(x @ np.arange(12.0).reshape(4, 3).astype(np.float32))


def loss_fn(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((x @ params["w"] + params["b"][None, :] - y) ** 2)


def make_step(optimizer):
    @jax.jit
    def step(params, state, x, y, t):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        # A monitored value that improves, then plateaus: reduce_on_plateau
        # lowers the lr at t=5 and is mid-patience (one bad step) at t=7.
        value = jnp.where(t < 3, 10.0 - t, 8.0) + 0 * loss
        extra = {"value": value} if isinstance(optimizer, O.reduce_on_plateau) else {}
        updates, state = optimizer.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return step


def train(optimizer, params, state, start: int, stop: int):
    step = make_step(optimizer)
    for t in range(start, stop):
        x, y = batch(t)
        params, state = step(params, state, x, y, jnp.float32(t))
    return params, state


def dump(path: Path, params, state) -> None:
    leaves = jax.tree.leaves((params, state))
    np.savez(path, *[np.asarray(x) for x in leaves])


def writer(directory: Path, first: int, count: int) -> int:
    """Save every other step into a directory that another writer shares.

    The first save (into a private directory) loads orbax and compiles, so
    that after "go" the two writers' saves overlap.
    """
    opt = O.adam(1e-3)
    params = {"w": jnp.zeros((64, 64), jnp.float32)}
    state = opt.init(params)
    checkpoint.save(directory.with_name(f"{directory.name}-warmup-{first}"), 0, params, state)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    for step in range(first, first + 2 * count, 2):
        checkpoint.save(directory, step, {"w": params["w"] + step}, state, optimizer=opt)
        print(f"saved {step}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    command, directory = argv[0], Path(argv[1])
    if command == "saveloop":
        big = {"w": jnp.zeros((1024, 1024), jnp.float32)}
        opt = O.sgd(0.1)
        state = opt.init(big)
        for step in range(10_000):
            params = {"w": big["w"] + step}
            checkpoint.save(directory, step, params, state, optimizer=opt)
            print(f"saved {step}", flush=True)
        return 0
    if command == "writer":
        return writer(directory, int(argv[2]), int(argv[3]))
    names, steps = argv[2].split(","), int(argv[3])
    for name in names:
        if command == "run":
            optimizer = OPTIMIZERS[name]
            params = init_params()
            params, state = train(optimizer, params, optimizer.init(params), 0, steps)
            checkpoint.save(directory / name, steps, params, state, optimizer=optimizer)
        elif command == "resume":
            # The checkpoint alone: the optimizer comes back from its saved config.
            restored = checkpoint.restore(directory / name)
            optimizer = restored.optimizer
            assert optimizer == OPTIMIZERS[name], optimizer
            start = restored.step
            params, state = restored.params, restored.opt_state
            params, state = train(optimizer, params, state, start, start + steps)
        else:
            raise SystemExit(f"unknown command {command}")
        dump(directory / f"{name}-{command}.npz", params, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
