"""`CheckpointManager`: periodic saving with retention."""

from __future__ import annotations

import os
from typing import Any

import jax

from cadence.checkpoint import _layout as L
from cadence.checkpoint._restore import Restored, all_steps, latest_step, restore
from cadence.checkpoint._save import write_step


class CheckpointManager:
    """Periodic saving with retention.

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
            keep = L.check_step(keep, "keep", low=1)
        self.every = L.check_step(every, "every", low=1)
        self.directory = L.check_directory(directory)
        self.keep = keep

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
        step = L.check_step(step)
        if not force and step % self.every:
            return False
        write_step(self.directory, step, params, opt_state, optimizer, extra)
        if self.keep is not None and jax.process_index() == 0:
            for old in self.steps()[: -self.keep]:
                L.remove_step(self.directory, old)
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
        """Nothing to release: every `save` is complete when it returns."""

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
