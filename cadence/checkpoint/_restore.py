"""`restore`, `all_steps`, `latest_step`: read back only what verifies."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax

from cadence.checkpoint import _layout as L
from cadence.checkpoint import _trees as T


class Restored(NamedTuple):
    """What `restore` returns.

    Attributes:
        step: the restored step.
        params: the parameters.
        opt_state: the optimizer state.
        optimizer: the optimizer rebuilt from its saved config, or None if
            none was saved.
        extra: the `extra` pytree given to `save` (None if none was).
    """

    step: int
    params: Any
    opt_state: Any
    optimizer: Any
    extra: Any


def all_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The complete steps saved in `directory`, ascending ([] if there are none).

    A step is complete when its metadata is there and matches its checksum. A
    step being written (under a temporary name), one left behind by a process
    killed while writing, and a stray numeric folder are not listed.

    Example:
        >>> import tempfile
        >>> from cadence import checkpoint
        >>> checkpoint.all_steps(tempfile.mkdtemp())
        []
    """
    root = L.check_directory(directory)
    return sorted(s for s in L.candidate_steps(root) if L.is_complete(root, s))


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The latest complete step in `directory`, or None (also if it does not exist).

    Raises:
        ValueError: if `directory` is a file.

    Example:
        >>> import tempfile
        >>> from cadence import checkpoint
        >>> checkpoint.latest_step(tempfile.mkdtemp()) is None
        True
    """
    root = L.check_directory(directory)
    for step in L.candidate_steps(root):
        if L.is_complete(root, step):
            return step
    return None


def _optimizer(meta: dict[str, Any], step: int) -> Any:
    if meta.get("optimizer") is None:
        return None
    from cadence import optimizers as O

    try:
        return O.from_config(meta["optimizer"])
    except (TypeError, ValueError, RecursionError) as e:
        raise L.Unusable(f"restore: step {step}: the saved optimizer config: {e}") from e


def _verify(part: str, tree: Any, entries: list[dict[str, Any]], step: int, where: Path) -> None:
    """Check every restored leaf against the manifest entry with the same path.

    Paths, not positions: a raw restore turns named tuples into dicts, whose
    leaves flatten in another order.
    """
    by_path = {e["path"]: e for e in entries}
    got = T.leaves(tree, part)
    if len(got) != len(entries):
        raise L.Unusable(
            f"restore: step {step}: {where} holds {len(got)} arrays, its manifest {len(entries)}"
        )
    for path, leaf in got:
        entry = by_path.get(path)
        if entry is None:
            raise L.Unusable(f"restore: step {step}: {where} holds {path}, its manifest does not")
        expected = entry.get("sha256")
        digest = None if expected is None else T.digest(leaf)
        if digest is not None and digest != expected:
            raise L.Unusable(
                f"restore: step {step}: {path} does not match its checksum: the array "
                f"files under {where} are corrupted"
            )


def _restore_step(
    root: Path, step: int, params_like: Any, opt_state_like: Any, shardings: dict[str, Any]
) -> Restored:
    import orbax.checkpoint as ocp

    step_dir = root / str(step)
    meta = L.read_meta(step_dir, step)
    leaves = meta["leaves"]
    optimizer = _optimizer(meta, step)

    # Reading needs no manager: a plain checkpointer reads one item directory,
    # and never touches another process's step in progress.
    reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:

        def load(part: str, like: Any) -> Any:
            if not leaves[part]:
                # orbax stores no item for a tree without arrays: rebuild it.
                return like if like is not None else T.empty_from_json(meta["empty"].get(part))
            target = None
            if like is not None:
                pure_like = T.pure(like)
                T.compare(part, pure_like, leaves[part], step)
                target = T.abstract(pure_like, shardings.get(part))
            where = step_dir / part
            try:
                tree = reader.restore(where, args=ocp.args.StandardRestore(target))
            except Exception as e:  # tensorstore and orbax raise assorted types
                raise L.Unusable(
                    f"restore: step {step}: cannot read {where} ({type(e).__name__}: {e})"
                ) from e
            _verify(part, tree, leaves[part], step, where)
            return tree if like is None else T.rewrap(like, tree)

        params = load("params", params_like)
        if opt_state_like is None and optimizer is not None:
            # The optimizer knows its state's structure (named tuples, not the
            # dicts and lists a raw restore gives).
            abstract_params = T.abstract(T.pure(params), shardings.get("params"))
            opt_state_like = jax.eval_shape(optimizer.init, abstract_params)
        opt_state = load("opt_state", opt_state_like)
        extra = load("extra", None) if meta.get("has_extra") else None
    finally:
        reader.close()
    return Restored(step, params, opt_state, optimizer, extra)


def restore(
    directory: str | os.PathLike[str],
    step: int | None = None,
    params_like: Any = None,
    opt_state_like: Any = None,
    shardings: Any = None,
) -> Restored:
    """Restore a saved step (the latest complete, verified one by default).

    The optimizer is rebuilt from the saved config; when `opt_state_like` is
    not given, the state's structure comes from that optimizer
    (``jax.eval_shape(optimizer.init, params)``), so a checkpoint alone is
    enough to resume. Arrays are placed directly on `shardings` (a dict with
    optional ``"params"`` and ``"opt_state"`` trees of shardings), or on the
    shardings of the ``*_like`` arrays, without first gathering them on one
    device. ``*_like`` trees may hold framework wrappers (flax NNX's
    ``nnx.state(model)``, an ``nnx.Optimizer``'s ``opt_state``): the
    restored arrays come back inside the same wrappers.

    Every leaf and the metadata (optimizer config included) are checked
    against SHA-256 checksums: a structure that differs raises naming the
    first differing path, and bytes that differ from what was saved raise
    rather than being returned. Without `step`, a damaged or incomplete newest
    step is skipped with a warning and the newest step that verifies is
    restored.

    Args:
        directory: the checkpoint directory.
        step: the step to restore; the latest complete step when None.
        params_like: a pytree (arrays or ShapeDtypeStructs) with the
            parameters' structure; without it the parameters come back as
            nested dicts and lists of arrays.
        opt_state_like: likewise for the optimizer state.
        shardings: ``{"params": tree, "opt_state": tree}`` of shardings.

    Returns:
        A `Restored` named tuple ``(step, params, opt_state, optimizer, extra)``.

    Raises:
        FileNotFoundError: no checkpoint, or no such step (the message lists
            the steps there are), or a missing file.
        ValueError: a structure mismatch, a corrupted or truncated file, a
            checkpoint written by a newer format version, or `directory` is
            a file.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> from cadence import checkpoint, optimizers as O
        >>> opt = O.adam(1e-3)
        >>> params = {"w": jnp.ones(3)}
        >>> d = tempfile.mkdtemp()
        >>> _ = checkpoint.save(d, 5, params, opt.init(params), optimizer=opt)
        >>> r = checkpoint.restore(d, params_like=params)
        >>> r.step, r.optimizer == opt
        (5, True)
    """
    root = L.check_directory(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"restore: no checkpoint directory {root}")
    shardings = dict(shardings or {})
    unknown = sorted(set(shardings) - {"params", "opt_state"})
    if unknown:
        raise ValueError(f"restore: shardings has unknown keys {unknown}")
    if step is not None:
        step = L.check_step(step)
        if not (root / str(step)).is_dir():
            there = all_steps(root) or "none"
            raise FileNotFoundError(
                f"restore: step {step} not found in {root}; steps there: {there}"
            )
        return _restore_step(root, step, params_like, opt_state_like, shardings)

    candidates = L.candidate_steps(root)
    if not candidates:
        raise FileNotFoundError(f"restore: no complete checkpoint step in {root}")
    failures: list[Exception] = []
    for candidate in candidates:
        try:
            restored = _restore_step(root, candidate, params_like, opt_state_like, shardings)
        except (L.Unusable, FileNotFoundError) as e:
            # Damaged or incomplete: not the caller's mistake, so an older
            # step may serve. A structure mismatch is not caught here.
            failures.append(e)
            continue
        if failures:
            warnings.warn(
                f"restore: restored step {candidate}, skipping newer steps that are "
                f"damaged or incomplete: {'; '.join(map(str, failures))}",
                RuntimeWarning,
                stacklevel=2,
            )
        return restored
    if len(failures) == 1:
        raise failures[0]
    raise type(failures[0])(
        f"restore: no step in {root} can be restored: {'; '.join(map(str, failures))}"
    ) from failures[0]
