"""Exact resume across processes, crash safety under SIGKILL, concurrent writers."""

from __future__ import annotations

import os
import select
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
TEMPORARY = ".cadence-tmp-"  # how a step being written is named


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
            if any(p.name.startswith(TEMPORARY) for p in tmp_path.iterdir()):
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
    assert not any(p.name.startswith(TEMPORARY) for p in tmp_path.iterdir())


@pytest.mark.skipif(os.name != "posix", reason="select on pipes is POSIX")
def test_two_processes_saving_into_one_directory_lose_no_returned_save(tmp_path):
    # Writer A saves even steps, B odd ones, into the same directory at the
    # same time; every step whose save() returned must be there and readable.
    directory = tmp_path / "shared"
    count = 12
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.checkpoint.worker", "writer", str(directory)]
            + [str(first), str(count)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for first in (0, 1)
    ]
    announced: list[int] = []
    try:
        for w in writers:  # both have imported everything: their saves overlap
            ready, _, _ = select.select([w.stdout], [], [], 180)
            assert ready, "a writer did not start within 180 s"
            assert w.stdout.readline().strip() == "ready", w.stderr.read()[-3000:]
        for w in writers:
            w.stdin.write("go\n")
            w.stdin.flush()
        for w in writers:
            out, err = w.communicate(timeout=240)
            assert w.returncode == 0, err[-3000:]
            announced += [int(line.split()[1]) for line in out.splitlines()]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert sorted(announced) == list(range(2 * count))
    assert checkpoint.all_steps(directory) == list(range(2 * count))
    for step in announced:
        restored = checkpoint.restore(directory, step)
        assert np.all(np.asarray(restored.params["w"]) == step), step
    assert checkpoint.restore(directory).step == 2 * count - 1
    assert not any(p.name.startswith(TEMPORARY) for p in directory.iterdir())


def test_only_provably_stale_temporaries_are_removed(tmp_path):
    from cadence.checkpoint import _layout

    params = {"w": np.ones(2, np.float32)}
    checkpoint.save(tmp_path, 0, params, ())
    # A temporary of a process that has exited, and one of a process that runs.
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **PIPE)
    with subprocess.Popen(
        [sys.executable, "-c", "input()"], stdin=subprocess.PIPE, text=True
    ) as running:
        names = {}
        for label, pid in (("exited", int(exited.stdout)), ("running", running.pid)):
            name = _layout.temporary_name("7").rsplit("-", 2)
            names[label] = f"{name[0]}-{pid}-{name[2]}"
            (tmp_path / names[label]).mkdir()
        # Another host's temporary is never provably stale.
        other_host = f"{TEMPORARY}8-elsewhere-{exited.stdout.strip()}-00ff"
        (tmp_path / other_host).mkdir()
        checkpoint.save(tmp_path, 1, params, ())
        left = {p.name for p in tmp_path.iterdir()}
        running.communicate("\n", timeout=60)
    assert names["exited"] not in left
    assert {names["running"], other_host} <= left
    assert checkpoint.all_steps(tmp_path) == [0, 1]


PIPE = {"capture_output": True, "text": True, "check": True, "timeout": 60}
