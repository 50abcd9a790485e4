"""Wrappers: accumulate, skip_nonfinite, reduce_on_plateau (against torch's ReduceLROnPlateau)."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S


def _grads(k):
    rng = np.random.default_rng(k)
    return {"w": jnp.asarray(rng.standard_normal(3), jnp.float32), "b": jnp.asarray(rng.normal())}


def _params():
    return {"w": jnp.ones(3), "b": jnp.zeros(())}


# ------------------------------------------------------------------ accumulate


@pytest.mark.parametrize("jit", [False, True])
def test_accumulate_applies_the_mean_every_k_and_schedules_count_updates(jit):
    inner = O.sgd(S.piecewise((1, 2), (1.0, 0.5, 0.25)), momentum=0.9)
    opt = O.accumulate(inner, 3)
    update = jax.jit(opt.update) if jit else opt.update
    p = _params()
    state, reference = opt.init(p), inner.init(p)
    for k in range(9):
        u, state = update(_grads(k), state, p)
        if k % 3 != 2:
            assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
            continue
        group = [_grads(j) for j in range(k - 2, k + 1)]
        mean = jax.tree.map(lambda *g: sum(g) / 3, *group)
        expected, reference = inner.update(mean, reference, p)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        assert int(state.inner.count) == (k + 1) // 3
    assert float(O.hyperparams(state)["lr"]) == 0.25  # the third update used step 2


def test_accumulate_every_one_is_the_inner_transformation():
    inner = O.adam(0.1)
    opt = O.accumulate(inner, 1)
    p = _params()
    s1, s2 = opt.init(p), inner.init(p)
    for k in range(3):
        u1, s1 = opt.update(_grads(k), s1, p)
        u2, s2 = inner.update(_grads(k), s2, p)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ skip_nonfinite


SKIP = O.skip_nonfinite(O.adamw(S.linear(0.1, 0.0, 10)))
SKIP_JIT = jax.jit(SKIP.update)  # one compilation for the parametrizations


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("jit", [False, True])
def test_skip_nonfinite_leaves_everything_unchanged_and_counts(bad, jit):
    opt = SKIP
    update = SKIP_JIT if jit else opt.update
    p = _params()
    state = opt.init(p)
    _, state = update(_grads(0), state, p)
    before = state
    poisoned = _grads(1) | {"b": jnp.asarray(bad, jnp.float32)}
    u, state = update(poisoned, state, p)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
    for a, b in zip(jax.tree.leaves(state.inner), jax.tree.leaves(before.inner), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.skipped) == 1
    u, state = update(_grads(1), state, p)
    expected, _ = opt.tx.update(_grads(1), before.inner, p)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert int(state.skipped) == 1 and int(state.inner.count) == 2


# --------------------------------------------------------- reduce_on_plateau


def _torch_lrs(values, lr=1.0, **kwargs):
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    out = []
    for v in values:
        out.append(opt.param_groups[0]["lr"])
        param.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        scheduler.step(v)
    return out


def _our_lrs(values, lr=1.0, inner=None, **kwargs):
    opt = O.reduce_on_plateau(inner or O.sgd(lr), **kwargs)
    p = jnp.zeros(1)
    state = opt.init(p)
    out = []
    for v in values:
        _, state = opt.update(jnp.ones(1), state, p, value=v)
        out.append(float(O.hyperparams(state)["lr"]))
    return out


def _sequences():
    rng = np.random.default_rng(7)
    walk = 5 + np.cumsum(rng.normal(0, 0.1, 60)) - np.linspace(0, 1, 60)
    plateau = [10, 9, 9.5, 9.2, 9.0, 8.9995, 9.1, 8, 8, 8, 8, 8, 7.9999, 8, 8, 8, 8, 8, 8, 5]
    return {
        "walk": walk.tolist(),
        "plateau": plateau + [5.0] * 15,
        "crossing": (walk - 5).tolist(),
    }


SETTINGS = [
    dict(),
    dict(patience=2, factor=0.5),
    dict(patience=1, factor=0.5, cooldown=2),
    dict(patience=0, factor=0.3, min_lr=0.05),
    dict(patience=2, threshold=0.05, threshold_mode="abs", cooldown=1),
    dict(mode="max", patience=1, factor=0.5),
    dict(mode="max", patience=0, threshold=0.1, threshold_mode="abs", min_lr=0.1),
]


@pytest.mark.parametrize(
    ("settings", "name"), list(itertools.product(range(len(SETTINGS)), ["walk", "plateau"]))
)
def test_reduce_on_plateau_matches_torch(settings, name, x64):
    values = _sequences()[name]
    kwargs = SETTINGS[settings]
    assert _our_lrs(values, **kwargs) == pytest.approx(_torch_lrs(values, **kwargs), rel=1e-14)


@pytest.mark.parametrize("settings", [1, 2, 3, 4, 6])
def test_reduce_on_plateau_negative_values_abs_mode_match_torch(settings, x64):
    values = [-v for v in _sequences()["walk"]] + _sequences()["crossing"]
    kwargs = SETTINGS[settings] | {"threshold_mode": "abs"}
    assert _our_lrs(values, **kwargs) == pytest.approx(_torch_lrs(values, **kwargs), rel=1e-14)


@pytest.mark.parametrize("settings", [0, 1, 2, 3, 5])
def test_reduce_on_plateau_negative_values_rel_mode_mirror_torch(settings, x64):
    # A relative margin of |best| makes "min of v" the same question as "max of
    # -v"; torch's best * (1 - threshold) agrees with that only for best > 0.
    values = [-v for v in _sequences()["walk"]]
    ours = SETTINGS[settings] | {"threshold": 0.01}
    mirrored = ours | {"mode": "max" if ours.get("mode", "min") == "min" else "min"}
    negated = [-v for v in values]
    assert _our_lrs(values, **ours) == pytest.approx(_torch_lrs(negated, **mirrored), rel=1e-14)


def test_reduce_on_plateau_does_not_count_a_worse_negative_value_as_better(x64):
    values = [-10.0, -9.9995]  # worse by 5e-5 relative: not an improvement
    assert _our_lrs(values, patience=0) == [1.0, 1.0]
    assert _our_lrs(values + [-9.9995], patience=0)[-1] == pytest.approx(0.1)
    # torch's rel test takes -9.9995 < -10 * (1 - 1e-4) as an improvement.
    assert _torch_lrs(values + [-9.9995], patience=0)[-1] == 1.0


def test_reduce_on_plateau_eps_and_min_lr_in_lr_units(x64):
    values = [float(v) for v in range(20)]  # always worse
    tiny = _our_lrs(values, lr=1e-9, patience=0)
    assert tiny == pytest.approx(_torch_lrs(values, lr=1e-9, patience=0), rel=1e-14)
    assert tiny[-1] == 1e-9  # a reduction below eps (1e-8) is skipped, as in torch
    floor = _our_lrs(values, lr=0.5, patience=0, factor=0.5, min_lr=0.1)
    assert floor == pytest.approx(_torch_lrs(values, lr=0.5, patience=0, factor=0.5, min_lr=0.1))
    assert floor[-1] == pytest.approx(0.1)


def test_reduce_on_plateau_scales_every_optimizer_exactly_like_its_lr():
    p = _params()
    for inner in (O.adamw(0.1, weight_decay=0.1), O.rmsprop(0.1, momentum=0.9), O.lion(0.1)):
        opt = O.reduce_on_plateau(inner, patience=0, factor=0.5)
        state = opt.init(p)
        _, state = opt.update(_grads(0), state, p, value=1.0)
        _, state = opt.update(_grads(1), state, p, value=2.0)  # worse: lr halves next
        u, state = opt.update(_grads(2), state, p, value=3.0)
        halved = dataclasses.replace(inner, lr=0.05)
        ref_state = halved.init(p)
        for k in range(2):
            _, ref_state = halved.update(_grads(k), ref_state, p)
        # The moments do not depend on lr, so the third update is lr-scaled.
        expected, _ = halved.update(_grads(2), ref_state, p)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        assert float(O.hyperparams(state)["lr"]) == pytest.approx(0.05)


def test_reduce_on_plateau_needs_the_value_and_works_inside_multisteps_and_jit():
    opt = O.reduce_on_plateau(O.sgd(1.0), patience=0)
    p = jnp.zeros(1)
    with pytest.raises(ValueError, match="value=loss"):
        opt.update(jnp.ones(1), opt.init(p), p)
    multi = optax.MultiSteps(opt, 2)
    step = jax.jit(multi.update)
    state = multi.init(p)
    for v in (1.0, 1.0, 2.0, 2.0, 3.0, 3.0):
        _, state = step(jnp.ones(1), state, p, value=v)
    # Three updates with values 1, 2, 3 (the value of each update's last micro-step).
    assert float(O.hyperparams(state)["lr"]) == pytest.approx(0.1)
    # Without an lr in the inner transformation, min_lr bounds the scale.
    plain = O.reduce_on_plateau(O.chain(optax.scale(-1.0)), patience=0, min_lr=0.05)
    state = plain.init(p)
    for v in range(5):
        _, state = plain.update(jnp.ones(1), state, p, value=float(v))
    assert float(state.scale) == pytest.approx(0.05)
