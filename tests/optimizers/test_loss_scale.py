"""`loss_scale` and `scale_loss` against torch.amp.GradScaler: scales, skips, parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S
from tests.reference import loss_scale_cases as cases

GOLDEN = json.loads((Path(cases.__file__).parent / cases.GOLDEN).read_text())["cases"]


def build(case: cases.Case) -> O.Transformation:
    inner = O.adam(0.01) if case.optimizer == "adam" else O.sgd(0.05, momentum=0.9)
    return O.loss_scale(
        inner,
        init_scale=case.init_scale,
        growth_factor=case.growth_factor,
        backoff_factor=case.backoff_factor,
        growth_interval=case.growth_interval,
    )


def loss_fn(params, c):
    return sum(jnp.sum(c[k] * params[k]) + jnp.sum(params[k] ** 2) / 2 for k in params)


def run_cadence(case: cases.Case, method: str = "step") -> dict:
    """GradScaler's loop in cadence: grad of scale_loss, then step (or update + apply)."""
    opt = build(case)
    params = {k: jnp.asarray(v) for k, v in cases.init_params().items()}
    state = opt.init(params)

    @jax.jit
    def one(params, state, c):
        grads = jax.grad(lambda p: O.scale_loss(loss_fn(p, c), state))(params)
        if method == "step":
            return opt.step(grads, state, params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    scales, skipped, flat = [], [], []
    for c in cases.coefficients(case):
        count = int(state.inner.count)
        params, state = one(params, state, c)
        scales.append(float(O.hyperparams(state)["loss_scale"]))
        skipped.append(int(state.inner.count) == count)
        flat.append(np.concatenate([np.asarray(params[k]).ravel() for k in sorted(params)]))
    return {"scale": scales, "skipped": skipped, "params": np.stack(flat)}


def check(ours: dict, ref: dict, exact_scale: bool = True) -> None:
    if exact_scale:
        assert ours["scale"] == ref["scale"]
    else:
        np.testing.assert_allclose(ours["scale"], ref["scale"], rtol=1e-6)
    assert ours["skipped"] == ref["skipped"]
    assert any(ref["skipped"]) and not all(ref["skipped"])
    np.testing.assert_allclose(ours["params"], np.asarray(ref["params"]), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("method", ["step", "update"])
@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_matches_golden_gradscaler(name, method):
    case = cases.CASES[name]
    # Without x64, factors not exact in float32 may round the scale differently.
    check(run_cadence(case, method), GOLDEN[name], exact_scale=not case.x64)


@pytest.mark.parametrize("name", sorted(n for n, c in cases.CASES.items() if c.x64))
def test_odd_factors_give_torchs_scales_exactly_under_x64(name, x64):
    check(run_cadence(cases.CASES[name]), GOLDEN[name])


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_matches_live_gradscaler(name):
    pytest.importorskip("torch")
    case = cases.CASES[name]
    ref = cases.run_torch(case)
    check(run_cadence(case), ref, exact_scale=not case.x64)


def test_a_skipped_step_changes_nothing_but_the_scale():
    opt = O.loss_scale(O.adamw(0.1), init_scale=8.0, growth_interval=1)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    _, state = opt.update({"w": jnp.ones(3)}, state, params)
    assert float(state.scale) == 16.0
    for bad in (jnp.inf, -jnp.inf, jnp.nan):
        grads = {"w": jnp.array([1.0, bad, 1.0])}
        updates, new = jax.jit(opt.update)(grads, state, params)
        assert np.all(np.asarray(updates["w"]) == 0)
        for a, b in zip(jax.tree.leaves(new.inner), jax.tree.leaves(state.inner), strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        assert float(new.scale) == 8.0 and int(new.growth_tracker) == 0
        stepped, _ = opt.step(grads, state, params)
        assert np.asarray(stepped["w"]).tobytes() == np.asarray(params["w"]).tobytes()


def test_the_scale_never_grows_to_inf():
    opt = O.loss_scale(O.sgd(0.1), init_scale=2.0**127, growth_interval=1)
    state = opt.init(jnp.zeros(1))
    for _ in range(2):
        _, state = opt.update(jnp.ones(1), state, jnp.zeros(1))
    assert float(state.scale) == 2.0**127


def test_low_precision_gradients_are_unscaled_in_float32():
    # A float16 gradient of the scaled loss, 2**-10 at scale 2**16, is 2**-26
    # unscaled: below float16's smallest number (2**-24), so it reaches the
    # float32 master copy only because the unscaled gradients are float32.
    opt = O.loss_scale(O.master_weights(O.sgd(1.0)))
    p = jnp.full(1, 2.0**-10, jnp.float16)
    state = opt.init(p)
    _, state = opt.update(jnp.full(1, 2.0**-10, jnp.float16), state, p)
    assert float(state.inner.master[""][0]) == 2.0**-10 - 2.0**-26
    assert O.scale_loss(jnp.asarray(2.0, jnp.float16), state).dtype == jnp.float32


def test_hyperparams_and_scale_loss_find_the_scale_through_wrappers():
    inner = O.loss_scale(O.master_weights(O.adamw(S.cosine(1e-3, 10))), init_scale=256.0)
    opt = O.chain(O.clip_by_global_norm(1.0), O.accumulate(inner, 2))
    params = {"w": jnp.ones(2, jnp.bfloat16)}
    state = opt.init(params)
    record = O.hyperparams(state)
    assert float(record["loss_scale"]) == 256.0 and float(record["lr"]) == pytest.approx(1e-3)
    assert float(O.scale_loss(3.0, state)) == 768.0
    parted = O.partition({"a": inner, "b": O.sgd(0.1)}, O.rules(("a", "a"), ("b",)))
    pstate = parted.init({"a": jnp.ones(2), "b": jnp.ones(2)})
    assert float(O.hyperparams(pstate)["loss_scale"]["a"]) == 256.0
    assert float(O.scale_loss(1.0, pstate)) == 256.0


def test_scale_loss_refuses_states_without_exactly_one_loss_scale():
    with pytest.raises(ValueError, match="holds 0 loss_scale states"):
        O.scale_loss(1.0, O.adam(0.1).init(jnp.ones(1)))
    two = O.chain(O.loss_scale(O.sgd(0.1)), O.loss_scale(O.sgd(0.1)))
    with pytest.raises(ValueError, match="holds 2 loss_scale states"):
        O.scale_loss(1.0, two.init(jnp.ones(1)))
    with pytest.raises(TypeError, match="loss must be floating-point"):
        O.scale_loss(jnp.ones((), jnp.int32), O.loss_scale(O.sgd(0.1)).init(jnp.ones(1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init_scale": 0.0}, "init_scale must be > 0"),
        ({"init_scale": 1e39}, "init_scale must be > 0 and finite in float32"),
        ({"init_scale": float("inf")}, "init_scale must be finite"),
        ({"growth_factor": 1.0}, "growth_factor must be > 1"),
        ({"backoff_factor": 1.0}, "backoff_factor must be in \\(0, 1\\)"),
        ({"backoff_factor": 0.0}, "backoff_factor must be in \\(0, 1\\)"),
        ({"growth_interval": 0}, "growth_interval must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        O.loss_scale(O.sgd(0.1), **kwargs)
    with pytest.raises(TypeError, match="expected a LossScaleState"):
        O.loss_scale(O.sgd(0.1)).update(jnp.ones(1), O.sgd(0.1).init(jnp.ones(1)))


# --------------------------------------------------------------------------
# Schedules and skipped steps.

SCRIPT = "..i...n.i.....i..."  # the iterations whose gradients are not finite


def _torch_schedule_run(step_on_skip: bool) -> np.ndarray:
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=3)
    for letter in SCRIPT:
        opt.zero_grad()
        bad = {"i": float("inf"), "n": float("nan")}.get(letter, 1.0)
        loss = (w * torch.tensor([1.0, bad])).sum()
        before = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if step_on_skip or scaler.get_scale() >= before:
            sched.step()
    return w.detach().numpy()


def _cadence_schedule_run(recipe: bool) -> np.ndarray:
    schedule = S.exponential(0.1, 0.8)

    def make(iteration):
        lr = schedule(iteration) if recipe else schedule
        return O.loss_scale(O.sgd(lr), init_scale=4.0, growth_interval=3)

    @jax.jit
    def one(w, state, iteration, bad):
        opt = make(iteration)  # the recipe: the lr at the iteration, a traced leaf
        grads = jax.grad(lambda w: O.scale_loss(jnp.sum(w * jnp.stack([1.0, bad])), state))(w)
        return opt.step(grads, state, w)

    w = jnp.ones(2)
    state = make(0).init(w)
    for i, letter in enumerate(SCRIPT):
        bad = {"i": jnp.inf, "n": jnp.nan}.get(letter, 1.0)
        w, state = one(w, state, i, bad)
    assert int(state.inner.count) == SCRIPT.count(".")
    return np.asarray(w)


def test_schedules_count_steps_taken_and_the_recipe_counts_iterations():
    # cadence's default: a skipped step leaves the inner count, so the
    # schedule advances on steps taken (torch's scheduler stepped only then).
    np.testing.assert_allclose(
        _cadence_schedule_run(recipe=False), _torch_schedule_run(False), rtol=1e-6
    )
    # The documented recipe: torch's scheduler stepped every iteration.
    np.testing.assert_allclose(
        _cadence_schedule_run(recipe=True), _torch_schedule_run(True), rtol=1e-6
    )
    assert not np.allclose(_torch_schedule_run(True), _torch_schedule_run(False), rtol=1e-4)


def test_changing_the_factors_does_not_recompile():
    opt = O.loss_scale(O.sgd(0.1), growth_interval=1)
    step = jax.jit(lambda opt, s: opt.update(jnp.ones(1), s, jnp.zeros(1)))
    _, state = step(opt, opt.init(jnp.zeros(1)))
    other = dataclasses.replace(opt, growth_factor=4.0)
    _, state4 = step(other, other.init(jnp.zeros(1)))
    assert step._cache_size() == 1
    assert (float(state.scale), float(state4.scale)) == (2.0**17, 2.0**18)


def test_a_donated_step_from_a_fresh_state():
    # The groups' record shares arrays among groups; a skipped step passes
    # them through, so each must be its own buffer to be donated.
    opt = O.loss_scale(O.adamw(0.1, groups={"b": {"weight_decay": 0.0}}), init_scale=1.0)
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    step = jax.jit(lambda g, s, p: opt.step(g, s, p), donate_argnums=(1, 2))
    params, state = step(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
    assert float(params["w"][0]) == pytest.approx(0.899, rel=1e-5)  # AdamW, decay 0.01


def test_checkpoint_resume_is_bit_identical(tmp_path):
    from cadence import checkpoint

    opt = O.loss_scale(
        O.master_weights(O.adamw(S.cosine(1e-2, 8), groups={"b": {"weight_decay": 0.0}})),
        init_scale=16.0,
        growth_interval=2,
    )
    script = [1.0, jnp.inf, 1.0, 1.0, jnp.nan, 1.0]

    def grads(k):
        g = jnp.asarray([script[k], 0.5], jnp.float16) * (k + 1)
        return {"w": g, "b": g[::-1]}

    step = jax.jit(opt.step)

    def train(params, state, start, stop):
        for k in range(start, stop):
            params, state = step(grads(k), state, params)
        return params, state

    params = {"w": jnp.ones(2, jnp.float16), "b": jnp.zeros(2, jnp.float16)}
    full = train(params, opt.init(params), 0, len(script))
    half = train(params, opt.init(params), 0, 3)
    checkpoint.save(tmp_path, 3, *half, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    resumed = train(restored.params, restored.opt_state, 3, len(script))
    assert int(resumed[1].inner.inner.count) == 4  # two of six steps skipped
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
        assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()
