"""Invariants that every schedule type keeps: values, tracing, equality, round trips."""

from __future__ import annotations

import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import schedules as S
from cadence.schedules._base import REGISTRY

from .examples import EXAMPLES, FROM_FN, TYPES_COVERED

IDS = list(EXAMPLES)
STEPS = np.arange(0, 200)


def test_examples_cover_every_registered_type():
    assert set(REGISTRY) <= TYPES_COVERED


@pytest.mark.parametrize("name", IDS)
def test_values_finite_float32_and_shaped_like_steps(name):
    s = EXAMPLES[name]
    values = s(jnp.asarray(STEPS))
    assert values.dtype == jnp.float32
    assert values.shape == STEPS.shape
    assert np.all(np.isfinite(values))
    # XLA may compile a scalar and an array evaluation differently (a division
    # by a constant becomes a multiplication): equal to a couple of ulp.
    grid = s(jnp.asarray(STEPS.reshape(4, 50)))
    np.testing.assert_allclose(grid, np.asarray(values).reshape(4, 50), rtol=2.5e-7)
    assert s(7).shape == ()
    np.testing.assert_allclose(s(7), values[7], rtol=2.5e-7)
    np.testing.assert_allclose(s(jnp.int32(7)), values[7], rtol=2.5e-7)
    np.testing.assert_allclose(s(7.0), values[7], rtol=2.5e-7)


@pytest.mark.parametrize("name", IDS)
def test_jit_equals_eager(name):
    s = EXAMPLES[name]
    eager = s(jnp.asarray(STEPS))
    jitted = jax.jit(s)(jnp.asarray(STEPS))
    # Fusion may contract a multiply-add into an FMA: one ulp of the scale.
    scale = float(np.max(np.abs(eager)))
    np.testing.assert_allclose(jitted, eager, rtol=2.5e-7, atol=1.2e-7 * scale)
    # Exact values stay exact: zeros and the start value.
    np.testing.assert_array_equal(np.asarray(jitted) == 0, np.asarray(eager) == 0)
    assert float(jitted[0]) == float(eager[0])
    # As a pytree argument the hyperparameters are traced float32 values, so
    # e.g. ``rate ** t`` carries the float32 rounding of `rate` (t times over).
    as_argument = jax.jit(lambda sched, t: sched(t))(s, jnp.asarray(STEPS))
    np.testing.assert_allclose(as_argument, eager, rtol=1e-5, atol=1e-7 * scale)


@pytest.mark.parametrize("name", IDS)
def test_vmap_over_steps_and_grad(name):
    s = EXAMPLES[name]
    mapped = jax.vmap(s)(jnp.asarray(STEPS))
    np.testing.assert_allclose(mapped, s(jnp.asarray(STEPS)), rtol=2.5e-7)
    # Away from kinks, the derivative along a float step exists and is finite.
    d = jax.grad(lambda t: s(t))(jnp.float32(13.5))
    assert np.isfinite(d)


@pytest.mark.parametrize("name", IDS)
def test_float64_under_x64(name, x64):
    s = EXAMPLES[name]
    values = s(jnp.arange(50))
    assert values.dtype == jnp.float64
    with jax.enable_x64(False):
        low = s(jnp.arange(50))
    np.testing.assert_allclose(values, low, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", IDS)
def test_repr_is_the_constructor_call(name):
    s = EXAMPLES[name]
    namespace = {n: getattr(S, n) for n in dir(S) if not n.startswith("_")}
    assert eval(repr(s), namespace) == s


@pytest.mark.parametrize("name", IDS)
def test_equality_hash_and_pickle(name):
    s = EXAMPLES[name]
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s and hash(clone) == hash(s)
    assert clone is not s
    if jax.tree.leaves(s):
        other = jax.tree.map(lambda x: x * 1.5 + 0.25, s)
        assert other != s and hash(other) != hash(s)


@pytest.mark.parametrize("name", IDS)
def test_config_round_trip_is_exact_through_json(name):
    s = EXAMPLES[name]
    text = json.dumps(S.to_config(s))
    back = S.from_config(json.loads(text))
    assert back == s
    np.testing.assert_array_equal(back(jnp.asarray(STEPS)), s(jnp.asarray(STEPS)))


@pytest.mark.parametrize("name", IDS)
def test_leaves_are_float_hyperparameters_only(name):
    s = EXAMPLES[name]
    leaves = jax.tree.leaves(s)
    assert all(isinstance(x, float) for x in leaves)
    # Rebuilding from the same leaves and treedef gives the same schedule.
    flat, treedef = jax.tree.flatten(s)
    assert jax.tree.unflatten(treedef, flat) == s


def test_vmap_over_a_hyperparameter_sweeps_without_recompiling():
    peaks = jnp.array([1e-4, 1e-3, 1e-2])
    values = jax.vmap(lambda p: S.warmup(S.cosine(p, 90), 10)(jnp.arange(101)))(peaks)
    assert values.shape == (3, 101)
    np.testing.assert_allclose(values[2], 100 * values[0], rtol=1e-6)
    # A jitted function of the schedule compiles once for all peak values.
    traces = []

    @jax.jit
    def at(s, t):
        traces.append(None)
        return s(t)

    for p in (0.1, 0.2, 0.3):
        at(S.cosine(p, 50), 10)
    assert len(traces) == 1


def test_from_fn_works_everywhere_but_config():
    np.testing.assert_allclose(FROM_FN(jnp.arange(5)), 2.0 * np.arange(5))
    np.testing.assert_allclose(jax.jit(FROM_FN)(3), 6.0)
    assert pickle.loads(pickle.dumps(FROM_FN)) == FROM_FN
    with pytest.raises(ValueError, match="from_fn"):
        S.to_config(FROM_FN)
    with pytest.raises(ValueError, match="from_fn"):
        S.to_config(S.warmup(FROM_FN, 3))


@pytest.mark.parametrize("name", S.NAMES)
def test_registry_schedules_accept_a_traced_peak(name):
    kw = {
        "polynomial": {"lr_end": 0.0},
        "cosine_with_min_lr": {"min_lr_rate": 0.1},
        "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1, "warmup_lr_rate": 0.2},
        "warmup_stable_decay": {"num_decay_steps": 20},
    }.get(name, {})

    def curve(peak):
        return S.get(name, peak, warmup_steps=10, total_steps=100, **kw)(jnp.arange(101))

    curves = jax.vmap(curve)(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(curves[1], 2 * curves[0], rtol=1e-6, atol=1e-12)
