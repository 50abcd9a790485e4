"""save / restore / latest_step / CheckpointManager: round trips and refusals."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S
from cadence.checkpoint._layout import encode_meta

# When tensorstore fails to read a corrupted file, orbax's reader leaves a
# callback behind that fires on its closed event loop; Python reports it as
# unraisable during the next test's setup. It is orbax's internal noise, not a
# result: the read error itself is asserted on.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

OPT = O.chain(O.clip_by_global_norm(1.0), O.adamw(S.warmup(S.cosine(1e-2, 50), 5)))


def model(width: int = 3) -> dict:
    return {
        "encoder": {"w": jnp.arange(4.0 * width).reshape(4, width), "b": jnp.zeros(width)},
        "head": [jnp.ones((width, 2), jnp.bfloat16)],
    }


def trained(steps: int = 3):
    params = model()
    state = OPT.init(params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
        updates, state = OPT.update(grads, state, params)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
    return params, state


def same(a, b) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.fixture
def saved(tmp_path):
    params, state = trained()
    extra = {"data_position": 1234, "key": jax.random.PRNGKey(7)}
    checkpoint.save(tmp_path, 3, params, state, optimizer=OPT, extra=extra)
    return tmp_path, params, state, extra


def test_round_trip_from_the_checkpoint_alone(saved):
    directory, params, state, extra = saved
    r = checkpoint.restore(directory)
    assert r.step == 3 and r.optimizer == OPT
    # Raw params come back as dicts and lists; the state gets its named
    # structure from the rebuilt optimizer.
    same(r.params, params)
    same(r.opt_state, state)
    assert int(r.extra["data_position"]) == 1234
    np.testing.assert_array_equal(r.extra["key"], extra["key"])
    assert O.hyperparams(r.opt_state)["lr"] == O.hyperparams(state)["lr"]


def test_round_trip_with_like_trees_and_shardings(saved):
    directory, params, state, _ = saved
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    r = checkpoint.restore(
        directory,
        step=3,
        params_like=abstract,
        opt_state_like=state,
        shardings={"params": jax.tree.map(lambda _: sharding, params)},
    )
    same(r.params, params)
    same(r.opt_state, state)
    assert all(x.sharding == sharding for x in jax.tree.leaves(r.params))


def test_without_optimizer_or_extra(tmp_path):
    params = {"w": jnp.ones(3)}
    checkpoint.save(tmp_path, 0, params, ())
    r = checkpoint.restore(tmp_path)
    assert r.optimizer is None and r.extra is None and r.step == 0
    same(r.params, params)


def test_latest_step_and_steps(tmp_path):
    assert checkpoint.latest_step(tmp_path / "missing") is None
    params, state = trained(1)
    for step in (5, 20, 10):
        checkpoint.save(tmp_path, step, params, state)
    assert checkpoint.all_steps(tmp_path) == [5, 10, 20]
    assert checkpoint.latest_step(tmp_path) == 20
    assert checkpoint.restore(tmp_path).step == 20
    with pytest.raises(ValueError, match="step 10 already exists"):
        checkpoint.save(tmp_path, 10, params, state)


def test_manager_keeps_the_latest_n_and_saves_every_k(tmp_path):
    params, state = trained(1)
    with checkpoint.CheckpointManager(tmp_path, keep=2, every=5) as manager:
        saved = [s for s in range(0, 23) if manager.save(s, params, state, optimizer=OPT)]
        assert saved == [0, 5, 10, 15, 20]
        assert manager.steps() == [15, 20]
        assert manager.save(23, params, state, force=True)
        assert manager.latest_step() == 23 and manager.steps() == [20, 23]
        assert manager.restore(params_like=params).optimizer is None
    with pytest.raises(ValueError, match="keep must be between 1 and"):
        checkpoint.CheckpointManager(tmp_path, keep=0)


# ---------------------------------------------------------------------------
# Refusals.


def test_missing_step_and_missing_directory(saved, tmp_path):
    directory = saved[0]
    with pytest.raises(FileNotFoundError, match=r"step 4 not found .*steps there: \[3\]"):
        checkpoint.restore(directory, 4)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        checkpoint.restore(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint step"):
        checkpoint.restore(tmp_path / "empty")


def test_structure_mismatch_names_the_first_differing_path(saved):
    directory, params, state, _ = saved
    wider = model(width=5)
    with pytest.raises(ValueError, match=r"params/encoder/b is shape \(3,\) float32 in the "):
        checkpoint.restore(directory, params_like=wider)
    renamed = {"encoder": params["encoder"], "decoder": params["head"]}
    with pytest.raises(ValueError, match=r"params structure differs at 'params/decoder/0'"):
        checkpoint.restore(directory, params_like=renamed)
    other_state = O.sgd(0.1, momentum=0.9).init(params)
    with pytest.raises(ValueError, match=r"opt_state structure differs at 'opt_state/"):
        checkpoint.restore(directory, params_like=params, opt_state_like=other_state)
    as_f32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    with pytest.raises(ValueError, match=r"params/head/0 is shape \(3, 2\) bfloat16"):
        checkpoint.restore(directory, params_like=as_f32)


def _data_files(step_dir, part):
    files = [p for p in (step_dir / part).rglob("*") if p.is_file() and "/d/" in p.as_posix()]
    assert files, f"no data files under {step_dir / part}"
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def test_truncated_array_file_is_refused(saved):
    directory = saved[0]
    for target in _data_files(directory / "3", "params"):
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"restore: step 3: cannot read .*/3/params"):
        checkpoint.restore(directory)


def test_corrupted_bytes_are_never_returned_as_good_data(saved):
    directory = saved[0]
    for target in _data_files(directory / "3", "opt_state"):
        data = bytearray(target.read_bytes())
        for i in range(len(data) // 3, len(data), max(1, len(data) // 7)):
            data[i] ^= 0xFF
        target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"restore: step 3: .*opt_state"):
        checkpoint.restore(directory)


def test_deleted_metadata_makes_the_step_incomplete(saved):
    directory = saved[0]
    (directory / "3" / "meta" / "metadata").unlink()
    assert checkpoint.latest_step(directory) is None
    with pytest.raises(FileNotFoundError, match="step 3 is incomplete"):
        checkpoint.restore(directory, 3)


def _edit_meta(directory, step, edit):
    """Rewrite a step's metadata, with a valid checksum: a deliberate edit."""
    path = directory / str(step) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta["sha256"]
    edit(meta)
    path.write_text(encode_meta(meta))


def test_newer_format_version_is_refused(saved):
    directory = saved[0]
    _edit_meta(directory, 3, lambda m: m.update(format_version=checkpoint.FORMAT_VERSION + 1))
    newer = checkpoint.FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=rf"step 3: .*format version {newer}.*upgrade cadence"):
        checkpoint.restore(directory)


def test_garbled_metadata_is_refused(saved):
    directory = saved[0]
    (directory / "3" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(ValueError, match=r"step 3: .*metadata is not valid JSON"):
        checkpoint.restore(directory)


@pytest.mark.parametrize(
    "config",
    [
        {"type": "os.system", "command": "touch /tmp/pwned"},
        {"type": "sgd", "lr": {"__reduce__": ["os.system", ["true"]]}},
        {"type": "sgd", "lr": "__import__('os').system('true')"},
        {"type": "sgd", "lr": {"type": "from_fn", "fn": "lambda t: t"}},
        {"py/object": "subprocess.Popen"},
    ],
)
def test_hostile_optimizer_configs_are_refused(saved, config):
    directory = saved[0]
    _edit_meta(directory, 3, lambda m: m.update(optimizer=config))
    with pytest.raises(ValueError, match="step 3: the saved optimizer config"):
        checkpoint.restore(directory)


def test_bad_arguments(tmp_path):
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match="step must be an int"):
        checkpoint.save(tmp_path, 1.5, params, ())
    with pytest.raises(ValueError, match="step must be between 0 and 2"):
        checkpoint.save(tmp_path, -1, params, ())
    with pytest.raises(TypeError, match="params/w must be an array or a number"):
        checkpoint.save(tmp_path, 1, {"w": "text"}, ())
    with pytest.raises(TypeError, match="optimizer must be a cadence optimizer"):
        checkpoint.save(tmp_path, 1, params, (), optimizer=object())
    assert checkpoint.all_steps(tmp_path) == []
    checkpoint.save(tmp_path, 1, params, ())
    with pytest.raises(ValueError, match="shardings has unknown keys"):
        checkpoint.restore(tmp_path, shardings={"param": None})


# ---------------------------------------------------------------------------
# The metadata is verified like the arrays.


def _meta_path(directory, step):
    return directory / str(step) / "meta" / "metadata"


def test_a_changed_learning_rate_in_the_metadata_is_refused(tmp_path):
    opt = O.adamw(1e-3, weight_decay=0.1)
    params = {"w": jnp.ones(2)}
    checkpoint.save(tmp_path, 3, params, opt.init(params), optimizer=opt)
    path = _meta_path(tmp_path, 3)
    text = path.read_text()
    assert text.count("0.001") == 1
    path.write_text(text.replace("0.001", "0.003"))
    with pytest.raises(ValueError, match=r"step 3: .*metadata does not match its checksum"):
        checkpoint.restore(tmp_path, 3)
    # Nor does it become the latest step, or restore(d)'s answer.
    assert checkpoint.latest_step(tmp_path) is None
    with pytest.raises(ValueError, match="does not match its checksum"):
        checkpoint.restore(tmp_path)


def test_every_flipped_bit_in_the_metadata_is_caught(tmp_path):
    # One bit flipped anywhere (the lowest of each byte: "0.1" -> "0.0",
    # "true" -> "trte", '"' -> '#'): restore raises ValueError or returns
    # exactly what was saved, never a different optimizer or step.
    opt = O.adam(S.warmup(S.cosine(0.1, 8), 2), amsgrad=True)
    params = {"w": jnp.ones(2)}
    checkpoint.save(tmp_path, 5, params, opt.init(params), optimizer=opt, extra={"n": 3})
    path = _meta_path(tmp_path, 5)
    original = path.read_bytes()
    caught = 0
    for i in range(len(original)):
        damaged = bytearray(original)
        damaged[i] ^= 1
        path.write_bytes(bytes(damaged))
        try:
            r = checkpoint.restore(tmp_path, 5)
        except ValueError:
            caught += 1
            continue
        assert (r.step, r.optimizer, int(r.extra["n"])) == (5, opt, 3), chr(original[i])
    path.write_bytes(original)
    assert caught == len(original)  # no flipped bit leaves valid, equal JSON here
    assert checkpoint.restore(tmp_path).optimizer == opt


# ---------------------------------------------------------------------------
# Steps and directories.


@pytest.mark.parametrize("step", [2**31, np.int64(2**40), -1])
def test_steps_outside_the_int32_range_are_refused(tmp_path, step):
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"step must be between 0 and 2\*\*31 - 1"):
        checkpoint.save(tmp_path, step, params, ())
    with pytest.raises(ValueError, match=r"step must be between 0 and 2\*\*31 - 1"):
        checkpoint.restore(tmp_path, step)
    with pytest.raises(ValueError, match=r"every must be between 1 and 2\*\*31 - 1"):
        checkpoint.CheckpointManager(tmp_path, every=2**31)
    assert not any(tmp_path.iterdir())
    checkpoint.save(tmp_path, checkpoint.MAX_STEP, params, ())
    assert checkpoint.latest_step(tmp_path) == 2**31 - 1


def test_a_file_is_not_a_checkpoint_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    for call in (checkpoint.latest_step, checkpoint.all_steps, checkpoint.restore):
        with pytest.raises(
            ValueError, match=r"directory must be a checkpoint directory; .* a file"
        ):
            call(path)
    with pytest.raises(ValueError, match="directory must be a checkpoint directory"):
        checkpoint.save(path, 1, {"w": jnp.ones(2)}, ())


def test_stray_and_damaged_steps_are_skipped_by_latest_step_and_restore(saved):
    directory, params, state, _ = saved
    # A stray numeric folder with a meta file of its own, and a copy of step 3.
    (directory / "90" / "meta").mkdir(parents=True)
    (directory / "90" / "meta" / "metadata").write_text('{"format": "cadence.checkpoint"}')
    (directory / "80").mkdir()
    import shutil

    shutil.copytree(directory / "3", directory / "70")
    assert checkpoint.all_steps(directory) == [3]
    assert checkpoint.latest_step(directory) == 3
    with pytest.warns(RuntimeWarning, match=r"restored step 3, skipping newer steps") as w:
        r = checkpoint.restore(directory)
    assert r.step == 3
    same(r.opt_state, state)
    message = str(w[0].message)
    assert "step 90" in message and "step 80 is incomplete" in message
    assert "step 70: " in message and "written for step 3" in message
    with pytest.raises(ValueError, match="step 70: .*written for step 3"):
        checkpoint.restore(directory, 70)
    with pytest.raises(ValueError, match=r"/80 is in the way: it is not a complete step"):
        checkpoint.save(directory, 80, params, state)


def test_restore_falls_back_over_a_step_with_damaged_arrays(saved):
    directory, params, state, _ = saved
    checkpoint.save(directory, 4, params, state, optimizer=OPT)
    for target in _data_files(directory / "4", "params"):
        target.write_bytes(b"\0" * target.stat().st_size)
    with pytest.warns(RuntimeWarning, match=r"restored step 3, .*step 4: "):
        assert checkpoint.restore(directory).step == 3
    with pytest.raises(ValueError, match="restore: step 4: "):
        checkpoint.restore(directory, 4)
    # A structure mismatch is the caller's mistake: no fallback, no warning.
    with pytest.raises(ValueError, match="params structure differs"):
        checkpoint.restore(directory, params_like={"other": jnp.ones(2)})


@jax.tree_util.register_pytree_with_keys_class
class Box:
    """A framework-style wrapper: a pytree node holding its array as `.value`."""

    def __init__(self, value, tag="param"):
        self.value, self.tag = value, tag

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("value"), self.value),), self.tag

    @classmethod
    def tree_unflatten(cls, tag, children):
        return cls(children[0], tag)


def test_wrapped_arrays_are_stored_pure_and_rewrapped(tmp_path):
    opt = O.sgd(0.1, momentum=0.9)
    pure = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
    state = opt.init(pure)
    wrapped = {k: Box(v) for k, v in pure.items()}
    boxed_state = jax.tree.map(lambda x: Box(x, "state"), state)
    checkpoint.save(tmp_path, 1, wrapped, boxed_state, optimizer=opt)
    r = checkpoint.restore(tmp_path)
    same(r.params, pure)
    same(r.opt_state, state)
    like = {k: Box(jnp.zeros_like(v), "like") for k, v in pure.items()}
    r = checkpoint.restore(tmp_path, params_like=like, opt_state_like=boxed_state)
    assert all(isinstance(r.params[k], Box) and r.params[k].tag == "like" for k in pure)
    same({k: b.value for k, b in r.params.items()}, pure)
    same(r.opt_state, boxed_state)


class Monitor(NamedTuple):
    value: jax.Array
    count: jax.Array


def test_a_state_with_a_field_named_value_is_not_unwrapped(tmp_path):
    extra = {"monitor": Monitor(jnp.float32(2.5), jnp.int32(4)), "box": Box(Monitor(1.0, 2))}
    checkpoint.save(tmp_path, 0, {"w": jnp.ones(2)}, (), extra=extra)
    r = checkpoint.restore(tmp_path)
    assert float(r.extra["monitor"]["value"]) == 2.5 and int(r.extra["monitor"]["count"]) == 4
    assert float(r.extra["box"]["value"]) == 1.0 and int(r.extra["box"]["count"]) == 2
