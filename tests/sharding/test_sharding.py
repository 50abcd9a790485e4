"""Optimizer state on a device mesh: placement, compiled collectives, ZeRO-1, multi-process.

The multi-device checks run in fresh processes with 8 CPU devices
(`tests.sharding.worker`): this process has already started jax with one.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from cadence import optimizers as O
from cadence.optimizers._sharding import zero_spec

ROOT = Path(__file__).resolve().parents[2]
# worker.OPTIMIZERS and worker.MATRIX_OPTIMIZERS
NAMES = (
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "adagrad",
    "lion",
    "chain",
    "nadam",
    "adafactor",
    "muon",
    "adopt",
    "lamb",
    "lars",
    "asgd",
    "rprop",
)
COLLECTIVES = ("all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def run_worker(command: str, timeout: float = 240) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tests.sharding.worker", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def spmd() -> dict:
    return run_worker("spmd")


@pytest.fixture(scope="module")
def zero() -> dict:
    return run_worker("zero")


# --------------------------------------------------------------------------
# A data x model mesh (2 x 4), parameters sharded over both axes.


def test_every_optimizer_is_checked(spmd):
    assert set(NAMES) <= set(spmd)


# Under a plain jax.jit(opt.init) with Auto mesh axes the parameters' layout
# is unknown to init, and a buffer of another shape cannot be tied to its
# parameter's by shard_alike: Adafactor's row and column moments come out
# replicated there (eagerly, and with out_shardings, they follow).
REPLICATED_UNDER_JIT = {
    "adafactor": sorted(
        f".{buffer}['{leaf}']: P() != {spec}"
        for buffer, leaf, spec in [
            ("row_var", "w1", "P('data', None)"),
            ("row_var", "w2", "P('model', None)"),
            ("col_var", "w1", "P(None, 'model')"),
            ("col_var", "w2", "P(None, 'data')"),
        ]
    )
}


@pytest.mark.parametrize("name", NAMES)
def test_state_has_the_parameters_shardings_however_init_runs(spmd, name):
    r = spmd[name]
    # eager, jax.jit(opt.init), and jit(opt.init, out_shardings=state_shardings)
    placement = dict(r["placement"])
    jit = placement.pop("jit")
    assert placement == {"eager": [], "eval_shape": []}
    # (Each mismatch is reported by both checks: state_shardings' and the
    # worker's own rule.)
    assert sorted(set(jit)) == REPLICATED_UNDER_JIT.get(name, [])
    assert r["bare_vs_arrays"]  # state_shardings from shardings == from arrays
    assert r["abstract_structure"]  # eval_shape(opt.init) has the state's structure


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"muon"}))
def test_compiled_step_gathers_nothing(spmd, name):
    found = spmd[name]["collectives"]
    assert {k: found[k] for k in COLLECTIVES} == dict.fromkeys(COLLECTIVES, [])
    if name in ("adafactor", "lamb", "lars"):
        # Whole-leaf reductions: the parameter's and the update's RMS, the
        # row and column means of g² (LAMB's and LARS's trust ratios: the
        # norms of the parameter and of the update or gradient, and LAMB's
        # global gradient norm), each an all-reduce of partial sums.
        assert found["all-reduce"]
        return
    if name == "chain":
        # clip_by_global_norm: one all-reduce of the 4 per-leaf sums of squares.
        assert [op.split("{")[0] for op in found["all-reduce"]] == ["f32[4]"]
    else:
        assert found["all-reduce"] == []


def test_muon_gathers_each_matrix_for_newton_schulz(spmd):
    # Newton-Schulz multiplies whole matrices: XLA gathers their shards (the
    # state itself stays split, as the layout test checks).
    gathered = {op.split("{")[0] for op in spmd["muon"]["collectives"]["all-gather"]}
    assert gathered and gathered <= {"f32[16,8]", "f32[8,16]", "f32[8,8]"}


@pytest.mark.parametrize("name", NAMES)
def test_step_keeps_the_layout_and_matches_one_device(spmd, name):
    assert spmd[name]["layout_kept"] == []
    assert spmd[name]["max_diff"] < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_step_on_a_mesh_is_xla_and_gathers_nothing(spmd, name):
    r = spmd[name]
    # No native kernel with several devices (XLA would gather its operands):
    # the same program and collectives as update + apply.
    assert r["step_native_calls"] == 0
    assert r["step_collectives"] == r["collectives"]
    assert r["step_vs_update"] == 0.0


@pytest.mark.parametrize("p", ["1.0", "2.0", "3.0", "inf"])
def test_global_norm_costs_one_all_reduce(spmd, p):
    r = spmd["norms"][p]
    # 7 leaves over 5 layouts (both axes, either axis, replicated, a scalar):
    # one collective of one float per leaf, nothing else.
    assert [op.split("{")[0] for op in r["collectives"]["all-reduce"]] == ["f32[7]"]
    assert all(r["collectives"][k] == [] for k in COLLECTIVES)
    # Replicated shards counted once: the value is torch's formula's.
    for key in ("value", "eager", "one_device"):
        assert r[key] == pytest.approx(r["torch_formula"], rel=2e-6), key


def test_global_norm_under_grad_and_vmap(spmd):
    assert spmd["norms"]["grad_diff"] < 1e-6
    assert spmd["norms"]["vmap"] == pytest.approx(spmd["norms"]["vmap_expected"], rel=1e-6)


def test_training_step_on_a_sharded_batch_matches_one_device(spmd):
    assert spmd["train"]["layout_kept"] == []
    assert spmd["train"]["max_diff"] < 1e-5  # matmuls reduce in another order


@pytest.mark.parametrize(
    "name", ["accumulate", "skip_nonfinite", "reduce_on_plateau", "clip_by_value"]
)
def test_wrappers_place_their_state_too(spmd, name):
    assert spmd["wrappers"][name] == {"eager": [], "jit": []}


def test_optax_transformations_inside_a_chain_follow_too(spmd):
    assert spmd["optax_in_chain"] == []


def test_explicit_mesh_axes(spmd):
    assert spmd["explicit"] == {"eager": [], "jit": [], "layout_kept": []}


# --------------------------------------------------------------------------
# ZeRO-1 over an 8-way data axis, replicated parameters.


@pytest.mark.parametrize("name", ["adamw", "chain"])
def test_zero_partitions_the_state_eight_ways(zero, name):
    r = zero[name]
    assert r["placement"] == {"eager": [], "jit": [], "eval_shape": []}
    assert all("'data'" in spec for spec in r["specs"].values()), r["specs"]
    b = r["bytes"]
    assert b["zero_buffers"] * 8 == b["plain_buffers"]
    scalars = b["plain_total"] - b["plain_buffers"]
    assert b["zero_total"] == b["plain_buffers"] // 8 + scalars  # scalars stay replicated


@pytest.mark.parametrize("name", ["adamw", "chain"])
def test_zero_step_updates_shards_and_gathers_the_updates(zero, name):
    r = zero[name]
    assert r["layout_kept"] == []  # parameters replicated, state partitioned
    # One all-gather per parameter update; the state itself is never gathered.
    assert sorted(s.split("{")[0] for s in r["collectives"]["all-gather"]) == [
        "f32[16,32]",
        "f32[32,8]",
        "f32[32]",
        "f32[8]",
    ]
    assert r["collectives"]["all-to-all"] == r["collectives"]["collective-permute"] == []


@pytest.mark.parametrize("name", ["nadam", "adafactor", "muon"])
def test_zero_takes_the_newer_rules(zero, name):
    r = zero[f"more_{name}"]
    assert r["placement"] == r["layout_kept"] == []
    assert r["max_diff"] < 1e-6  # Adafactor's norms summed from slices: 6e-8
    if name == "adafactor":
        # Row moments split over rows, column moments over columns, the
        # one-element placeholders (and the matrices' variance) replicated.
        assert r["specs"][".row_var['w1']"] == "P('data', None)"
        assert r["specs"][".col_var['w1']"] == "P(None, 'data')"
        assert r["specs"][".variance['w1']"] == "P(None, None)"
        assert r["specs"][".row_var['b1']"] == "P(None,)"
    else:
        assert all("'data'" in spec for spec in r["specs"].values()), r["specs"]


def test_zero_numerics_are_unchanged(zero):
    assert zero["adamw"]["bitwise"]
    # With clipping the global norm is summed from slices: rounding differs.
    assert zero["chain"]["max_diff"] < 1e-6


# --------------------------------------------------------------------------
# In this process (one device): the rules themselves.

MESH = AbstractMesh((2, 4), ("data", "model"))


@pytest.mark.parametrize(
    ("shape", "spec", "axis", "expected"),
    [
        ((16, 32), P(), "data", P(None, "data")),  # the largest dimension
        ((32, 16), P(), "data", P("data", None)),
        ((6, 8), P(), "model", P(None, "model")),  # 6 is not divisible by 4
        ((8, 8), P(), "model", P("model", None)),  # ties: the first
        ((3, 5), P(), "data", P(None, None)),  # cannot split: replicated
        ((), P(), "data", P()),
        ((16, 32), P(None, "model"), "data", P(None, ("model", "data"))),
        ((8, 12), P(None, "model"), "data", P(None, "model")),  # 12 / (4 * 2) is not whole
        ((16, 32), P("data"), "data", P("data", None)),  # already split over data
        ((6, 4), None, "data", P("data", P.UNCONSTRAINED)),  # layout unknown
    ],
)
def test_zero_spec(shape, spec, axis, expected):
    assert zero_spec(shape, spec, MESH, axis) == expected


def test_zero_spec_leaves_a_size_one_axis_alone():
    assert zero_spec((8,), P(), AbstractMesh((1, 8), ("data", "model")), "data") == P(None)


def one_device_mesh():
    return jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def test_shard_state_validates():
    mesh = one_device_mesh()
    with pytest.raises(ValueError, match="axis 'model' is not an axis of the mesh"):
        O.shard_state(O.adam(), mesh, axis="model")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        O.shard_state(O.adam(), "mesh")
    with pytest.raises(TypeError, match="gradient transformation"):
        O.shard_state(0.1, mesh)


def test_shard_state_must_be_outermost():
    opt = O.chain(O.clip_by_global_norm(1.0), O.shard_state(O.adam(), one_device_mesh()))
    with pytest.raises(ValueError, match="shard_state must be the outermost transformation"):
        opt.init({"w": jnp.zeros(2)})


def test_shard_state_is_the_wrapped_optimizer_in_state_and_config():
    base = O.chain(O.clip_by_global_norm(1.0), O.adamw(1e-2))
    opt = O.shard_state(base, one_device_mesh())
    params = {"w": jnp.arange(8.0).reshape(4, 2), "b": jnp.ones(2)}
    state = opt.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(base.init(params))
    assert opt.to_config() == base.to_config()
    assert O.hyperparams(state) == O.hyperparams(base.init(params))
    assert isinstance(opt, optax.GradientTransformation)
    assert hash(opt) == hash(O.shard_state(base, one_device_mesh()))
    assert repr(opt).startswith("shard_state(chain(clip_by_global_norm(")
    grads = jax.tree.map(jnp.ones_like, params)
    ours, s = opt.update(grads, state, params)
    theirs, t = base.update(grads, base.init(params), params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ours, theirs))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s, t))
    ours, _ = jax.jit(opt.update)(grads, state, params)
    theirs, _ = jax.jit(base.update)(grads, base.init(params), params)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ours, theirs))


def test_state_shardings_needs_shapes_for_shard_state():
    mesh = one_device_mesh()
    bare = {"w": NamedSharding(mesh, P())}
    with pytest.raises(ValueError, match="needs the parameters' shapes"):
        O.state_shardings(O.shard_state(O.adam(), mesh), bare)
    with pytest.raises(TypeError, match="leaves must be shardings, arrays or ShapeDtypeStructs"):
        O.state_shardings(O.adam(), {"w": "replicated"})


def test_state_shardings_on_one_device_and_on_a_mesh():
    device = SingleDeviceSharding(jax.devices()[0])
    params = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=device)}
    opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(1e-3, amsgrad=True))
    shardings = O.state_shardings(opt, params)
    assert jax.tree.structure(shardings) == jax.tree.structure(jax.eval_shape(opt.init, params))
    assert all(s == device for s in jax.tree.leaves(shardings))

    mesh = one_device_mesh()
    arrays = {"w": jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P("data")))}
    shardings = O.state_shardings(opt, arrays)
    state = jax.jit(opt.init, out_shardings=shardings)(arrays)
    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
        assert x.sharding == s
    assert shardings.inner[1].mu["w"].spec == P("data")
    assert shardings.inner[1].count.spec == P()


def test_init_without_a_mesh_is_unchanged():
    params = {"w": np.ones((2, 3), np.float32), "b": 1.5}
    opt = O.adam(1e-3)
    state = opt.init(params)
    assert state.mu["b"].shape == () and state.mu["w"].shape == (2, 3)
    traced = jax.jit(opt.init)(params)
    assert jax.tree.structure(traced) == jax.tree.structure(state)
    batched = jax.vmap(lambda lr: O.adam(lr).init(params))(jnp.array([1e-3, 1e-2]))
    assert batched.hyperparams["lr"].shape == (2,)


# --------------------------------------------------------------------------
# Two processes, 4 CPU devices each, joined by jax.distributed on loopback.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.sharding.worker", *args],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc, log in zip(procs, logs, strict=True):
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.args[3:]} timed out: {log.read_text()[-3000:]}")
        assert code == 0, f"{proc.args[3:]} failed: {log.read_text()[-3000:]}"


def test_two_processes_train_checkpoint_restart_and_match_one_process():
    tmp = Path(tempfile.mkdtemp(prefix="cadence-multihost-"))
    procs: list[subprocess.Popen] = []
    try:
        shared, single = tmp / "two", tmp / "one"

        def pair(start: int, stop: int, out: Path) -> tuple[list, list]:
            port = str(free_port())
            args = ["train", str(shared), str(out), str(start), str(stop)]
            logs = [tmp / f"{start}-{i}.log" for i in range(2)]
            new = [launch([*args, str(i), port], log) for i, log in enumerate(logs)]
            procs.extend(new)
            return new, logs

        # The single-process 8-device reference runs alongside the first half.
        ref_log = tmp / "reference.log"
        reference = launch(["train", str(single), str(tmp / "ref.npz"), "0", "20"], ref_log)
        procs.append(reference)
        first, logs = pair(0, 10, tmp / "first.npz")
        wait_all(first, logs, timeout=180)
        # Both processes have exited; new ones restore step 10 and go on.
        assert (shared / "10" / "params").is_dir()
        second, logs = pair(10, 20, tmp / "second.npz")
        wait_all(second, logs, timeout=180)
        wait_all([reference], [ref_log], timeout=120)

        with np.load(tmp / "second.npz") as a, np.load(tmp / "ref.npz") as b:
            assert a.files == b.files
            for k in a.files:
                assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
                # gloo sums across processes in another order than one process.
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
