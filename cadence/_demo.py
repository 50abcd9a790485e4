"""``python -m cadence demo``: train, checkpoint, interrupt, resume, finish.

A small MLP learns scikit-learn's handwritten digits (a real data set that
ships inside scikit-learn) with AdamW, no weight decay on biases (a parameter
group), gradient clipping and a warmup + cosine schedule. Halfway through it
checkpoints, throws away everything in memory, restores the run from the
checkpoint alone (optimizer and schedule included) and finishes, then
reports test accuracy and plots learning rate and loss against step.

``--dtype bfloat16`` / ``float16`` trains with low-precision parameters and
activations (the loss in float32), optionally with a float32 master copy of
the parameters (``--master-weights``) and dynamic loss scaling
(``--loss-scale``): the figures in the README's "Mixed precision and memory".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S

BATCH = 128
HIDDEN = 128
TARGET_ACCURACY = 0.95


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of scikit-learn's 8x8 digits, pixels scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("the demo needs scikit-learn: pip install 'cadence[demo]'") from e
    x, y = sklearn_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int32), test_size=0.25, random_state=0, stratify=y)


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> dict[str, dict[str, jax.Array]]:
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        params[f"layer{i}"] = {
            "w": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in),
            "b": jnp.zeros(n_out),
        }
    return params


def logits(params: dict[str, dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    layers = list(params.values())
    x = x.astype(layers[0]["w"].dtype)  # compute in the parameters' dtype
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None, :])
    return x @ layers[-1]["w"] + layers[-1]["b"][None, :]


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    out = logits(params, x).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return loss, jnp.mean(jnp.argmax(out, axis=-1) == y)


def make_optimizer(
    steps: int, master_weights: bool = False, loss_scale: bool = False
) -> O.Transformation:
    warmup = max(1, steps // 20)
    schedule = S.warmup(S.cosine(3e-3, steps - warmup, end=3e-5), warmup)
    optimizer: O.Transformation = O.chain(
        O.clip_by_global_norm(1.0),
        O.adamw(schedule, weight_decay=1e-2, groups={"*/b": {"weight_decay": 0.0}}),
    )
    if master_weights:
        optimizer = O.master_weights(optimizer)
    if loss_scale:
        optimizer = O.loss_scale(optimizer)
    return optimizer


def make_step(optimizer: O.Transformation) -> Any:
    scaled = isinstance(optimizer, O.loss_scale)

    def step(params: Any, state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, ...]:
        def objective(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            loss, acc = loss_fn(params, x, y)
            # With loss scaling, the gradients are those of the scaled loss.
            return (O.scale_loss(loss, state) if scaled else loss), (loss, acc)

        (_, (loss, acc)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        # update + optax.apply_updates in one call (one pass per leaf on CPU).
        params, state = optimizer.step(grads, state, params)
        lr = O.hyperparams(state)["lr"]["default"]
        return params, state, loss, acc, lr

    # Params and state are donated (in the order they are returned): the step
    # updates them in place.
    return jax.jit(step, donate_argnums=(0, 1))


def batch_indices(step: int, n: int) -> np.ndarray:
    """The minibatch of `step`: a function of the step, so a resumed run sees the same data."""
    return np.random.default_rng(step).choice(n, size=BATCH, replace=False)


def train(
    params: Any,
    state: Any,
    optimizer: O.Transformation,
    data: tuple[np.ndarray, np.ndarray],
    start: int,
    stop: int,
    history: dict[str, list[float]],
    progress: Any,
) -> tuple[Any, Any]:
    step_fn = make_step(optimizer)
    x, y = data
    for step in range(start, stop):
        idx = batch_indices(step, len(x))
        params, state, loss, acc, lr = step_fn(params, state, x[idx], y[idx])
        history["loss"].append(float(loss))
        history["lr"].append(float(lr))
        progress.update(1)
        if step % 10 == 0 or step == stop - 1:
            progress.set_postfix(
                loss=f"{float(loss):.3f}", acc=f"{float(acc):.2f}", lr=f"{float(lr):.2e}"
            )
    return params, state


def plot(history: dict[str, list[float]], resume_step: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(history["loss"]))
    fig, (ax_lr, ax_loss) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, layout="constrained")
    ax_lr.plot(steps, history["lr"], color="C0")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("cadence demo: digits MLP, AdamW with warmup + cosine")
    ax_loss.plot(steps, history["loss"], color="C1", alpha=0.4, label="batch loss")
    window = 20
    if len(steps) > window:
        smooth = np.convolve(history["loss"], np.ones(window) / window, mode="valid")
        ax_loss.plot(steps[window - 1 :], smooth, color="C1", label=f"{window}-step mean")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_xlabel("step")
    for ax in (ax_lr, ax_loss):
        ax.axvline(resume_step, color="C3", linestyle="--")
        ax.grid(True, alpha=0.3)
    ax_lr.annotate(
        "checkpoint, interrupt, resume",
        (resume_step, max(history["lr"])),
        textcoords="offset points",
        xytext=(6, -12),
        color="C3",
    )
    ax_loss.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    steps: int,
    output_dir: Path,
    make_plot: bool,
    dtype: str = "float32",
    master_weights: bool = False,
    loss_scale: bool = False,
    progress_bar: bool = True,
) -> float:
    """Run the demo with parameters in `dtype`; return the test accuracy."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    x_train, x_test, y_train, y_test = load_digits()
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels")
    optimizer = make_optimizer(steps, master_weights, loss_scale)
    print(f"optimizer: {optimizer!r}")
    params = init_mlp(jax.random.PRNGKey(0), (64, HIDDEN, 10))
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    print(f"parameters: {dtype}")
    state = optimizer.init(params)
    history: dict[str, list[float]] = {"loss": [], "lr": []}
    half = steps // 2
    data = (x_train, y_train)

    with (
        tempfile.TemporaryDirectory(prefix="cadence-demo-") as ckpt_dir,
        tqdm(
            total=steps,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            disable=not progress_bar,
        ) as progress,
    ):
        params, state = train(params, state, optimizer, data, 0, half, history, progress)
        saved_at = checkpoint.save(ckpt_dir, half, params, state, optimizer=optimizer)
        progress.write(f"step {half}: checkpoint written to {saved_at}")
        # An interruption: nothing from the first half survives in memory.
        del params, state, optimizer
        progress.write("simulated interruption: params, optimizer state and optimizer discarded")
        restored = checkpoint.restore(ckpt_dir)
        last_lr = float(O.hyperparams(restored.opt_state)["lr"]["default"])
        progress.write(f"resumed from step {restored.step} (last lr {last_lr:.2e})")
        params, state, optimizer = restored.params, restored.opt_state, restored.optimizer
        params, state = train(
            params, state, optimizer, data, restored.step, steps, history, progress
        )

    test_loss, test_acc = loss_fn(params, jnp.asarray(x_test), jnp.asarray(y_test))
    accuracy = float(test_acc)
    tail = history["loss"][-50:]
    print(
        f"training loss (mean of the last {len(tail)} steps): {np.mean(tail):.4f}; "
        f"test loss: {float(test_loss):.4f}"
    )
    if loss_scale:
        print(f"final loss scale: {float(O.hyperparams(state)['loss_scale']):g}")
    print(f"test accuracy: {accuracy:.4f} (target {TARGET_ACCURACY})")
    if make_plot:
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / "demo.png"
        plot(history, half, path)
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return accuracy


def main(args: argparse.Namespace) -> int:
    """The ``demo`` command: 0 when the test accuracy reaches the target."""
    if args.steps < 10:
        raise ValueError(f"--steps must be >= 10, got {args.steps}")
    accuracy = run(
        args.steps,
        Path(args.output_dir),
        not args.no_plot,
        dtype=getattr(args, "dtype", "float32"),
        master_weights=getattr(args, "master_weights", False),
        loss_scale=getattr(args, "loss_scale", False),
    )
    return 0 if accuracy >= TARGET_ACCURACY else 1
