"""`master_weights`: a float32 copy of low-precision parameters, equal to a float32 run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S

from .examples import grads, params

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4

ADAMW_GROUPS = O.adamw(
    S.warmup(S.cosine(1e-2, 6), 2, init=1e-3),
    weight_decay=0.1,
    groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": 3e-3}},
)


def upcast(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def same(a, b):
    """Bit for bit: equal dtypes, shapes and bytes, leaf by leaf."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), (x, y)


def run(opt, p, *, method="update", steps=STEPS, dtype=None, jit=False):
    """`steps` updates on `examples.grads` rounded to `dtype` (default: the parameters').

    The gradients are then given in the parameters' dtype: a float32 run sees
    the low-precision gradients upcast.
    """
    state = opt.init(p)
    pdtype = jax.tree.leaves(p)[0].dtype
    dtype = dtype or pdtype

    def one(p, state, g):
        if method == "step":
            return opt.step(g, state, p)
        u, state = opt.update(g, state, p)
        return optax.apply_updates(p, u), state

    one = jax.jit(one) if jit else one
    for k in range(steps):
        g = jax.tree.map(lambda x: x.astype(dtype).astype(pdtype), grads(k))
        p, state = one(p, state, g)
    return p, state


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("method", ["update", "step"])
@pytest.mark.parametrize(
    "inner",
    [
        ADAMW_GROUPS,
        O.chain(O.clip_by_global_norm(1.0), O.sgd(0.1, momentum=0.9, nesterov=True)),
        O.accumulate(O.adam(0.01), 2),
        O.partition(
            {"matrices": O.sgd(0.1, momentum=0.9), "rest": O.rmsprop(0.01)},
            O.rules(("matrices", "**", 2), ("rest",)),
        ),
    ],
    ids=["adamw_groups", "chain", "accumulate", "partition"],
)
def test_master_copy_equals_a_float32_run_bit_for_bit(inner, method, dtype):
    low = params(dtype)
    ours, state = run(O.master_weights(inner), low, method=method, dtype=dtype)
    # The float32 run: the same optimizer on the upcast parameters and gradients.
    p32, state32 = run(inner, upcast(low), method=method, dtype=dtype)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p32)
    by_path = {
        "/".join(str(k.key) for k in path): x
        for path, x in jax.tree_util.tree_flatten_with_path(p32)[0]
    }
    assert sorted(state.master) == sorted(by_path)
    same([state.master[k] for k in sorted(by_path)], [by_path[k] for k in sorted(by_path)])
    same(state.inner, state32)
    # The parameters are the master copy's rounding, in their own dtype.
    same(ours, jax.tree.map(lambda x: x.astype(dtype), p32))


def test_master_copy_equals_a_float32_run_under_jit():
    low = params(jnp.bfloat16)
    for method in ("update", "step"):
        ours, state = run(O.master_weights(ADAMW_GROUPS), low, method=method, jit=True)
        p32, _ = run(ADAMW_GROUPS, upcast(low), method=method, dtype=jnp.bfloat16, jit=True)
        same(ours, jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32))
        same(state.master["head/w"], p32["head"]["w"])


def test_small_updates_accumulate_in_the_master_copy():
    # 1e-4 per step is below bfloat16's resolution at 1 (2**-8): plain bfloat16
    # never moves, the master copy does, and the parameter follows it.
    p = {"w": jnp.ones(4, jnp.bfloat16)}
    g = {"w": jnp.ones(4, jnp.bfloat16)}
    plain, wrapped = O.sgd(1e-4), O.master_weights(O.sgd(1e-4))
    sp, sw, pp, pw = plain.init(p), wrapped.init(p), p, p
    for _ in range(100):
        pp, sp = plain.step(g, sp, pp)
        pw, sw = wrapped.step(g, sw, pw)
    assert float(pp["w"][0]) == 1.0
    np.testing.assert_allclose(np.asarray(sw.master["w"]), 0.99, rtol=1e-5)
    assert float(pw["w"][0]) == float(jnp.asarray(0.99, jnp.bfloat16))


def test_float32_parameters_add_no_state_and_change_nothing():
    opt = O.master_weights(ADAMW_GROUPS)
    p = params()
    state = opt.init(p)
    assert state.master == {} and jax.tree.leaves(state.master) == []
    same(state.inner, ADAMW_GROUPS.init(p))
    same(run(opt, p), run(ADAMW_GROUPS, p))
    # Mixed: only the bfloat16 leaf gets a copy.
    mixed = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(3)}
    assert sorted(O.master_weights(O.adam(0.1)).init(mixed).master) == ["a"]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_apply_updates_lands_exactly_on_the_rounded_master_copy(dtype):
    # SGD with lr 1 moves the master copy to any target: m - g. The targets
    # span orders of magnitude either side of the parameters (both signs,
    # zero crossings included) but never below 2**-15 of them (bfloat16;
    # float16: 2**-12): there update + apply_updates is exact. Beyond it,
    # step still is.
    rng = np.random.default_rng(0)
    n = 20000
    span = 3 if dtype == jnp.bfloat16 else 2  # float16 tops out at 65504
    p = jnp.asarray(rng.standard_normal(n) * 10.0 ** rng.uniform(-span, span, n), dtype)
    p32 = np.asarray(p, np.float32)
    bound = 2.0**-15 if dtype == jnp.bfloat16 else 2.0**-12
    ratio = 10.0 ** rng.uniform(np.log10(bound) + 0.01, span, n) * rng.choice([-1, 1], n)
    target = (p32 * ratio).astype(np.float32)
    opt = O.master_weights(O.sgd(1.0))
    state = opt.init(p)._replace(master=O.Leaves({"": jnp.asarray(p32)}))
    g = jnp.asarray(p32 - target, dtype)  # the master copy moves by g upcast, exactly
    u, new = opt.update(g, state, p)
    expected = new.master[""].astype(dtype)
    same(optax.apply_updates(p, u), expected)
    stepped, _ = opt.step(g, state, p)
    same(stepped, expected)
    # Far beyond the bound (1.0 -> 2**-30) only `step` is exact.
    one = jnp.ones(1, dtype)
    far = opt.init(one)._replace(master=O.Leaves({"": jnp.ones(1)}))
    g = jnp.asarray([1.0 - 2.0**-30], jnp.float32).astype(dtype)
    stepped, new = opt.step(g, far, one)
    same(stepped, new.master[""].astype(dtype))


def test_hyperparams_and_init_under_jit_see_through():
    opt = O.master_weights(ADAMW_GROUPS)
    p = params(jnp.bfloat16)
    state = opt.init(p)
    assert float(O.hyperparams(state, "head/w")["weight_decay"]) == pytest.approx(0.1)
    same(jax.jit(opt.init)(p), state)
    shapes = jax.eval_shape(opt.init, p)
    assert shapes.master["head/w"].dtype == jnp.float32


def test_bad_dtypes_are_refused_naming_the_argument(x64):
    for dtype in (jnp.bfloat16, jnp.float16, None):
        with pytest.raises(ValueError, match="master_weights: dtype must be float32 or float64"):
            O.master_weights(O.sgd(0.1), dtype=dtype)
    with pytest.raises(ValueError, match="master_weights: dtype must be a floating dtype"):
        O.master_weights(O.sgd(0.1), dtype=jnp.int32)
    with pytest.raises(TypeError, match="master_weights: dtype must be a dtype"):
        O.master_weights(O.sgd(0.1), dtype=3.0)
    wide = {"encoder": {"w": jnp.ones(2, jnp.float64)}, "b": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match="the parameter at 'encoder/w' is float64, wider than"):
        O.master_weights(O.sgd(0.1)).init(wide)
    # float64 copies of float32 and bfloat16 parameters, under x64.
    state = O.master_weights(O.sgd(0.1), dtype=jnp.float64).init(
        {"a": jnp.ones(2, jnp.float32), "b": jnp.ones(2, jnp.bfloat16)}
    )
    assert {k: v.dtype for k, v in state.master.items()} == {"a": "float64", "b": "float64"}


def test_float64_copies_need_x64():
    with pytest.raises(ValueError, match="dtype float64 needs jax_enable_x64"):
        O.master_weights(O.sgd(0.1), dtype="float64").init(jnp.ones(2, jnp.bfloat16))


def test_update_needs_params_and_matching_grads():
    opt = O.master_weights(O.sgd(0.1))
    p = {"a": jnp.ones(2, jnp.bfloat16)}
    state = opt.init(p)
    with pytest.raises(ValueError, match="master_weights.update: params are required"):
        opt.update(p, state)
    with pytest.raises(ValueError, match="grads have no leaf at 'a'"):
        opt.update({"b": jnp.ones(2, jnp.bfloat16)}, state, p)
    with pytest.raises(TypeError, match="expected a MasterWeightsState"):
        opt.update(p, O.sgd(0.1).init(p), p)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    opt = O.master_weights(ADAMW_GROUPS)
    p0 = params(jnp.bfloat16)
    full, full_state = run(opt, p0, method="step", steps=4)
    half, half_state = run(opt, p0, method="step", steps=2)
    checkpoint.save(tmp_path, 2, half, half_state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    p, state = restored.params, restored.opt_state
    same((p, state), (half, half_state))
    for k in range(2, 4):
        p, state = opt.step(jax.tree.map(lambda x: x.astype(jnp.bfloat16), grads(k)), state, p)
    same((p, state), (full, full_state))


_SHARDED = """
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from cadence import optimizers as O
out = {}
for kind in (AxisType.Auto, AxisType.Explicit):
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(kind, kind))
    row, rep = NamedSharding(mesh, P("model", None)), NamedSharding(mesh, P())
    p = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2).astype(jnp.bfloat16), row),
         "b": jax.device_put(jnp.ones(2), rep)}
    g = jax.tree.map(lambda x: (x * 0.1).astype(x.dtype), p)
    opt = O.master_weights(O.adamw(0.1))
    expected = O.state_shardings(opt, p)
    eager = opt.init(p)
    with jax.set_mesh(mesh):
        jitted = jax.jit(opt.init)(p)
        # (update: under Explicit axes the CPU kernel of Optimizer.step
        # returns replicated arrays, with or without master_weights.)
        new, state = jax.jit(opt.update)(g, eager, p)
    ref_p = jax.tree.map(np.asarray, p)
    ref, ref_state = opt.update(jax.tree.map(np.asarray, g), opt.init(ref_p), ref_p)
    def like(sharding):
        return bool(sharding.is_equivalent_to(row, 2))
    out[str(kind)] = {
        "expected": like(expected.master["w"]), "inner_mu": like(expected.inner.mu["w"]),
        "count": expected.inner.count.spec == P(),
        "eager": like(eager.master["w"].sharding), "jit": like(jitted.master["w"].sharding),
        "stepped": like(state.master["w"].sharding),
        "same": bool(np.array_equal(state.master["w"], ref_state.master["w"])),
    }
print(json.dumps(out))
"""


def test_master_copy_is_sharded_like_its_parameter():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SHARDED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for kind, out in json.loads(result.stdout.splitlines()[-1]).items():
        assert all(out.values()), (kind, out)


def test_demo_options_build_the_mixed_precision_run(monkeypatch):
    from cadence import __main__ as cli
    from cadence import _demo

    seen = {}
    monkeypatch.setattr(_demo, "run", lambda *args, **kwargs: seen.update(kwargs) or 1.0)
    assert cli.main(["demo", "--no-plot", "--dtype", "float16", "--master-weights"]) == 0
    assert seen == {"dtype": "float16", "master_weights": True, "loss_scale": False}
    assert cli.main(["demo", "--no-plot"]) == 0  # `make demo`: float32, no wrappers
    assert seen == {"dtype": "float32", "master_weights": False, "loss_scale": False}
    opt = _demo.make_optimizer(20, master_weights=True, loss_scale=True)
    assert isinstance(opt, O.loss_scale) and isinstance(opt.tx, O.master_weights)
    assert opt.tx.tx == _demo.make_optimizer(20)


def test_inside_partition_and_chain():
    # master_weights inside a partition's label, and last in a chain: the
    # copies are those of the float32 run of the same partition or chain.
    rules = O.rules(("matrices", "**", 2), ("rest",))
    plain = O.partition({"matrices": O.sgd(0.1, momentum=0.9), "rest": O.adam(0.01)}, rules)
    wrapped = O.partition(
        {"matrices": O.master_weights(O.sgd(0.1, momentum=0.9)), "rest": O.adam(0.01)}, rules
    )
    low = params(jnp.bfloat16)
    ours, state = run(wrapped, low, method="step", jit=True)
    p32, _ = run(plain, upcast(low), method="step", dtype=jnp.bfloat16, jit=True)
    master = state.inner["matrices"].master
    assert sorted(master) == ["encoder/w", "head/w"]
    same(master["head/w"], p32["head"]["w"])
    same(ours["encoder"]["w"], p32["encoder"]["w"].astype(jnp.bfloat16))
    chained, _ = run(O.chain(optax.scale(1.0), O.master_weights(O.adam(0.01))), low, jit=True)
    alone, _ = run(O.master_weights(O.adam(0.01)), low, jit=True)
    same(chained, alone)


def test_wrapped_leaves_at_init_plain_at_update():
    # nnx.Optimizer calls init on Variables (paths ending in .../value) and
    # update on the plain arrays: the copies are keyed by the parameter's path.
    from .test_groups_wrapped import Box

    opt = O.master_weights(O.adamw(0.1, groups={"enc/*": {"weight_decay": 0.0}}))
    p = {"enc": {"w": jnp.ones(2, jnp.bfloat16)}, "b": jnp.ones(1, jnp.bfloat16)}
    state = opt.init(jax.tree.map(Box, p))
    assert sorted(state.master) == ["b", "enc/w"]
    g = jax.tree.map(jnp.ones_like, p)
    state = jax.tree.map(
        lambda b: b.get_value() if isinstance(b, Box) else b,
        state,
        is_leaf=lambda x: isinstance(x, Box),
    )
    u, state = opt.update(g, state, p)
    inner = opt.tx
    plain, _ = inner.update(upcast(g), inner.init(upcast(p)), upcast(p))
    same(state.master["enc/w"], optax.apply_updates(upcast(p), plain)["enc"]["w"])
    same(state.master["b"], optax.apply_updates(upcast(p), plain)["b"])
