"""`python -m benchmarks --quick` runs and reports; timings are never checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# One optimizer, one step shape and the other two sections: every library's
# row and every JSON key, in well under a minute.
ARGS = ["--quick", "--optimizers", "adamw", "--only", "a,memory,compile"]
KEYS = {"meta", "options", "bandwidth", "steps", "summary", "memory", "compile", "targets"}


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _native_built() -> bool:
    from cadence.optimizers import _native

    return _native.available()


def _run(tmp_path: Path, args: list[str], extra_path: Path | None = None) -> tuple[str, dict]:
    out = tmp_path / "results.json"
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _row(stdout: str, variant: str) -> str:
    """The case-table row of `variant`: its name, then a time or n/a."""
    row = re.compile(rf"^{re.escape(variant)} {{2,}}(\d|n/a)")
    lines = [ln for ln in stdout.splitlines() if row.match(ln)]
    assert lines, f"no {variant!r} row in:\n{stdout}"
    return lines[0]


def test_quick_run_prints_every_library_and_writes_json(tmp_path):
    stdout, results = _run(tmp_path, ARGS)
    assert KEYS <= set(results)
    variants = ("cadence.step", "cadence.flatten", "cadence", "optax", "optax (no donation)")
    for variant in (*variants, "optax.flatten"):
        assert "n/a" not in _row(stdout, variant)
    torch_rows = [_row(stdout, f"torch ({m})") for m in ("for-loop", "foreach", "fused")]
    if _torch_importable():
        assert not any("n/a" in r for r in torch_rows)
    for header in ("== summary", "== optimizer state", "== compile time", "== targets"):
        assert header in stdout

    steps = results["steps"]
    assert {r["library"] for r in steps} >= {"cadence", "optax", "torch"}
    cadence = next(r for r in steps if r["variant"] == "cadence")
    assert cadence["median_ms"] > 0 and cadence["floor_bytes_per_param"] == 28
    assert {"x_floor", "xla_bytes_per_param", "fusions", "compile_s"} <= set(cadence)
    step = next(r for r in steps if r["variant"] == "cadence.step")
    # One native kernel per leaf where the kernels build (this machine's CI does).
    assert step["custom_calls"] == (1 if _native_built() else 0)
    flat = next(r for r in steps if r["variant"] == "cadence.flatten")
    assert flat["custom_calls"] == step["custom_calls"] and flat["median_ms"] > 0
    assert results["bandwidth"]["a"]["gb_s"] > 0
    assert [s["optimizer"] for s in results["summary"]] == ["adamw"]
    assert results["memory"][0]["cadence"] == pytest.approx(8.0, abs=0.01)
    assert {(r["library"], r["kind"]) for r in results["compile"]} == {
        (lib, kind)
        for lib in ("cadence.step", "cadence.flatten", "cadence", "optax")
        for kind in ("adamw", "chain")
    }
    assert all(r["status"] == "ok" for r in results["compile"])
    assert {t["status"] for t in results["targets"]} <= {"met", "not met", "not measured"}
    # Every step-time and compile target is judged for both cadence paths.
    tags = [t["target"].rsplit("[", 1)[-1] for t in results["targets"] if "[" in t["target"]]
    assert tags.count("step]") == tags.count("flatten]") > 0
    assert results["meta"]["versions"]["jax"]


def test_quick_run_without_torch(tmp_path):
    """A `torch` that fails to import, as on a machine without it: torch rows print n/a."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    args = ["--quick", "--optimizers", "adamw", "--only", "a,memory"]
    stdout, results = _run(tmp_path, args, extra_path=fake)
    assert "torch is not installed" in stdout
    assert "n/a" in _row(stdout, "torch (fused)")
    assert all(r["median_ms"] is None for r in results["steps"] if r["library"] == "torch")
    assert results["memory"][0]["torch"] is None
    assert results["meta"]["settings"]["torch_threads"] is None
    assert results["meta"]["versions"]["torch"] == "not importable"


def test_probes_run_and_report():
    # The XLA probes quoted in benchmarks/README.md, on tiny shapes (in this
    # process: one CPU device like the probes' own runs).
    from benchmarks import probes

    assert probes.siblings().startswith("siblings: (a + b, a * b) compiles to ")
    assert re.fullmatch(
        r"distinct: 8 loops compile in [\d.]+ s when identical, [\d.]+ s when each leaf has "
        r"its own size, [\d.]+ s as slices of one flat array",
        probes.distinct(8),
    )
    assert re.fullmatch(
        r"flat: AdamW over 8 leaves of 1000: per-leaf state [\d.]+ ms/step, compile [\d.]+ s; "
        r"flat state [\d.]+ ms/step, compile [\d.]+ s",
        probes.flat(8, repeats=2),
    )
    assert re.fullmatch(
        r"chunked: AdamW on one leaf of 65,536: XLA's loops [\d.]+ ms; one chunked pass [\d.]+ ms",
        probes.chunked(1 << 16, 1 << 12, repeats=2),
    )
    assert re.fullmatch(
        r"boundary: 8 arrays of 1000 into a jitted call [\d.]+ us each, donated and returned "
        r"[\d.]+ us each; a donated identity with AdamW's signature compiles in "
        r"4 leaves [\d.]+ s; with flatten\(AdamW\)'s in 4 leaves [\d.]+ s",
        probes.boundary(8, (4,), repeats=2),
    )
    with pytest.raises(SystemExit):
        probes.main(["nonsense"])
