"""``state_dtype="8bit"``: bitsandbytes' blockwise 8-bit moments, golden vectors and live.

Parity is checked against `tests.reference.eight_bit_cases` (the maps, the
blockwise quantization, 50-update trajectories of Adam8bit and AdamW8bit),
from its golden file always and from bitsandbytes when it is installed. The
quantization is bit-exact. The trajectories are held to 1e-5 of the largest
parameter movement, except with decoupled weight decay, where cadence's
float32 AdamW is itself 1.5e-4 away from torch's (see the cases).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence.optimizers import _native
from cadence.optimizers._quantize import (
    BLOCK,
    MIN_SIZE,
    Quantized,
    dequantize,
    dynamic_map,
    quantize,
)
from tests.optimizers.test_step import native_calls
from tests.reference import eight_bit_cases as C

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())

# Just over bitsandbytes' min_8bit_size: 8-bit state (17 blocks), and a leaf under it.
BIG, SMALL = (17, 256), (100,)


def _params():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.standard_normal(BIG), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(SMALL), jnp.float32),
    }


def _grads(k: int):
    rng = np.random.default_rng(k + 1)
    return {
        "w": jnp.asarray(rng.standard_normal(BIG), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(SMALL), jnp.float32),
    }


@jax.jit
def _trajectory(opt, params, grads):
    def body(carry, g):
        p, s = carry
        return opt.step(g, s, p), None

    (params, state), _ = jax.lax.scan(body, (params, opt.init(params)), grads)
    return params, state


def _run_case(name: str) -> dict[str, np.ndarray]:
    init, grads = C.problem()
    params, _ = _trajectory(C.CASES[name].build(), init, grads)
    return {n: np.asarray(v) for n, v in params.items()}


def _check_trajectory(name: str, ref: dict[str, np.ndarray]) -> None:
    init, _ = C.problem()
    ours = _run_case(name)
    movement = max(np.abs(ref[n] - init[n]).max() for n in ref)
    error = max(np.abs(ours[n] - ref[n]).max() for n in ref) / movement
    tolerance = C.CASES[name].tolerance
    assert error <= tolerance, f"{name}: {error:.3g} of the largest movement > {tolerance}"


# ------------------------------------------------------------------ the maps


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_maps_equal_golden(kind):
    np.testing.assert_array_equal(
        dynamic_map(kind == "signed"), np.asarray(GOLDEN["maps"][kind], np.float32)
    )


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_maps_equal_live_create_dynamic_map(kind):
    pytest.importorskip("bitsandbytes")
    np.testing.assert_array_equal(dynamic_map(kind == "signed"), C.dynamic_maps()[kind])


# ------------------------------------------------------------ quantization


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_quantize_equals_golden(kind):
    x = C.quantize_inputs()[kind]
    q = jax.jit(quantize, static_argnums=1)(x, kind == "signed")
    want = GOLDEN["quantize"][kind]
    np.testing.assert_array_equal(
        np.asarray(q.codes), np.frombuffer(bytes.fromhex(want["codes"]), np.uint8)
    )
    np.testing.assert_array_equal(np.asarray(q.absmax), np.asarray(want["absmax"], np.float32))


@pytest.mark.parametrize("kind", ["signed", "unsigned"])
def test_quantize_and_dequantize_equal_live_bitsandbytes(kind):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    import torch

    rng = np.random.default_rng(7)
    # Values over twelve orders of magnitude, with points on the rounding
    # grid's ties, a short last block and a block of zeros.
    x = np.concatenate(
        [
            np.sign(rng.standard_normal(40 * BLOCK)) * 10.0 ** rng.uniform(-12, 0, 40 * BLOCK),
            np.linspace(-1, 1, 20 * BLOCK),
            np.zeros(BLOCK),
            rng.standard_normal(77),
        ]
    ).astype(np.float32)
    signed = kind == "signed"
    if not signed:
        x = np.abs(x)
    codes, absmax = C.quantize_reference(x, signed)
    q = jax.jit(quantize, static_argnums=1)(x, signed)
    np.testing.assert_array_equal(np.asarray(q.codes), codes)
    np.testing.assert_array_equal(np.asarray(q.absmax), absmax)
    ref = F.dequantize_blockwise(
        torch.tensor(codes),
        absmax=torch.tensor(absmax),
        code=F.create_dynamic_map(signed=signed),
        blocksize=BLOCK,
    ).numpy()
    np.testing.assert_array_equal(np.asarray(jax.jit(dequantize, static_argnums=1)(q, signed)), ref)


@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_is_within_half_a_code_step(signed):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5 * BLOCK + 9).astype(np.float32) * 10.0 ** rng.uniform(-3, 3)
    x = x if signed else x * x
    q = quantize(x, signed)
    back = np.asarray(dequantize(q, signed))
    padded = np.pad(x, (0, 6 * BLOCK - x.size)).reshape(6, BLOCK)
    np.testing.assert_array_equal(np.asarray(q.absmax), np.abs(padded).max(1))
    scale = np.repeat(np.asarray(q.absmax), BLOCK)[: x.size]
    # The widest step between neighbouring codes is 0.0141 (in [0.1, 1] the
    # signed map has 64 codes): at most half of it, plus the grid's 1.5e-5.
    assert np.all(np.abs(back - x) <= (0.00705 + 1.6e-5) * scale)
    assert np.max(np.abs(back - x) / scale) > 1e-3  # it is 8-bit, not exact
    # Quantizing the dequantized values again keeps them (away from zero,
    # where the grid is coarser than the codes).
    again = quantize(back, signed)
    big = np.abs(x) > 1e-3 * scale
    np.testing.assert_array_equal(np.asarray(again.codes)[big], np.asarray(q.codes)[big])


# ------------------------------------------------------------ trajectories


def test_golden_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    assert GOLDEN["meta"]["steps"] == C.STEPS


@pytest.mark.parametrize("name", sorted(C.CASES))
def test_trajectory_matches_golden(name):
    ref = {
        n: np.asarray(v, np.float32).reshape(C.LEAVES[n]) for n, v in GOLDEN["cases"][name].items()
    }
    _check_trajectory(name, ref)


@pytest.mark.parametrize("name", sorted(C.CASES))
def test_trajectory_matches_live_bitsandbytes(name):
    pytest.importorskip("bitsandbytes")
    _check_trajectory(name, C.run_reference(C.CASES[name]))


# ------------------------------------------------------------ state layout


def test_leaves_under_4096_elements_keep_float32_state():
    opt = O.adamw(1e-3, state_dtype="8bit")
    params = {
        "under": jnp.zeros(MIN_SIZE - 1, jnp.bfloat16),
        "at": jnp.zeros((16, MIN_SIZE // 16), jnp.bfloat16),
    }
    state = opt.init(params)
    for buffer in (state.mu, state.nu):
        assert buffer["under"].dtype == jnp.float32 and buffer["under"].shape == (MIN_SIZE - 1,)
        assert isinstance(buffer["at"], Quantized)
        assert buffer["at"].codes.dtype == jnp.uint8
        assert buffer["at"].codes.shape == (16, MIN_SIZE // 16)
        assert buffer["at"].absmax.dtype == jnp.float32
        assert buffer["at"].absmax.shape == (MIN_SIZE // BLOCK,)


def test_state_bytes_per_parameter():
    n = 64 * BLOCK
    state = O.adamw(1e-3, state_dtype="8bit").init({"w": jnp.zeros((64, BLOCK))})
    moments = [state.mu["w"].codes, state.mu["w"].absmax, state.nu["w"].codes, state.nu["w"].absmax]
    total = sum(x.nbytes for x in moments)
    assert total == 2 * (n + 4 * (n // BLOCK))  # a byte per element, 4 per block
    assert total / n <= 2.1
    plain = O.adamw(1e-3).init({"w": jnp.zeros((64, BLOCK))})
    assert plain.mu["w"].nbytes + plain.nu["w"].nbytes == 8 * n


def test_step_equals_update_plus_apply_and_falls_back_to_xla():
    opt = O.adamw(1e-2, weight_decay=0.1, state_dtype="8bit")
    params, state = _params(), opt.init(_params())
    ups, via_update = jax.jit(opt.update)(_grads(0), state, params)
    stepped, via_step = jax.jit(opt.step)(_grads(0), state, params)
    for a, b in zip(
        jax.tree.leaves((optax.apply_updates(params, ups), via_update)),
        jax.tree.leaves((stepped, via_step)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The 8-bit leaf is updated by XLA (no native kernel quantizes by block);
    # the small float32-state leaf keeps its native loop.
    assert native_calls(opt, {"w": params["w"]}) == 0
    assert native_calls(opt, params) == (1 if _native.available() else 0)


def test_update_dequantizes_and_requantizes_inside_one_jitted_program():
    opt = O.adam(1e-2, state_dtype="8bit")
    params = _params()
    state = opt.init(params)
    text = jax.jit(opt.update).lower(_grads(0), state, params).as_text()
    assert "callback" not in text  # no host round trip
    _, new = jax.jit(opt.update)(_grads(0), state, params)
    assert new.mu["w"].codes.dtype == jnp.uint8
    assert not np.array_equal(np.asarray(new.mu["w"].codes), np.asarray(state.mu["w"].codes))


def test_hyperparams_and_config_are_those_of_float32_state():
    eight = O.adamw(1e-2, state_dtype="8bit")
    plain = O.adamw(1e-2)
    params = _params()
    _, s8 = eight.update(_grads(0), eight.init(params), params)
    _, s32 = plain.update(_grads(0), plain.init(params), params)
    assert jax.tree.map(float, O.hyperparams(s8)) == jax.tree.map(float, O.hyperparams(s32))
    assert O.from_config(eight.to_config()) == eight
    assert eight.to_config()["state_dtype"] == "8bit"


def test_other_rules_store_their_moments_in_8_bits():
    params = {"w": jnp.ones(BIG)}
    cases = {
        O.sgd(0.1, momentum=0.9, state_dtype="8bit"): ["momentum_buffer"],
        O.rmsprop(0.01, momentum=0.9, centered=True, state_dtype="8bit"): [
            "square_avg",
            "grad_avg",
            "momentum_buffer",
        ],
        O.adagrad(0.1, state_dtype="8bit"): ["sum"],
        O.lion(1e-3, state_dtype="8bit"): ["mu"],
        O.adam(1e-3, amsgrad=True, state_dtype="8bit"): ["mu", "nu", "nu_max"],
        O.nadam(1e-3, state_dtype="8bit"): ["mu", "nu"],
        O.muon(0.02, ns_dtype=None, state_dtype="8bit"): ["momentum_buffer"],
    }
    for opt, names in cases.items():
        state = opt.init(params)
        for name in names:
            assert isinstance(getattr(state, name)["w"], Quantized), (opt, name)
        ups, state = jax.jit(opt.update)({"w": jnp.full(BIG, 0.5)}, state, params)
        assert np.all(np.isfinite(np.asarray(ups["w"]))), opt


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: O.sgd(0.1, state_dtype="8bit"), "keeps none"),
        (lambda: O.adafactor(state_dtype="8bit"), "keeps none"),
        (lambda: O.adafactor(state_dtype={"row_var": "8bit"}), "not a moment"),
    ],
)
def test_8bit_without_moments_is_refused(build, match):
    with pytest.raises(ValueError, match=f"state_dtype.*{match}"):
        build()


def test_flatten_refuses_8bit_state():
    with pytest.raises(TypeError, match="8-bit"):
        O.flatten(O.adamw(1e-3, state_dtype="8bit"))


# ------------------------------------------------------------ checkpoint, sharding


def test_checkpoint_resume_is_exact(tmp_path):
    opt = O.adamw(1e-2, weight_decay=0.1, state_dtype="8bit")
    step = jax.jit(opt.step)
    params = _params()
    state = opt.init(params)
    through = (params, state)
    for k in range(4):
        through = step(_grads(k), through[1], through[0])
        if k == 1:
            checkpoint.save(tmp_path, 2, through[0], through[1], optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    assert isinstance(restored.opt_state.mu["w"], Quantized)
    resumed = (restored.params, restored.opt_state)
    for k in range(2, 4):
        resumed = step(_grads(k), resumed[1], resumed[0])
    for a, b in zip(jax.tree.leaves(through), jax.tree.leaves(resumed), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_SHARDED = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from cadence import optimizers as O
specs = {"rows": P("data", None), "cols": P(None, "model"), "b": P()}
rng = np.random.default_rng(0)
host = {"rows": rng.standard_normal((64, 256)), "cols": rng.standard_normal((128, 64)),
        "b": rng.standard_normal(10)}
host = {k: jnp.asarray(v, jnp.float32) for k, v in host.items()}
def like(x, mesh, spec):
    return x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim)
grads = {k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in host.items()}
opt = O.adamw(1e-2, weight_decay=0.1, state_dtype="8bit")
step = jax.jit(opt.step)
q1, t1 = step(grads, opt.init(host), host)
q2, t2 = step(grads, t1, q1)
results = {}
for kind in (AxisType.Auto, AxisType.Explicit):
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind, kind))
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
    state = opt.init(params)
    out = {k: [like(state.mu[k].codes, mesh, specs[k]), like(state.mu[k].absmax, mesh, P())]
           for k in ("rows", "cols")}
    g = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in grads.items()}
    p1, s1 = step(g, state, params)
    p2, s2 = step(g, s1, p1)
    same = all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
               for a, b in zip(jax.tree.leaves((p2, s2)), jax.tree.leaves((q2, t2))))
    kept = all(like(s2.nu[k].codes, mesh, specs[k]) for k in ("rows", "cols"))
    results[str(kind)] = {"placed": out, "same": same, "kept": kept}
print(json.dumps(results))
"""


def test_state_shards_like_the_parameters_on_8_devices():
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.splitlines()[-1])
    assert len(results) == 2  # Auto and Explicit mesh axes
    for out in results.values():
        # Codes are laid out like their parameter; the absmax (4 bytes per
        # 256 elements) is replicated.
        assert out["placed"] == {"rows": [True, True], "cols": [True, True]}
        # Sharded steps give the one-device numbers, bit for bit, and keep the layout.
        assert out["same"] and out["kept"]


def test_works_inside_partition_and_chain():
    params = {"enc": {"w": jnp.ones(BIG)}, "b": jnp.ones(10)}
    g = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    for opt in (
        O.partition(
            {"m": O.adamw(1e-2, state_dtype="8bit"), "rest": O.sgd(0.1)},
            O.rules(("m", "**", 2), ("rest",)),
        ),
        O.chain(O.clip_by_global_norm(1.0), O.adamw(1e-2, state_dtype="8bit")),
    ):
        state = opt.init(params)
        ups, via_update = jax.jit(opt.update)(g, state, params)
        stepped, via_step = jax.jit(opt.step)(g, state, params)
        for a, b in zip(
            jax.tree.leaves((optax.apply_updates(params, ups), via_update)),
            jax.tree.leaves((stepped, via_step)),
            strict=True,
        ):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        codes = [x for x in jax.tree.leaves(via_step) if x.dtype == jnp.uint8]
        assert len(codes) == 2  # mu and nu of the one large leaf
