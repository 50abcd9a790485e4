"""`flatten`: an optimizer's buffers as one vector per dtype, its numbers unchanged.

`flatten(opt)` must give what `opt` gives, bit for bit, by `step` and by
`update`, eagerly and under `jit`, in every configuration (groups, bfloat16
state, mixed dtypes, float64, scalar leaves, behind a clipping `chain`), and
its state must hold `opt`'s buffers raveled and concatenated in tree order,
one vector per dtype. On one CPU with the native kernels, `step` makes one
custom call per run of up to 16 consecutive leaves that share a kernel, a
group and a vector, and updates donated vectors in place. Also checked: the
refusals, `hyperparams`, configs, checkpoints, `state_shardings`, and (in a
process with 8 devices) parameters on a mesh.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence.optimizers import _native
from cadence.optimizers._flatten import FlattenState

from ..sharding.test_sharding import run_worker
from .examples import OPTIMIZERS
from .test_step import _ARRAY_COPY, assert_same, native_calls

# Paths that `OPTIMIZERS["adamw_groups"]` splits into three groups; head/b is a scalar.
SHAPES = {"encoder": {"w": (5, 7), "b": (7,)}, "head": {"w": (7, 3), "b": ()}}


def small(seed=0, dtype=jnp.float32, odd=None):
    """Four leaves of `dtype` (encoder/b of `odd` if given); seed k > 0: step k's grads."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-2, 1)
    out = {
        k: {n: jnp.asarray(rng.standard_normal(s) * scale, dtype) for n, s in d.items()}
        for k, d in SHAPES.items()
    }
    if odd is not None:
        out["encoder"]["b"] = out["encoder"]["b"].astype(odd)
    return out


def many(seed=0):
    """40 leaves of 5 to 11 elements: 20 under b/, then 20 under w/."""
    rng = np.random.default_rng(seed)
    return {
        k: [jnp.asarray(rng.standard_normal(5 + i % 7), jnp.float32) for i in range(20)]
        for k in ("b", "w")
    }


def layers(seed=0):
    """20 leaves alternating between paths */b and */w."""
    rng = np.random.default_rng(seed)
    return [
        {n: jnp.asarray(rng.standard_normal(8), jnp.float32) for n in ("b", "w")} for _ in range(10)
    ]


def run(opt, make, *, method="step", jit=True, steps=3):
    """Params and state after `steps` of `opt` from ``make(0)``, by "step" or "update" + apply."""

    def by_step(g, s, p):
        return opt.step(g, s, p)

    def by_update(g, s, p):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    fn = by_step if method == "step" else by_update
    fn = jax.jit(fn) if jit else fn
    params = make(0)
    state = opt.init(params)
    for k in range(1, steps + 1):
        params, state = fn(make(k), state, params)
    return params, state


def packed(state):
    """An unwrapped state as flatten keeps it: each buffer's leaves raveled and
    concatenated in tree order, one vector per dtype (scalars shared by a group,
    NAdam's ``mu_product``, ASGD's ``eta``: tuples by group, as they are)."""
    fields = {}
    for name, value in state._asdict().items():
        shared = isinstance(value, tuple)
        if name not in ("count", "hyperparams") and value is not None and not shared:
            parts = {}
            for x in jax.tree.leaves(value):
                parts.setdefault(x.dtype.name, []).append(np.ravel(x))
            value = {k: np.concatenate(v) for k, v in parts.items()}
        fields[name] = value
    return FlattenState(type(state)(**fields))


def assert_matches(ours, ref):
    """flatten's (params, state) are the unwrapped optimizer's, bit for bit."""
    (params, state), (ref_params, ref_state) = ours, ref
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    assert_same(params, ref_params)
    expected = packed(ref_state)
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    assert_same(state, expected)


def same_as_unwrapped(opt, make, **how):
    assert_matches(run(O.flatten(opt), make, **how), run(opt, make, **how))


# --------------------------------------------------------------------------
# Construction and layout.


@pytest.mark.parametrize(
    "tx",
    [O.chain(O.adam()), O.clip_by_value(1.0), optax.adam(1e-3), O.flatten(O.adam())],
    ids=["chain", "clip_by_value", "optax", "flatten"],
)
def test_only_cadence_optimizers_can_be_flattened(tx):
    with pytest.raises(TypeError, match="flatten: tx must be a cadence optimizer"):
        O.flatten(tx)


def test_state_is_one_vector_per_buffer_dtype():
    opt = O.adam(1e-3)
    params = small(odd=jnp.bfloat16)
    state = O.flatten(opt).init(params)
    # 35 + 21 + 1 float32 elements in tree order around the bfloat16 encoder/b.
    assert {k: (v.shape, v.dtype) for k, v in state.inner.mu.items()} == {
        "float32": ((57,), jnp.float32),
        "bfloat16": ((7,), jnp.bfloat16),
    }
    assert_matches((params, state), (params, opt.init(params)))
    # The same structure traced and abstractly evaluated.
    assert jax.tree.structure(jax.jit(O.flatten(opt).init)(params)) == jax.tree.structure(state)
    abstract = jax.eval_shape(O.flatten(opt).init, params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )


# --------------------------------------------------------------------------
# The numbers: the unwrapped optimizer's, bit for bit.

# Every configuration by jitted step and eager update; eagerly stepped, a
# few: no buffer, AMSGrad on XLA's slices, native kernels with groups (the
# last one also by jitted update).
# Every optimizer whose buffers are shaped like their parameters (flatten
# refuses the others: `test_factored_buffers_are_refused`).
PACKED = sorted(name for name, opt in OPTIMIZERS.items() if not opt.reduced)
WAYS = [(name, "step", True) for name in PACKED]
WAYS += [(name, "update", False) for name in PACKED]
WAYS += [(name, "step", False) for name in ("sgd", "adam_amsgrad", "adamw_groups")]
WAYS += [("adamw_groups", "update", True)]


@pytest.mark.parametrize(
    "name, method, jit", WAYS, ids=[f"{n}-{m}-{'jit' if j else 'eager'}" for n, m, j in WAYS]
)
def test_same_as_the_unwrapped_optimizer(name, method, jit):
    same_as_unwrapped(OPTIMIZERS[name], small, method=method, jit=jit)


MIXED = functools.partial(small, odd=jnp.bfloat16)
NESTEROV = O.sgd(0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
CENTERED = O.rmsprop(1e-2, momentum=0.9, centered=True, state_dtype=jnp.bfloat16)


@pytest.mark.parametrize(
    "opt, make, method, jit",
    [
        # float32 parameters, bfloat16 vectors: the native kernels' bfloat16 state.
        (O.adamw(1e-2, state_dtype=jnp.bfloat16), small, "step", True),
        # Two vectors; the bfloat16 leaf on XLA's slices, the others native.
        (NESTEROV, MIXED, "step", True),
        (NESTEROV, MIXED, "step", False),
        (NESTEROV, MIXED, "update", False),
        # One bfloat16 vector for both parameter dtypes.
        (CENTERED, MIXED, "step", True),
    ],
    ids=["bf16-state", "mixed-step-jit", "mixed-step-eager", "mixed-update-eager", "mixed-bf16"],
)
def test_bfloat16_state_and_mixed_dtypes(opt, make, method, jit):
    same_as_unwrapped(opt, make, method=method, jit=jit)


def test_float64_under_x64(x64):
    # float64 leaves native, the float32 one (float64 math) on XLA's slices.
    make = functools.partial(small, dtype=jnp.float64, odd=jnp.float32)
    same_as_unwrapped(OPTIMIZERS["adamw_groups"], make)


def test_step_behind_clip_by_global_norm():
    # chain.step hands the clipping coefficient to flatten's step as to the
    # optimizer's: to the native kernel, and to XLA's slices (bfloat16 leaf).
    opt, clip = OPTIMIZERS["adamw_groups"], O.clip_by_global_norm(0.5)
    ours = run(O.chain(clip, O.flatten(opt)), MIXED)
    ref = run(O.chain(clip, opt), MIXED)
    assert_same(ours[1].inner[0], ref[1].inner[0])
    assert_matches((ours[0], ours[1].inner[1]), (ref[0], ref[1].inner[1]))


# --------------------------------------------------------------------------
# Native calls: one per run of up to 16 leaves, in place.

GROUPED = O.adamw(1e-2, groups={"b/*": {"lr": 1e-3}})


@pytest.mark.parametrize(
    "opt, make, expected",
    [
        (O.adamw(1e-2), many, 3),  # 16 + 16 + 8
        (GROUPED, many, 4),  # 16 + 4 in each group
        (O.adamw(1e-2, groups={"*/b": {"lr": 1e-3}}), layers, 20),  # every leaf its own run
        (O.adamw(1e-2, state_dtype=jnp.bfloat16), small, 1),
        # The bfloat16 encoder/b on XLA's slices; the three float32 leaves in one call.
        (O.adamw(1e-2), MIXED, 1),
        (O.adam(1e-2, amsgrad=True), small, 1),  # AMSGrad's kernel is generated too
    ],
    ids=["one-group", "two-groups", "alternating-groups", "bf16-state", "mixed", "amsgrad"],
)
def test_one_native_call_per_run_of_16_leaves(opt, make, expected):
    if not _native.available():
        pytest.skip("no native kernels here")
    assert native_calls(O.flatten(opt), make()) == expected


def test_donated_step_updates_the_vectors_in_place():
    opt = O.flatten(GROUPED)
    params = many()
    state = opt.init(params)
    # Donated buffers go to the outputs in order: params, then state.
    step = jax.jit(lambda p, s, g: opt.step(g, s, p), donate_argnums=(0, 1))
    compiled = step.lower(params, state, params).compile()
    entry = compiled.as_text()[compiled.as_text().find("\nENTRY") :]
    assert _ARRAY_COPY.findall(entry) == []

    def where(state):
        return [v["float32"].unsafe_buffer_pointer() for v in (state.inner.mu, state.inner.nu)]

    before = where(state)
    for k in (1, 2):
        params, state = compiled(params, state, many(k))
        assert where(state) == before
    assert_matches((params, state), run(GROUPED, many, steps=2))


def test_without_native_kernels_the_numbers_are_the_same(monkeypatch):
    opt = OPTIMIZERS["adamw_groups"]
    ref = run(opt, small)  # native where available
    # What CADENCE_NATIVE=0 gives a fresh process (`available` is cached).
    monkeypatch.setattr(_native, "available", lambda: False)
    assert native_calls(O.flatten(opt), small()) == 0
    assert_matches(run(O.flatten(opt), small), ref)


# --------------------------------------------------------------------------
# Refusals.


def test_step_needs_params():
    opt = O.flatten(O.sgd(0.1, momentum=0.9))
    with pytest.raises(TypeError, match="flatten.step: params are required"):
        opt.step(small(1), opt.init(small()), None)


@pytest.mark.parametrize(
    "other",
    [small() | {"extra": jnp.ones(3)}, small(odd=jnp.bfloat16)],
    ids=["more-leaves", "other-dtypes"],
)
@pytest.mark.parametrize("method", ["update", "step"])
def test_a_state_for_other_parameters_is_refused(method, other):
    opt = O.flatten(O.adamw(1e-2))
    state = opt.init(small())
    with pytest.raises(ValueError, match=rf"flatten.{method}: .*call init again"):
        getattr(opt, method)(other, state, other)


@pytest.mark.parametrize("method", ["update", "step"])
def test_an_unflattened_state_is_refused(method):
    opt = O.adam(1e-2)
    params = small()
    with pytest.raises(TypeError, match=rf"flatten.{method}: expected a FlattenState"):
        getattr(O.flatten(opt), method)(params, opt.init(params), params)


# --------------------------------------------------------------------------
# Everything around the state.


@pytest.mark.parametrize("name", ["adamw", "adamw_groups"])
def test_hyperparams_see_through_flatten(name):
    opt = OPTIMIZERS[name]
    for steps in (0, 1):
        ours = run(O.flatten(opt), small, jit=False, steps=steps)[1]
        ref = run(opt, small, jit=False, steps=steps)[1]
        assert jax.tree.structure(O.hyperparams(ours)) == jax.tree.structure(O.hyperparams(ref))
        assert_same(O.hyperparams(ours), O.hyperparams(ref))


def test_factored_buffers_are_refused():
    with pytest.raises(TypeError, match=r"flatten: adafactor keeps buffers not shaped like"):
        O.flatten(O.adafactor())


@pytest.mark.parametrize("name", PACKED)
def test_config_round_trip(name):
    opt = O.flatten(OPTIMIZERS[name])
    config = json.loads(json.dumps(opt.to_config()))
    assert config == {"type": "flatten", "tx": OPTIMIZERS[name].to_config()}
    assert O.from_config(config) == opt


def test_checkpoint_round_trip(tmp_path):
    opt = O.flatten(OPTIMIZERS["adamw_groups"])
    params, state = run(opt, MIXED, jit=False, steps=2)  # two vectors
    checkpoint.save(tmp_path, 2, params, state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state)
    assert_same(restored.opt_state, state)
    resumed = opt.step(MIXED(3), restored.opt_state, restored.params)
    assert_same(resumed, opt.step(MIXED(3), state, params))


def test_state_shardings_on_one_device():
    opt = O.flatten(O.adam(1e-3))
    params = small()
    state = opt.init(params)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for given in (params, jax.tree.map(lambda x: x.sharding, params)):
        shardings = O.state_shardings(opt, given)
        assert jax.tree.structure(shardings) == jax.tree.structure(state)
        assert all(s == device for s in jax.tree.leaves(shardings))
    placed = jax.jit(opt.init, out_shardings=shardings)(params)
    assert_same(placed, state)


def test_update_without_params_takes_gradients_of_another_dtype():
    # The layout then comes from the state's single vector, not the grads' dtype.
    params = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
    grads = jax.tree.map(lambda x: (x * 0.5).astype(jnp.bfloat16), params)
    opt = O.sgd(0.1, momentum=0.9)
    ref_updates, ref_state = opt.update(grads, opt.init(params))
    updates, state = O.flatten(opt).update(grads, O.flatten(opt).init(params))
    assert_same(updates, ref_updates)
    buffers = jax.tree.leaves(ref_state.momentum_buffer)
    np.testing.assert_array_equal(
        state.inner.momentum_buffer["float32"], jnp.concatenate([b.ravel() for b in buffers])
    )


# --------------------------------------------------------------------------
# On a mesh of 8 devices (tests.sharding.worker flatten).


@pytest.fixture(scope="module")
def on_a_mesh():
    return run_worker("flatten")


def test_init_refuses_parameters_split_over_devices(on_a_mesh):
    assert on_a_mesh["sharded"] is not None
    assert "params at 'b1' are split over 8 devices" in on_a_mesh["sharded"]


def test_replicated_parameters_on_a_mesh_step_as_unwrapped(on_a_mesh):
    assert on_a_mesh["vector"] == {"float32": [16 * 32 + 32 + 32 * 8 + 8]}
    assert on_a_mesh["bitwise"]
