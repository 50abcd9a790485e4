"""`python -m benchmarks.device --dry-run`: every section runs on the CPU and writes the schema.

The GPU run itself cannot run here; this keeps its script from rotting and
checks the pieces whose answers are known on the CPU: the comparison finds no
difference between two runs on one device and flags a perturbed one, the HLO
kernel counter reads GPU-shaped programs, and the Newton–Schulz reference
orthogonalizes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _kernels, _muon, _parity

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"parity", "timing", "muon", "kernels", "compile"}
JAX_ROWS = {"cadence.step", "cadence.flatten", "optax", "optax.flatten"}


def _device_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.device", *args, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device")
    proc = _device_run(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "dry-run.json").read_text()), (out / "dry-run.txt").read_text()


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_section_ran_and_is_in_the_table(dry_run):
    results, text = dry_run
    assert results["mode"] == "dry-run" and results["schema"] == 1
    assert {name: results[name]["status"] for name in SECTIONS} == dict.fromkeys(SECTIONS, "ok")
    for name in SECTIONS:
        assert f"== {name}" in text
    assert "parity: every optimizer within tolerance" in text
    assert results["meta"]["versions"]["jax"] and results["total_s"] > 0


def test_parity_checks_every_optimizer_and_finds_no_difference_on_one_device(dry_run):
    parity = dry_run[0]["parity"]
    names = set(_parity.optimizers_to_check())
    assert {"sgd", "adam", "adamw", "rmsprop", "lion", "adagrad", "chain"} <= names
    checked = {(r["optimizer"], r["path"]) for r in parity["rows"]}
    assert checked == {(n, p) for n in names for p in ("step", "update")}
    for row in parity["rows"]:
        assert row["ok"] and row["max_rel_diff"] <= 1e-7, row
    # The control perturbs the reference's parameters by 1e-3: it must be flagged.
    control = parity["control"]
    assert control["flagged"] and control["max_rel_diff"] > 100 * parity["rtol"]
    assert parity["all_ok"]


def test_timing_has_every_row_against_a_measured_floor(dry_run):
    timing = dry_run[0]["timing"]
    assert timing["stream"]["gb_s"] > 0
    shapes = timing["shapes"]
    assert set(shapes) == {"a", "b", "c", "bf16"}
    for key, shape in shapes.items():
        assert shape["status"] == "ok" and shape["bandwidth"]["gb_s"] > 0, key
        rows = {r["variant"]: r for r in shape["rows"]}
        for variant in JAX_ROWS:
            assert rows[variant]["status"] == "ok", rows[variant]
            assert rows[variant]["median_ms"] > 0 and rows[variant]["x_floor"] > 0
            assert rows[variant]["x_stream"] > 0
        torch_status = {rows[f"torch ({m})"]["status"] for m in ("fused", "foreach")}
        assert torch_status == {"ok" if _torch_importable() else "skipped"}
    assert shapes["bf16"]["floor_bytes_per_param"] == 14


def test_kernels_of_the_many_leaf_step(dry_run):
    kernels = dry_run[0]["kernels"]
    rows = {r["variant"]: r for r in kernels["rows"]}
    assert set(rows) == JAX_ROWS
    assert all(r["kernels"] >= 1 for r in rows.values())
    from cadence.optimizers import _native

    if _native.available():  # on the CPU, cadence's step is one native kernel per leaf
        assert rows["cadence.step"]["custom_calls"] == kernels["leaves"]
    # optax runs at least one loop per leaf.
    assert rows["optax"]["fusions"] >= kernels["leaves"]


def test_kernel_counts_compile_the_step_when_timing_did_not_run():
    from benchmarks import _device_steps, _shapes

    shape = _shapes.Shape("c", "many small leaves", _shapes.many_leaves(3, 10))
    rows = {r["variant"]: r for r in _device_steps.kernel_counts(shape, math.inf, 60.0)}
    assert set(rows) == JAX_ROWS
    assert all(r["kernels"] >= 1 for r in rows.values()), rows
    assert rows["optax"]["custom_calls"] == 0 and rows["optax"]["fusions"] >= 3
    # Past its deadline nothing is compiled, and each row says why.
    late = _device_steps.kernel_counts(shape, 0.0, 60.0)
    assert [r["note"] for r in late] == ["section out of time"] * 4


def test_muon_and_compile_rows(dry_run):
    results = dry_run[0]
    muon = results["muon"]
    from cadence import optimizers as O

    expected = "cadence O.muon" if hasattr(O, "muon") else "local jnp reference"
    assert muon["ns_source"] == expected
    matrices = {r["matrix"] for r in muon["rows"]}
    assert matrices == {"64x64", "128x64", "64x128"}
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in muon["rows"])
    assert {r["variant"] for r in muon["rows"]} >= {"optax.contrib.muon (step)"}
    compile_rows = results["compile"]["rows"]
    assert {r["leaves"] for r in compile_rows} == {4, 16}
    assert all(r["status"] == "ok" for r in compile_rows)


def test_without_an_accelerator_the_full_run_refuses(tmp_path):
    proc = _device_run(tmp_path, "--only", "parity")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no accelerator" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_a_spent_budget_skips_sections_and_says_so(tmp_path):
    proc = _device_run(tmp_path, "--dry-run", "--budget", "4", "--only", "parity,compile")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "dry-run.json").read_text())
    for name in ("parity", "compile"):
        section = results[name]
        assert section["status"] == "skipped" and section["budget_s"] < 5
        assert section["note"] == "the run's time budget is spent"
    assert results["timing"] == {"status": "skipped", "note": "not in --only"}


def test_no_torch_leaves_torch_out(tmp_path):
    proc = _device_run(tmp_path, "--dry-run", "--no-torch", "--only", "kernels")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "dry-run.json").read_text())
    assert results["meta"]["torch_device"] is None
    assert results["meta"]["torch_note"] == "torch is not importable: its rows are skipped"
    assert results["meta"]["versions"]["torch"] == "not importable"


def test_a_failing_section_is_recorded_and_the_next_one_runs():
    from benchmarks import device

    def broken(out, deadline):
        out["partial"] = 1
        raise RuntimeError("boom")

    def fine(out, deadline):
        out["value"] = 2

    results, report, start = {}, device.Report(), time.monotonic()
    device._section("first", broken, results, 60.0, start, start + 60.0, report)
    device._section("second", fine, results, 60.0, start, start + 60.0, report)
    assert results["first"]["status"] == "error" and results["first"]["partial"] == 1
    assert results["first"]["error"] == "RuntimeError: boom"
    assert results["second"]["status"] == "ok" and results["second"]["value"] == 2
    assert "error: RuntimeError: boom" in report.lines


def test_difference_is_relative_to_the_leaf_and_flags_mismatches():
    a = {"w": np.array([1.0, -2.0, 4.0], np.float32), "n": np.array(3, np.int32)}
    assert _parity.difference(a, a) == (0.0, "")
    b = {"w": a["w"] * np.float32(1 + 1e-3), "n": a["n"]}
    diff, leaf = _parity.difference(b, a)
    assert diff == pytest.approx(1e-3, rel=1e-3) and leaf == "['w']"
    assert _parity.difference(a | {"n": np.array(4, np.int32)}, a) == (math.inf, "['n']")
    nan = {"w": np.array([1.0, np.nan, 4.0], np.float32), "n": a["n"]}
    assert _parity.difference(nan, a)[0] == math.inf
    assert _parity.difference(nan, nan)[0] == 0.0
    with pytest.raises(ValueError, match="different structures"):
        _parity.difference({"w": a["w"]}, a)


# A GPU program as XLA prints it: a command buffer (one CUDA graph) holding two
# fusions, a cuBLAS call outside it, a while loop whose body launches one
# fusion, and fused and reduction computations that are code inside kernels.
GPU_HLO = """HloModule jit_step, is_scheduled=true

%fused_computation (param_0: f32[1000]) -> f32[1000] {
  %param_0 = f32[1000]{0} parameter(0)
  ROOT %multiply.1 = f32[1000]{0} multiply(%param_0, %param_0)
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%command_buffer (p0: f32[1000], p1: f32[1000]) -> (f32[1000], f32[1000]) {
  %p0 = f32[1000]{0} parameter(0)
  %p1 = f32[1000]{0} parameter(1)
  %loop_fusion = f32[1000]{0} fusion(%p0), kind=kLoop, calls=%fused_computation
  %loop_fusion.1 = f32[1000]{0} fusion(%p1), kind=kLoop, calls=%fused_computation
  ROOT %t = (f32[1000]{0}, f32[1000]{0}) tuple(%loop_fusion, %loop_fusion.1)
}

%body (b: (s32[], f32[1000])) -> (s32[], f32[1000]) {
  %b = (s32[], f32[1000]{0}) parameter(0)
  %v = f32[1000]{0} get-tuple-element(%b), index=1
  %i = s32[] get-tuple-element(%b), index=0
  %f = f32[1000]{0} fusion(%v), kind=kLoop, calls=%fused_computation
  ROOT %r = (s32[], f32[1000]{0}) tuple(%i, %f)
}

%cond (c: (s32[], f32[1000])) -> pred[] {
  %c = (s32[], f32[1000]{0}) parameter(0)
  ROOT %k = pred[] constant(false)
}

ENTRY %main.9 (a: f32[1000], b: f32[1000], m: f32[32,32]) -> (f32[1000], f32[1000]) {
  %a = f32[1000]{0} parameter(0)
  %b = f32[1000]{0} parameter(1)
  %m = f32[32,32]{1,0} parameter(2)
  %call = (f32[1000]{0}, f32[1000]{0}) call(%a, %b), to_apply=%command_buffer
  %gemm = (f32[32,32]{1,0}, s8[0]{0}) custom-call(%m, %m), custom_call_target="__cublas$gemm"
  %init = (s32[], f32[1000]{0}) tuple(%k0, %a)
  %w = (s32[], f32[1000]{0}) while(%init), condition=%cond, body=%body
  %red = f32[] reduce(%a, %z), dimensions={0}, to_apply=%add
  ROOT %out = (f32[1000]{0}, f32[1000]{0}) tuple(%a, %b)
}
"""


def test_kernel_count_reads_command_buffers_loops_and_calls():
    counts = _kernels.count(GPU_HLO)
    assert counts == {
        "kernels": 5,
        "fusions": 3,
        "custom_calls": 1,
        "copies": 0,
        "other": {"reduce": 1},
        "command_buffers": 1,
    }
    with pytest.raises(ValueError, match="no ENTRY"):
        _kernels.count("HloModule empty\n")


def test_newton_schulz_orthogonalizes_like_torch():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((48, 32)).astype(np.float32)
    # In float32, 5 steps of the quintic put every singular value near 1
    # (torch's coefficients trade exactness for speed: about 0.7 to 1.2).
    s = np.linalg.svd(np.asarray(_muon.newton_schulz(jnp.asarray(g), dtype=jnp.float32)))[1]
    assert 0.6 < s.min() and s.max() < 1.3
    torch = pytest.importorskip("torch")
    reference = getattr(torch.optim, "_muon", None)
    zeropower = getattr(reference, "_zeropower_via_newtonschulz", None)
    if zeropower is None:
        pytest.skip("this torch has no Muon")
    want = zeropower(torch.from_numpy(g), _muon.COEFFS, _muon.NS_STEPS, _muon.EPS).float().numpy()
    got = np.asarray(_muon.newton_schulz(jnp.asarray(g)))
    # Both in bfloat16, rounding after each addmm alike: equal here, but a
    # different matrix-product kernel may round an element otherwise.
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2


def test_setup_script_reports_what_is_importable(tmp_path):
    import jax

    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "DEVICE_SITE": str(tmp_path / "s")}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_setup.sh"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.splitlines()
    assert f"device setup: no wheels in {tmp_path}; checking what is installed" in lines
    for name in ("jax", "numpy", "optax", "optax.contrib", "cadence"):
        assert any(line.split()[:2] == ["ok", name] for line in lines), proc.stdout
    on_cpu = jax.default_backend() == "cpu"
    assert proc.returncode == (1 if on_cpu else 0), proc.stdout + proc.stderr
    if on_cpu:
        assert any(line.split()[:2] == ["MISSING", "accelerator"] for line in lines)
