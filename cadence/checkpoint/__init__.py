"""Checkpoints of training state on orbax-checkpoint, with exact resume.

A checkpoint step is one directory, ``DIR/<step>``. It is assembled under a
temporary name unique to the process writing it and renamed when complete,
so a process killed mid-save, or another process saving into the same
directory, never costs a step whose `save` returned. It holds:

- ``params``, ``opt_state`` and (if given) ``extra``, in orbax's standard
  array format, each process writing its own shards; framework wrappers
  (flax NNX's Variables) are stored as the arrays they hold;
- ``meta``: JSON with the format version, the optimizer's config (with its
  schedules) so the run can be rebuilt from the checkpoint alone, a manifest
  of every array leaf (path, shape, dtype and a SHA-256 of its bytes), and a
  SHA-256 of all of it. `restore` checks both, so a corrupted file or a
  changed learning rate is never returned as good data.

Because the optimizer's step count and schedules live in its state, restoring
the state resumes the learning-rate schedule exactly where it stopped.
"""

from __future__ import annotations

from cadence.checkpoint._layout import FORMAT_VERSION, MAX_STEP
from cadence.checkpoint._manager import CheckpointManager
from cadence.checkpoint._restore import Restored, all_steps, latest_step, restore
from cadence.checkpoint._save import save

__all__ = [
    "FORMAT_VERSION",
    "MAX_STEP",
    "CheckpointManager",
    "Restored",
    "all_steps",
    "latest_step",
    "restore",
    "save",
]
