"""The checkpoint directory: step folders, their verified metadata, temporaries.

``DIR/<step>/`` is a complete step: it appears only by an atomic rename of a
temporary folder once every file in it is written. Temporaries are named
``DIR/.cadence-tmp-<step>-<host>-<pid>-<random>``: unique to their writer, so
two processes saving into one directory never touch each other's work, and
removable only when provably stale (written on this host by a process that no
longer runs).

``DIR/<step>/meta/metadata`` is JSON with the optimizer's config, the array
manifest and a SHA-256 over all of it, so one flipped character anywhere in it
is caught rather than read as a different learning rate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 2
MAX_STEP = 2**31 - 1  # the optimizers' step counters are int32
PARTS = ("params", "opt_state", "extra")
META = "meta"

_STEP = re.compile(r"^\d+$")
_TMP_PREFIX = ".cadence-tmp-"
# .cadence-tmp-<step or "del">-<host>-<pid>-<hex>; the host may contain "-".
_TMP = re.compile(r"^\.cadence-tmp-(\d+|del)-(.+)-(\d+)-([0-9a-f]+)$")


class Unusable(ValueError):  # noqa: N818 - internal; callers see ValueError
    """A step that is damaged or incomplete (not the caller's mistake)."""


def check_directory(directory: Any, what: str = "directory") -> Path:
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path, got {directory!r}")
    root = Path(directory).absolute()
    if root.exists() and not root.is_dir():
        raise ValueError(f"{what} must be a checkpoint directory; {root} is a file")
    return root


def check_step(step: Any, what: str = "step", low: int = 0) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {step!r}")
    if not low <= step <= MAX_STEP:
        raise ValueError(
            f"{what} must be between {low} and 2**31 - 1 = {MAX_STEP} (the optimizers' "
            f"int32 step count), got {step}"
        )
    return int(step)


def meta_file(step_dir: Path) -> Path:
    return step_dir / META / "metadata"


# --------------------------------------------------------------------------
# Metadata with a checksum.


def _canonical(meta: dict[str, Any]) -> bytes:
    # Parsing and re-serializing is exact for JSON's values (floats
    # round-trip through repr), so the checksum is of what was parsed.
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_meta(meta: dict[str, Any]) -> str:
    """`meta` as JSON text with a ``sha256`` of its canonical form."""
    return json.dumps({**meta, "sha256": hashlib.sha256(_canonical(meta)).hexdigest()})


def read_meta(step_dir: Path, step: int) -> dict[str, Any]:
    """The verified metadata of `step_dir`; `Unusable` if it cannot be trusted."""
    path = meta_file(step_dir)
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"restore: step {step} is incomplete: {path} is missing") from e
    except (OSError, ValueError, RecursionError) as e:
        raise Unusable(f"restore: step {step}: {path} is not valid JSON ({e})") from e
    checksum = meta.pop("sha256", None) if isinstance(meta, dict) else None
    if not isinstance(checksum, str):
        if isinstance(meta, dict) and meta.get("format_version") == 1:
            raise Unusable(
                f"restore: step {step}: {path} is format version 1, whose config has no "
                f"checksum and cannot be verified; save it again with this cadence"
            )
        raise Unusable(f"restore: step {step}: {path} is not a cadence checkpoint's metadata")
    if hashlib.sha256(_canonical(meta)).hexdigest() != checksum:
        raise Unusable(
            f"restore: step {step}: {path} does not match its checksum: the metadata "
            f"(optimizer config, array manifest) is corrupted"
        )
    if meta.get("format") != "cadence.checkpoint":
        raise Unusable(f"restore: step {step}: {path} is not a cadence checkpoint")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise Unusable(f"restore: step {step}: {path} has no valid format_version")
    if version > FORMAT_VERSION:
        raise Unusable(
            f"restore: step {step}: {path} has format version {version}; this "
            f"cadence reads up to {FORMAT_VERSION}: upgrade cadence to read it"
        )
    if meta.get("step") != step:
        raise Unusable(
            f"restore: step {step}: {path} was written for step {meta.get('step')!r}, "
            f"not {step}: the folder was copied or renamed"
        )
    leaves = meta.get("leaves")
    if not isinstance(leaves, dict) or set(leaves) != set(PARTS):
        raise Unusable(f"restore: step {step}: {path} has a malformed leaf manifest")
    return meta


def write_meta(step_dir: Path, meta: dict[str, Any]) -> None:
    path = meta_file(step_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(encode_meta(meta))
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------
# Steps.


def candidate_steps(root: Path) -> list[int]:
    """Numeric folders in `root`, newest first (complete or not, verified or not)."""
    if not root.is_dir():
        return []
    found = [int(c.name) for c in root.iterdir() if _STEP.match(c.name) and c.is_dir()]
    return sorted((s for s in found if s <= MAX_STEP), reverse=True)


def is_complete(root: Path, step: int) -> bool:
    """Whether step `step` has metadata that verifies (arrays are checked at restore)."""
    try:
        read_meta(root / str(step), step)
    except (OSError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------
# Temporaries.


def _host() -> str:
    """This machine's name, and its process-id namespace where there is one.

    Containers can share a host name (host networking) but not their process
    ids: the namespace keeps one container from judging another's writers.
    """
    name = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    try:
        return f"{name}.pidns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return name


def temporary_name(kind: str) -> str:
    """A temporary folder name unique to this writer (`kind`: a step or "del")."""
    return f"{_TMP_PREFIX}{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(8)}"


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no harmless liveness probe (os.kill would terminate it)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid we can judge: keep it
    return True


def is_stale(name: str) -> bool:
    """Whether temporary `name` was left by a process of this host that has exited."""
    match = _TMP.match(name)
    if match is None:
        return False
    host, pid = match.group(2), int(match.group(3))
    return host == _host() and pid != os.getpid() and not _alive(pid)


def remove_stale_temporaries(root: Path) -> None:
    """Delete the temporaries of writers that died; leave every other one alone."""
    for child in root.iterdir() if root.is_dir() else ():
        if child.name.startswith(_TMP_PREFIX) and is_stale(child.name):
            shutil.rmtree(child, ignore_errors=True)


def remove_step(root: Path, step: int) -> None:
    """Delete a step so that it is never seen half-deleted: rename, then remove."""
    doomed = root / temporary_name("del")
    try:
        os.rename(root / str(step), doomed)
    except FileNotFoundError:
        return  # already removed by another writer
    shutil.rmtree(doomed, ignore_errors=True)


def fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not supported here (some platforms and file systems)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
