"""Exact resume across processes, and crash safety under SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cadence import checkpoint

from . import worker

ROOT = Path(__file__).resolve().parents[2]
N = 7  # 7 % 3 == 1: `accumulate` is stopped mid-accumulation.


def run_worker(*args: str, timeout: float = 240) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.checkpoint.worker", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    names = list(worker.OPTIMIZERS)
    run_worker("run", str(tmp_path), ",".join(names), str(N))
    # The saved states really are mid-way: mid-accumulation, mid-patience.
    acc = checkpoint.restore(tmp_path / "accumulate")
    assert int(acc.opt_state.micro_step) == N % 3
    plateau = checkpoint.restore(tmp_path / "plateau")
    assert 0 < int(plateau.opt_state.num_bad_epochs) < 2
    run_worker("resume", str(tmp_path), ",".join(names), str(N))
    for name in names:
        optimizer = worker.OPTIMIZERS[name]
        params = worker.init_params()
        params, state = worker.train(optimizer, params, optimizer.init(params), 0, 2 * N)
        expected = [np.asarray(x) for x in jax.tree.leaves((params, state))]
        with np.load(tmp_path / f"{name}-resume.npz") as resumed:
            got = [resumed[f"arr_{i}"] for i in range(len(resumed.files))]
        assert len(got) == len(expected), name
        for a, b in zip(got, expected, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), name


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_sigkill_while_saving_loses_nothing_saved_before(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint.worker", "saveloop", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    saved = -1
    try:
        deadline = time.monotonic() + 180
        # Let a few steps complete, then kill the process while a step is
        # being written (its temporary directory exists).
        while saved < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            saved = int(line.split()[1])
        assert saved >= 2, "the saving process did not get going"
        while time.monotonic() < deadline:
            if any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir()):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    steps = checkpoint.all_steps(tmp_path)
    assert steps[: saved + 1] == list(range(saved + 1))
    latest = checkpoint.latest_step(tmp_path)
    assert latest in (saved, saved + 1)
    for step in steps:
        restored = checkpoint.restore(tmp_path, step)
        assert np.all(np.asarray(restored.params["w"]) == step)
    # The directory stays usable: the next save cleans up and succeeds.
    state = restored.optimizer.init(restored.params)
    checkpoint.save(tmp_path, latest + 1, restored.params, state)
    assert checkpoint.latest_step(tmp_path) == latest + 1
    assert not any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())
