"""`save`: write a step under a temporary name of its own, then rename it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cadence.checkpoint import _layout as L
from cadence.checkpoint import _trees as T


def _optimizer_config(optimizer: Any) -> dict[str, Any] | None:
    if optimizer is None:
        return None
    to_config = getattr(optimizer, "to_config", None)
    if to_config is None:
        raise TypeError(
            f"save: optimizer must be a cadence optimizer (with to_config), got "
            f"{type(optimizer).__name__}"
        )
    return to_config()


# --------------------------------------------------------------------------
# Several processes of one job (jax.distributed) save one step together:
# each writes its shards, process 0 names the temporary folder and renames it.


def _multiprocess() -> bool:
    return jax.process_count() > 1


def _barrier(name: str) -> None:
    if _multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"cadence.checkpoint.{name}")


def _from_process_0(text: str) -> str:
    """Process 0's `text` on every process (a short ASCII string)."""
    if not _multiprocess():
        return text
    from jax.experimental import multihost_utils

    buffer = np.zeros(256, np.uint8)
    data = text.encode()[:256]
    buffer[: len(data)] = np.frombuffer(data, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(shared.astype(np.uint8)).rstrip(b"\0").decode()


def write_step(
    root: Path,
    step: int,
    params: Any,
    opt_state: Any,
    optimizer: Any,
    extra: Any,
) -> Path:
    """Write `step` into `root` atomically; every process of a job calls it."""
    import orbax.checkpoint as ocp

    step = L.check_step(step)
    trees = {"params": T.pure(params), "opt_state": T.pure(opt_state), "extra": T.pure(extra)}
    final = root / str(step)
    if final.exists():
        if L.is_complete(root, step):
            raise ValueError(f"save: step {step} already exists in {root}")
        raise ValueError(
            f"save: {final} is in the way: it is not a complete step (no verified "
            f"metadata); remove it to save step {step}"
        )
    meta = {
        "format": "cadence.checkpoint",
        "format_version": L.FORMAT_VERSION,
        "step": step,
        "optimizer": _optimizer_config(optimizer),
        "has_extra": extra is not None,
        "leaves": T.manifest(trees),
        "empty": {part: T.empty_to_json(t) for part, t in trees.items() if not jax.tree.leaves(t)},
    }
    L.encode_meta(meta)  # fail here, before anything is written, if it is not JSON

    primary = jax.process_index() == 0
    staging = root / _from_process_0(L.temporary_name(str(step)))
    if primary:
        root.mkdir(parents=True, exist_ok=True)
        L.remove_stale_temporaries(root)
        staging.mkdir()
    _barrier(f"staged.{staging.name}")
    status = "failed"  # what process 0 reports unless it completes the step
    try:
        checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
        try:
            for part, tree in trees.items():
                # orbax refuses items without arrays; their structure is in the meta.
                if jax.tree.leaves(tree):
                    checkpointer.save(staging / part, args=ocp.args.StandardSave(tree))
        finally:
            checkpointer.close()
        if primary:
            L.write_meta(staging, meta)
            L.fsync_directory(staging)
            try:
                # Atomic, and refused (ENOTEMPTY/EEXIST) if another writer
                # completed the same step meanwhile: theirs is kept.
                os.rename(staging, final)
            except OSError:
                if not final.exists():
                    raise
                status = "exists"
            else:
                status = "ok"
                L.fsync_directory(root)
        else:
            status = "ok"
    finally:
        status = _from_process_0(status)
        if primary and status != "ok":
            shutil.rmtree(staging, ignore_errors=True)
    if status == "exists":
        raise ValueError(f"save: step {step} already exists in {root} (saved by another writer)")
    if status != "ok":
        raise RuntimeError(f"save: process 0 could not complete step {step} in {root}")
    return final


def save(
    directory: str | os.PathLike[str],
    step: int,
    params: Any,
    opt_state: Any,
    optimizer: Any = None,
    extra: Any = None,
) -> Path:
    """Save a training step atomically; return the step's directory.

    The step is written under a temporary name unique to this process and
    renamed when complete, so a process killed while saving leaves the
    previous steps intact and no half-written step, and several processes can
    save into one directory without losing a step whose `save` returned.

    Framework wrappers around arrays (flax NNX's ``nnx.Variable``, in
    ``nnx.state(model)`` and an ``nnx.Optimizer``'s ``opt_state``) are
    stored as the arrays they hold; `restore` puts them back into the
    ``*_like`` trees it is given, or returns plain dicts of arrays.

    Args:
        directory: the checkpoint directory (created if missing).
        step: the step number, in [0, 2**31 - 1]; it must not exist yet.
        params: the parameters (a pytree of arrays).
        opt_state: the optimizer state (a pytree of arrays).
        optimizer: the cadence optimizer, whose config (with its schedules) is
            saved so `restore` can rebuild it.
        extra: any other pytree of arrays and numbers to keep with the step
            (a data position, a PRNG key).

    Returns:
        The step's directory.

    Raises:
        ValueError: if the step already exists or is out of range, or
            `directory` is a file.
        TypeError: for a leaf that is not an array or a number.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> from cadence import checkpoint, optimizers as O
        >>> opt = O.sgd(0.1)
        >>> params = {"w": jnp.ones(3)}
        >>> d = tempfile.mkdtemp()
        >>> _ = checkpoint.save(d, 10, params, opt.init(params), optimizer=opt)
        >>> checkpoint.latest_step(d)
        10
    """
    root = L.check_directory(directory)
    return write_step(root, step, params, opt_state, optimizer, extra)
