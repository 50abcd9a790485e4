"""Invariants every optimizer and transformation keeps, over a registry of all of them."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S
from cadence.optimizers._base import INT32_MAX, REGISTRY, hyper_fields

from .examples import EVERYTHING, EXTRA, MATRIX_OPTIMIZERS, OPTIMIZERS, grads, params

ALL = sorted(EVERYTHING)
OPTS = sorted(OPTIMIZERS)


def run(opt, steps=3, p=None, extra=None, update=None):
    """Apply `opt` for `steps` updates; returns the parameters and states after each."""
    p = params() if p is None else p
    update = update or opt.update
    state = opt.init(p)
    out = [(p, state)]
    for k in range(steps):
        g = jax.tree.map(lambda x, p=p: x.astype(p["head"]["b"].dtype), grads(k))
        u, state = update(g, state, p, **(extra or {}))
        p = optax.apply_updates(p, u)
        out.append((p, state))
    return out


def close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, np.max(np.abs(y))))


def test_examples_cover_every_registered_type():
    # The library's types (tests register types of their own too).
    library = {n for n, cls in REGISTRY.items() if cls.__module__.startswith("cadence.")}
    examples = EVERYTHING | MATRIX_OPTIMIZERS
    assert library <= {type(t).__name__ for t in examples.values()}


@pytest.mark.parametrize("name", ALL)
def test_is_an_optax_transformation_that_unpacks(name):
    opt = EVERYTHING[name]
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    init, update = opt
    p = params()
    state = init(p)
    assert jax.tree.structure(state) == jax.tree.structure(opt.init(p))
    u1, _ = update(grads(0), state, p, **EXTRA.get(name, {}))
    u2, _ = opt.update(grads(0), state, p, **EXTRA.get(name, {}))
    close(u1, u2, rtol=0)


def _suite(opt, p, g0, g1, extra):
    """Everything the invariants need from a compiled program (the optimizer traced)."""
    state = opt.init(p)
    first = opt.update(g0, state, p, **extra)
    second = opt.update(g1, first[1], p, **extra)
    chained = optax.chain(optax.identity(), opt, optax.scale(1.0))
    multi = optax.MultiSteps(opt, 2)
    m0, ms = multi.update(g0, multi.init(p), p, **extra)
    m1, _ = multi.update(g1, ms, p, **extra)
    ours = O.chain(optax.scale(0.5), opt, optax.identity())
    return {
        "init": state,
        "first": first,
        "second": second,
        "optax_chain": chained.update(g0, chained.init(p), p, **extra)[0],
        "multisteps": (m0, m1),
        "optax_inside": ours.update(g0, ours.init(p), p, **extra)[0],
    }


@jax.jit
def _suites(opts, p, g0, g1):
    # One program for every example: XLA's fixed cost per compilation
    # dominates these small updates.
    return {name: _suite(o, p, g0, g1, EXTRA.get(name, {})) for name, o in opts.items()}


@functools.cache
def _compiled_all():
    return _suites(EVERYTHING, params(), grads(0), grads(1))


def _compiled(name):
    return _compiled_all()[name]


@pytest.mark.parametrize("name", ALL)
def test_jit_equals_eager_and_state_structure_is_stable(name):
    opt = EVERYTHING[name]
    extra = EXTRA.get(name, {})
    p = params()
    jitted = _compiled(name)
    state = opt.init(p)
    u0, s0 = opt.update(grads(0), state, p, **extra)
    u1, s1 = opt.update(grads(1), s0, p, **extra)
    close(jitted["first"][0], u0)
    close(jitted["second"][0], u1)
    structure = jax.tree.structure(state)
    avals = [jax.typeof(x) for x in jax.tree.leaves(state)]
    for s in (jitted["init"], jitted["first"][1], jitted["second"][1], s0, s1):
        assert jax.tree.structure(s) == structure
        assert [jax.typeof(x) for x in jax.tree.leaves(s)] == avals


@pytest.mark.parametrize("name", ALL)
def test_works_inside_optax_chain_and_multisteps(name):
    opt = EVERYTHING[name]
    extra = EXTRA.get(name, {})
    p = params()
    jitted = _compiled(name)
    expected, _ = opt.update(grads(0), opt.init(p), p, **extra)
    close(jitted["optax_chain"], expected)
    m0, m1 = jitted["multisteps"]
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(m0))
    mean = jax.tree.map(lambda a, b: a + (b - a) / 2, grads(0), grads(1))
    expected, _ = opt.update(mean, opt.init(p), p, **extra)
    close(m1, expected, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_optax_transformations_work_inside_chain(name):
    opt = EVERYTHING[name]
    extra = EXTRA.get(name, {})
    p = params()
    expected, _ = opt.update(jax.tree.map(lambda g: 0.5 * g, grads(0)), opt.init(p), p, **extra)
    close(_compiled(name)["optax_inside"], expected)
    chained = O.chain(optax.scale(0.5), opt)
    close(chained.update(grads(0), chained.init(p), p, **extra)[0], expected, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_changing_a_number_does_not_recompile(name):
    opt = EVERYTHING[name]
    before = _compiled(name)
    size = _suites._cache_size()
    # Halve every float hyperparameter: lr, betas, eps, weight decay, schedule values.
    other = jax.tree.map(lambda x: x * 0.5, opt)
    assert other != opt and jax.tree.structure(other) == jax.tree.structure(opt)
    after = _suites(EVERYTHING | {name: other}, params(), grads(0), grads(1))[name]
    assert _suites._cache_size() == size
    if name not in ("clip_by_value", "clip_by_global_norm", "accumulate"):  # may not change
        # (ADOPT's first update is 0 whatever the numbers: the second counts too.)
        old = jax.tree.leaves((before["first"][0], before["second"][0]))
        new = jax.tree.leaves((after["first"][0], after["second"][0]))
        changed = zip(old, new, strict=True)
        assert any(np.any(a != b) for a, b in changed)


@pytest.mark.parametrize("name", OPTS)
def test_zero_gradient_without_weight_decay_leaves_params_unchanged(name):
    opt = OPTIMIZERS[name]
    # Every term that decays the parameters set to 0 (ASGD's lambd too; Rprop has none).
    opt = dataclasses.replace(opt, **{n: 0.0 for n in ("weight_decay", "lambd") if hasattr(opt, n)})
    p = params()
    state = opt.init(p)
    zeros = jax.tree.map(jnp.zeros_like, p)
    for _ in range(3):
        u, state = opt.update(zeros, state, p)
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", ALL)
def test_config_round_trip(name):
    opt = EVERYTHING[name]
    config = json.loads(json.dumps(opt.to_config()))
    rebuilt = O.from_config(config)
    assert rebuilt == opt
    assert repr(rebuilt) == repr(opt)
    assert rebuilt.to_config() == config


@pytest.mark.parametrize("name", ALL)
def test_pickle_copy_equality_and_hash(name):
    opt = EVERYTHING[name]
    for other in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt), copy.copy(opt)):
        assert other == opt and hash(other) == hash(opt)
        assert type(other) is type(opt)
    p = params()
    u1, _ = opt.update(grads(0), opt.init(p), p, **EXTRA.get(name, {}))
    clone = pickle.loads(pickle.dumps(opt))
    u2, _ = clone.update(grads(0), clone.init(p), p, **EXTRA.get(name, {}))
    close(u1, u2, rtol=0)


def _namespace():
    names = {n: getattr(O, n) for n in dir(O) if not n.startswith("_")}
    names |= {n: getattr(S, n) for n in dir(S) if not n.startswith("_")}
    return names | {"inf": math.inf}


@pytest.mark.parametrize("name", ALL)
def test_repr_reads_as_the_constructor_call(name):
    opt = EVERYTHING[name]
    text = repr(opt)
    assert text.startswith(f"{type(opt).__name__}(")
    assert eval(text, _namespace()) == opt  # noqa: S307 (our own repr, in a test)


@pytest.mark.parametrize("name", ALL)
def test_init_under_eval_shape_matches_init(name):
    opt = EVERYTHING[name]
    p = params()
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), p)
    abstract = jax.eval_shape(opt.init, shapes)
    concrete = opt.init(p)
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype) == (c.shape, c.dtype)


@pytest.mark.parametrize("name", OPTS)
def test_bf16_params_keep_float32_hyperparameters(name):
    opt = OPTIMIZERS[name]
    p16 = params(jnp.bfloat16)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
    state = opt.init(p16)
    for x in jax.tree.leaves(state.hyperparams):
        assert x.dtype == jnp.float32
    if "b2" in hyper_fields(type(opt)):
        assert O.hyperparams(state)["b2"] != 1.0
    g16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), grads(0))
    u16, state16 = opt.update(g16, state, p16)
    u32, _ = opt.update(jax.tree.map(lambda x: x.astype(jnp.float32), g16), opt.init(p32), p32)
    for a, b in zip(jax.tree.leaves(u16), jax.tree.leaves(u32), strict=True):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(a, np.float32), b, rtol=1e-2, atol=1e-2 * np.max(np.abs(b))
        )
    for x in jax.tree.leaves(_buffers(opt, state16)):
        assert x.dtype == jnp.bfloat16  # torch's default: moments like the params


def _buffers(opt, state):
    """The per-leaf buffers of a state (not its count, record or shared scalars)."""
    fixed = ("count", "hyperparams", *opt.shared)
    return [x for n, x in state._asdict().items() if n not in fixed]


def test_bf16_adam_second_moment_decays_with_b2_not_one():
    # With b2 computed in bf16 (0.999 -> 1.0) the second moment would never
    # forget: after a large gradient, a run of small ones would keep the step
    # tiny. (float32 moments, so that only the hyperparameter's precision counts.)
    opt = O.adam(0.1, state_dtype=jnp.float32)
    p = jnp.zeros(1, jnp.bfloat16)
    state = opt.init(p)
    _, state = opt.update(jnp.full(1, 100.0, jnp.bfloat16), state, p)
    nu = float(state.nu[0])
    for _ in range(10):
        _, state = opt.update(jnp.zeros(1, jnp.bfloat16), state, p)
    assert float(state.nu[0]) < nu * 0.995


@pytest.mark.parametrize("name", OPTS)
def test_state_dtype(name):
    opt = dataclasses.replace(OPTIMIZERS[name], state_dtype=jnp.bfloat16)
    assert opt.state_dtype == "bfloat16"
    p = params()
    history = run(opt)
    state = history[-1][1]
    buffers = _buffers(opt, state)
    assert jax.tree.leaves(buffers) or name == "sgd"
    for x in jax.tree.leaves(buffers):
        assert x.dtype == jnp.bfloat16
    for x in jax.tree.leaves(history[-1][0]):
        assert x.dtype == jnp.float32
    reference = run(OPTIMIZERS[name])[-1][0]
    close(history[-1][0], reference, rtol=2e-2)
    assert jax.tree.structure(opt.init(p)) == jax.tree.structure(state)


@pytest.mark.parametrize("name", sorted(n for n in OPTS if "groups" not in n))
def test_every_hyperparameter_takes_a_number_a_schedule_or_a_callable(name):
    opt = OPTIMIZERS[name]
    p = params()
    expected, _ = opt.update(grads(0), opt.init(p), p)
    for field, value in ((f, getattr(opt, f)) for f in hyper_fields(type(opt))):
        if not isinstance(value, float):
            continue
        for variant in (S.constant(value), lambda t, v=value: v + 0 * t):
            other = dataclasses.replace(opt, **{field: variant})
            assert isinstance(getattr(other, field), S.Schedule)
            u, _ = other.update(grads(0), other.init(p), p)
            close(u, expected, rtol=1e-7)


def test_schedules_see_the_update_count_from_zero():
    opt = O.sgd(S.piecewise((1, 2), (1.0, 0.5, 0.25)))
    p = jnp.zeros(1)
    state = opt.init(p)
    assert float(O.hyperparams(state)["lr"]) == 1.0  # what the first update will use
    seen = []
    for _ in range(4):
        u, state = opt.update(jnp.ones(1), state, p)
        seen.append((float(-u[0]), float(O.hyperparams(state)["lr"]), int(state.count)))
    assert seen == [(1.0, 1.0, 1), (0.5, 0.5, 2), (0.25, 0.25, 3), (0.25, 0.25, 4)]


def test_count_saturates_instead_of_overflowing():
    opt = O.adam(0.1)
    p = jnp.ones(2)
    state = opt.init(p)._replace(count=jnp.asarray(INT32_MAX, jnp.int32))
    u, state = opt.update(jnp.ones(2), state, p)
    assert int(state.count) == INT32_MAX
    assert np.all(np.isfinite(u))


def test_sgd_without_momentum_keeps_no_buffer_as_torch():
    assert O.sgd(0.1).init(jnp.ones(3)).momentum_buffer is None
    assert O.sgd(0.1, momentum=0.9).init(jnp.ones(3)).momentum_buffer.shape == (3,)
    # A group with momentum needs buffers everywhere (one state layout).
    grouped = O.sgd(0.1, groups={"a": {"momentum": 0.9}})
    assert grouped.init({"a": jnp.ones(2), "b": jnp.ones(1)}).momentum_buffer is not None


def test_sgd_first_step_is_not_dampened_and_momentum_zero_ignores_dampening():
    g = jnp.array([2.0])
    p = jnp.zeros(1)
    opt = O.sgd(1.0, momentum=0.5, dampening=0.5)
    state = opt.init(p)
    u1, state = opt.update(g, state, p)
    u2, state = opt.update(g, state, p)
    assert float(u1[0]) == -2.0  # buffer = g
    assert float(u2[0]) == -(0.5 * 2.0 + 0.5 * 2.0)
    # A state with a buffer and momentum 0 follows torch's no-momentum path.
    zero = dataclasses.replace(opt, momentum=0.0)
    u3, _ = zero.update(g, state, p)
    assert float(u3[0]) == -2.0


def test_update_needs_params_only_for_weight_decay():
    g = {"w": jnp.ones(2)}
    O.adam(0.1).update(g, O.adam(0.1).init(g))
    with pytest.raises(ValueError, match="params are required when weight_decay"):
        O.adamw(0.1).update(g, O.adamw(0.1).init(g))
