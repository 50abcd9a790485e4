"""Checkpoints of training state on orbax-checkpoint, with exact resume.

A checkpoint step is one directory written by orbax's `CheckpointManager`
(atomically: it is assembled under a temporary name and renamed when
complete). It holds these items:

- ``params``, ``opt_state`` and (if given) ``extra``, in orbax's standard
  array format, each process writing its own shards;
- ``meta``: JSON with the format version, the optimizer's config (with its
  schedules) so the run can be rebuilt from the checkpoint alone, and a
  manifest of every array leaf (path, shape, dtype and a SHA-256 of its
  bytes), which `restore` checks so that a corrupted file is never returned
  as good data.

Because the optimizer's step count and schedules live in its state, restoring
the state resumes the learning-rate schedule exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "CheckpointManager",
    "Restored",
    "all_steps",
    "latest_step",
    "restore",
    "save",
]

FORMAT_VERSION = 1

_META = "meta"
_PARTS = ("params", "opt_state", "extra")


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


# --------------------------------------------------------------------------
# Paths and manifests.


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path(prefix: str, keys: Sequence[Any]) -> str:
    return "/".join([prefix, *(_key_name(k) for k in keys)])


def _leaves(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    return [(_path(prefix, p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _describe(x: Any) -> tuple[list[int], str]:
    if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic)):
        return list(x.shape), str(np.dtype(x.dtype))
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [], str(np.asarray(x).dtype)
    raise TypeError(f"{type(x).__name__} is not an array or a number")


def _digest(x: Any) -> str | None:
    """SHA-256 of a leaf's bytes, or None for arrays this process cannot see whole."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    return hashlib.sha256(a.view(np.uint8).reshape(-1)).hexdigest()


def _manifest(trees: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for part, tree in trees.items():
        entries = []
        for path, leaf in _leaves(tree, part):
            try:
                shape, dtype = _describe(leaf)
            except TypeError as e:
                raise TypeError(
                    f"save: {path} must be an array or a number, got {type(leaf).__name__}"
                ) from e
            entries.append({"path": path, "shape": shape, "dtype": dtype, "sha256": _digest(leaf)})
        out[part] = entries
    return out


def _compare(part: str, like: Any, saved: list[dict[str, Any]], step: int) -> None:
    """Raise ValueError at the first leaf where `like` differs from the checkpoint."""
    ours = [(p, *_describe(x)) for p, x in _leaves(like, part)]
    theirs = [(e["path"], e["shape"], e["dtype"]) for e in saved]
    for (p1, s1, d1), (p2, s2, d2) in zip(ours, theirs, strict=False):
        if p1 != p2:
            raise ValueError(
                f"restore: step {step}: {part} structure differs at {p1!r}: the "
                f"checkpoint has {p2!r} there (shape {tuple(s2)}, {d2})"
            )
        if s1 != s2 or d1 != d2:
            raise ValueError(
                f"restore: step {step}: {p1} is shape {tuple(s2)} {d2} in the checkpoint "
                f"but shape {tuple(s1)} {d1} in {part}_like"
            )
    if len(ours) != len(theirs):
        longer, where = (
            (ours, f"{part}_like") if len(ours) > len(theirs) else (theirs, "checkpoint")
        )
        first = longer[min(len(ours), len(theirs))]
        raise ValueError(
            f"restore: step {step}: {part} structure differs at {first[0]!r}: only the "
            f"{where} has it (shape {tuple(first[1])}, {first[2]}); "
            f"{len(theirs)} leaves saved, {len(ours)} given"
        )


# --------------------------------------------------------------------------
# Directory handling.

_STEP = re.compile(r"^\d+$")


def _empty_to_json(tree: Any) -> Any:
    """A tree without leaves (None, (), {}, nested containers) as JSON."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {"dict": {str(k): _empty_to_json(v) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        return {
            type(tree).__name__ if type(tree) in (list, tuple) else "tuple": [
                _empty_to_json(v) for v in tree
            ]
        }
    return None  # another empty pytree node: restored as None


def _empty_from_json(data: Any) -> Any:
    if not isinstance(data, dict) or len(data) != 1:
        return None
    ((kind, value),) = data.items()
    if kind == "dict" and isinstance(value, dict):
        return {k: _empty_from_json(v) for k, v in value.items()}
    if kind in ("list", "tuple") and isinstance(value, list):
        items = [_empty_from_json(v) for v in value]
        return items if kind == "list" else tuple(items)
    return None


def _check_directory(directory: str | os.PathLike[str]) -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path, got {directory!r}")
    return Path(directory).absolute()


def _check_step(step: Any, what: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {step!r}")
    if step < 0:
        raise ValueError(f"{what} must be >= 0, got {step}")
    return int(step)


def _meta_file(step_dir: Path) -> Path:
    return step_dir / _META / "metadata"


def all_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The complete steps saved in `directory`, ascending ([] if there are none).

    A step being written, or left behind by a process killed while writing, is
    not complete and is not listed.

    Example:
        >>> import tempfile
        >>> from cadence import checkpoint
        >>> checkpoint.all_steps(tempfile.mkdtemp())
        []
    """
    root = _check_directory(directory)
    if not root.is_dir():
        return []
    steps = []
    for child in root.iterdir():
        # Orbax renames a step's temporary directory to the bare number only
        # once every item is written; the metadata file must be there too.
        if _STEP.match(child.name) and child.is_dir() and _meta_file(child).is_file():
            steps.append(int(child.name))
    return sorted(steps)


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The latest complete step in `directory`, or None.

    Example:
        >>> import tempfile
        >>> from cadence import checkpoint
        >>> checkpoint.latest_step(tempfile.mkdtemp()) is None
        True
    """
    steps = all_steps(directory)
    return steps[-1] if steps else None


def _orbax_manager(root: Path, keep: int | None) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        # A step left half-written by a killed process is removed on the next
        # save; it was never listed as complete.
        cleanup_tmp_directories=True,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(root, item_names=(*_PARTS, _META), options=options)


# --------------------------------------------------------------------------
# Save.


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


def _save_with(
    manager: Any,
    root: Path,
    step: int,
    params: Any,
    opt_state: Any,
    optimizer: Any,
    extra: Any,
) -> Path:
    import orbax.checkpoint as ocp

    step = _check_step(step)
    if (root / str(step)).exists():
        raise ValueError(f"save: step {step} already exists in {root}")
    trees = {"params": params, "opt_state": opt_state, "extra": extra}
    meta = {
        "format": "cadence.checkpoint",
        "format_version": FORMAT_VERSION,
        "step": step,
        "optimizer": _optimizer_config(optimizer),
        "has_extra": extra is not None,
        "leaves": _manifest(trees),
        "empty": {part: _empty_to_json(t) for part, t in trees.items() if not jax.tree.leaves(t)},
    }
    json.dumps(meta)  # fail here, before anything is written, if it is not JSON
    # orbax refuses items without arrays; their (empty) structure is in the meta.
    items = {part: ocp.args.StandardSave(t) for part, t in trees.items() if jax.tree.leaves(t)}
    args = ocp.args.Composite(**items, **{_META: ocp.args.JsonSave(meta)})
    # force: orbax would otherwise skip (silently) a step below its latest.
    if not manager.save(step, args=args, force=True):
        raise RuntimeError(f"save: orbax declined to save step {step} in {root}")
    manager.wait_until_finished()
    return root / str(step)


def save(
    directory: str | os.PathLike[str],
    step: int,
    params: Any,
    opt_state: Any,
    optimizer: Any = None,
    extra: Any = None,
) -> Path:
    """Save a training step atomically; return the step's directory.

    The step is written under a temporary name and renamed when complete, so
    a process killed while saving leaves the previous steps intact and no
    half-written step that `latest_step` or `restore` would pick up.

    Args:
        directory: the checkpoint directory (created if missing).
        step: the step number, >= 0; it must not exist yet.
        params: the parameters (a pytree of arrays).
        opt_state: the optimizer state (a pytree of arrays).
        optimizer: the cadence optimizer, whose config (with its schedules) is
            saved so `restore` can rebuild it.
        extra: any other pytree of arrays and numbers to keep with the step
            (a data position, a PRNG key).

    Returns:
        The step's directory.

    Raises:
        ValueError: if the step already exists.
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
    root = _check_directory(directory)
    manager = _orbax_manager(root, keep=None)
    try:
        return _save_with(manager, root, step, params, opt_state, optimizer, extra)
    finally:
        manager.close()


# --------------------------------------------------------------------------
# Restore.


def _read_meta(step_dir: Path, step: int) -> dict[str, Any]:
    path = _meta_file(step_dir)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"restore: step {step}: {path} is missing") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"restore: step {step}: {path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != "cadence.checkpoint":
        raise ValueError(f"restore: step {step}: {path} is not a cadence checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"restore: step {step}: {path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"restore: step {step}: {path} has format version {version}; this "
            f"cadence reads up to {FORMAT_VERSION}: upgrade cadence to read it"
        )
    leaves = meta.get("leaves")
    if not isinstance(leaves, dict) or set(leaves) != set(_PARTS):
        raise ValueError(f"restore: step {step}: {path} has a malformed leaf manifest")
    return meta


def _abstract(like: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs for `like`, placed on `shardings` (or like's own shardings)."""

    def one(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        shape, dtype = _describe(x)
        if sharding is None and isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=sharding)

    if shardings is None:
        return jax.tree.map(lambda x: one(x, None), like)
    return jax.tree.map(one, like, shardings)


def _from_manifest(entries: list[dict[str, Any]]) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(tuple(e["shape"]), np.dtype(e["dtype"])) for e in entries]


def _verify(part: str, tree: Any, entries: list[dict[str, Any]], step: int, where: Path) -> None:
    """Check every restored leaf against the manifest entry with the same path.

    Paths, not positions: a raw restore turns named tuples into dicts, whose
    leaves flatten in another order.
    """
    by_path = {e["path"]: e for e in entries}
    got = _leaves(tree, part)
    if len(got) != len(entries):
        raise ValueError(
            f"restore: step {step}: {where} holds {len(got)} arrays, its manifest {len(entries)}"
        )
    for path, leaf in got:
        entry = by_path.get(path)
        if entry is None:
            raise ValueError(f"restore: step {step}: {where} holds {path}, its manifest does not")
        expected = entry.get("sha256")
        digest = None if expected is None else _digest(leaf)
        if digest is not None and digest != expected:
            raise ValueError(
                f"restore: step {step}: {path} does not match its checksum: the array "
                f"files under {where} are corrupted"
            )


def restore(
    directory: str | os.PathLike[str],
    step: int | None = None,
    params_like: Any = None,
    opt_state_like: Any = None,
    shardings: Any = None,
) -> Restored:
    """Restore a saved step (the latest complete one by default).

    The optimizer is rebuilt from the saved config; when `opt_state_like` is
    not given, the state's structure comes from that optimizer
    (``jax.eval_shape(optimizer.init, params)``), so a checkpoint alone is
    enough to resume. Arrays are placed directly on `shardings` (a dict with
    optional ``"params"`` and ``"opt_state"`` trees of shardings), or on the
    shardings of the ``*_like`` arrays, without first gathering them on one
    device.

    Every leaf is checked against the checkpoint's manifest: a structure that
    differs raises naming the first differing path, and bytes that differ from
    what was saved raise rather than being returned.

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
        ValueError: a structure mismatch, a corrupted or truncated file, or a
            checkpoint written by a newer format version.

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
    import orbax.checkpoint as ocp

    root = _check_directory(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"restore: no checkpoint directory {root}")
    steps = all_steps(root)
    if step is None:
        if not steps:
            raise FileNotFoundError(f"restore: no complete checkpoint step in {root}")
        step = steps[-1]
    step = _check_step(step)
    step_dir = root / str(step)
    if step not in steps:
        if step_dir.is_dir():
            meta_file = _meta_file(step_dir)
            raise FileNotFoundError(f"restore: step {step} is incomplete: {meta_file} is missing")
        raise FileNotFoundError(
            f"restore: step {step} not found in {root}; steps there: {steps or 'none'}"
        )
    meta = _read_meta(step_dir, step)
    leaves = meta["leaves"]

    optimizer = None
    if meta.get("optimizer") is not None:
        from cadence import optimizers as O

        try:
            optimizer = O.from_config(meta["optimizer"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"restore: step {step}: the saved optimizer config: {e}") from e

    shardings = dict(shardings or {})
    unknown = sorted(set(shardings) - {"params", "opt_state"})
    if unknown:
        raise ValueError(f"restore: shardings has unknown keys {unknown}")

    # Reading needs no manager: a plain checkpointer reads one item directory,
    # and never touches another process's step in progress.
    reader = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:

        def load(part: str, like: Any) -> Any:
            if not leaves[part]:
                # orbax stores no item for a tree without arrays: rebuild it.
                return like if like is not None else _empty_from_json(meta["empty"].get(part))
            target = None
            if like is not None:
                _compare(part, like, leaves[part], step)
                target = _abstract(like, shardings.get(part))
            where = step_dir / part
            try:
                tree = reader.restore(where, args=ocp.args.StandardRestore(target))
            except Exception as e:  # tensorstore and orbax raise assorted types
                raise ValueError(
                    f"restore: step {step}: cannot read {where} ({type(e).__name__}: {e})"
                ) from e
            _verify(part, tree, leaves[part], step, where)
            return tree

        params = load("params", params_like)
        if opt_state_like is None and optimizer is not None:
            # The optimizer knows its state's structure (named tuples, not the
            # dicts and lists a raw restore gives).
            abstract_params = _abstract(params, shardings.get("params"))
            opt_state_like = jax.eval_shape(optimizer.init, abstract_params)
        opt_state = load("opt_state", opt_state_like)
        extra = load("extra", None) if meta.get("has_extra") else None
    finally:
        reader.close()
    return Restored(step, params, opt_state, optimizer, extra)


# --------------------------------------------------------------------------
# Periodic saving.


class CheckpointManager:
    """Periodic saving with retention, on orbax's `CheckpointManager`.

    Args:
        directory: the checkpoint directory.
        keep: how many of the latest steps to keep (None keeps all).
        every: save only steps that are multiples of `every` (`save` returns
            False for the others); ``force=True`` saves any step.

    Example:
        >>> import tempfile, jax.numpy as jnp
        >>> from cadence import checkpoint, optimizers as O
        >>> opt = O.sgd(0.1)
        >>> params = {"w": jnp.ones(2)}
        >>> state = opt.init(params)
        >>> with checkpoint.CheckpointManager(tempfile.mkdtemp(), keep=2) as m:
        ...     for step in range(0, 50, 10):
        ...         _ = m.save(step, params, state, optimizer=opt)
        ...     m.steps()
        [30, 40]
    """

    def __init__(
        self, directory: str | os.PathLike[str], keep: int | None = None, every: int = 1
    ) -> None:
        if keep is not None:
            keep = _check_step(keep, "keep")
            if keep < 1:
                raise ValueError(f"keep must be >= 1, got {keep}")
        every = _check_step(every, "every")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.directory = _check_directory(directory)
        self.keep = keep
        self.every = every
        self._manager = _orbax_manager(self.directory, keep=keep)

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any,
        optimizer: Any = None,
        extra: Any = None,
        force: bool = False,
    ) -> bool:
        """Save `step` if it is due (or `force`); return whether it was saved."""
        step = _check_step(step)
        if not force and step % self.every:
            return False
        _save_with(self._manager, self.directory, step, params, opt_state, optimizer, extra)
        return True

    def restore(self, step: int | None = None, **kw: Any) -> Restored:
        """`restore` from this manager's directory."""
        return restore(self.directory, step, **kw)

    def steps(self) -> list[int]:
        """The complete steps kept."""
        return all_steps(self.directory)

    def latest_step(self) -> int | None:
        """The latest complete step, or None."""
        return latest_step(self.directory)

    def close(self) -> None:
        """Wait for pending work and release orbax's resources."""
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
