"""The README's "Coming from optax" and "Coming from PyTorch" schedule rows, run live.

Each row's cadence expression against the library it replaces, on several
configurations, plus expected values taken from the references' own tests
(optax's ``_schedule_test.py`` and ``_join_test.py``, torch's
``test/optim/test_lrscheduler.py``, transformers'
``tests/optimization/test_optimization.py``). optax is a dependency, so its
rows always run; torch and transformers rows skip when those are missing (the
torch rows that are whole runs are golden parity cases too).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import schedules as S

STEPS = jnp.arange(400)


def _assert_row(ours: S.Schedule, theirs: Any, steps: jax.Array = STEPS, rtol: float = 1e-6):
    # vmap: some optax schedules take one step at a time.
    np.testing.assert_allclose(ours(steps), jax.vmap(theirs)(steps), rtol=rtol, atol=1e-9)


# ------------------------------------------------------------------ optax rows


def _sgdr_cycle(init: float, peak: float, warmup: int, decay: int, end: float) -> S.Schedule:
    """One optax warmup_cosine_decay_schedule cycle (its decay_steps include the warmup)."""
    return S.warmup(S.cosine(peak, decay - warmup, end=end), warmup, init=init)


@pytest.mark.parametrize(("init", "end", "cycles"), [(0.0, 1e-5, 3), (1e-4, 0.0, 2), (0.0, 0.0, 1)])
def test_sgdr_equal_cycles(init: float, end: float, cycles: int) -> None:
    # Without limit= a fourth cycle started where optax holds the end value
    # (step 300: 0.0 for 1e-5).
    kw = dict(init_value=init, peak_value=1e-3, warmup_steps=10, decay_steps=100, end_value=end)
    theirs = optax.sgdr_schedule([kw] * cycles)
    ours = S.restarts(_sgdr_cycle(init, 1e-3, 10, 100, end), 100, limit=cycles)
    _assert_row(ours, theirs)
    np.testing.assert_allclose(ours(300), theirs(300), rtol=1e-6, atol=0)


def test_sgdr_unequal_cycles_with_join() -> None:
    kws = [
        dict(init_value=0.0, peak_value=1e-3, warmup_steps=10, decay_steps=100, end_value=1e-5),
        dict(init_value=1e-5, peak_value=5e-4, warmup_steps=5, decay_steps=150, end_value=1e-6),
        dict(init_value=0.0, peak_value=2e-4, warmup_steps=0, decay_steps=80, end_value=0.0),
    ]
    theirs = optax.sgdr_schedule(kws)
    cycles = [
        _sgdr_cycle(
            k["init_value"], k["peak_value"], k["warmup_steps"], k["decay_steps"], k["end_value"]
        )
        for k in kws
    ]
    ours = S.join(cycles, [100, 250])
    _assert_row(ours, theirs)


@pytest.mark.parametrize(("lr0", "lr1", "lr2"), [(1.6, 0.8, 0.4), (1.6, 1.6, 1.6)])
def test_sgdr_optax_limits(lr0: float, lr1: float, lr2: float) -> None:
    # optax's SGDRTest.test_limits: the peaks of three cycles of 2000, 3000, 5000.
    cycles = [
        _sgdr_cycle(0.0, lr, 500, decay, 0.0)
        for decay, lr in zip([2000, 3000, 5000], [lr0, lr1, lr2], strict=True)
    ]
    s = jax.jit(S.join(cycles, [2000, 5000]))
    np.testing.assert_allclose([s(500), s(2500), s(5500)], [lr0, lr1, lr2], rtol=1e-6)


def _onecycle(n: int, peak: float, pct: float = 0.3, div: float = 25.0, final: float = 1e4):
    """optax.cosine_onecycle_schedule exactly: cosine up to int(pct * n), down to n."""
    b = int(pct * n)
    return S.join(
        [S.cosine(peak / div, b, end=peak), S.cosine(peak, n - b, end=peak / (div * final))], [b]
    )


@pytest.mark.parametrize(
    ("n", "kw"),
    [
        (100, {}),
        (57, {}),
        (200, dict(pct_start=0.25, div_factor=10.0)),
        (5, dict(pct_start=0.4, div_factor=10.0, final_div_factor=100.0)),
    ],
)
def test_cosine_onecycle_exact_equivalent(n: int, kw: dict) -> None:
    theirs = optax.cosine_onecycle_schedule(n, 1e-3, **kw)
    ours = _onecycle(
        n,
        1e-3,
        kw.get("pct_start", 0.3),
        kw.get("div_factor", 25.0),
        kw.get("final_div_factor", 1e4),
    )
    _assert_row(ours, theirs, jnp.arange(n + 20))


def test_cosine_onecycle_optax_expected_values() -> None:
    # optax's OneCycleTest.test_cosine.
    s = jax.jit(_onecycle(5, 1000.0, 0.4, 10.0, 100.0))
    np.testing.assert_allclose(
        [s(k) for k in range(7)], [100.0, 550.0, 1000.0, 750.25, 250.75, 1.0, 1.0], atol=1e-3
    )


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize(
    ("rate", "end"), [(0.5, 0.1), (0.5, 2.0), (1.5, 4.0), (1.5, 0.5), (0.9, None)]
)
def test_exponential_decay_with_transition_begin(staircase: bool, rate: float, end: float | None):
    # optax holds init_value before transition_begin and clips every step,
    # those too, at end_value: with a rate that moves away from end_value
    # (0.5 towards 2.0) the whole schedule is end_value.
    theirs = optax.exponential_decay(
        1.0, 4, rate, transition_begin=3, staircase=staircase, end_value=end
    )
    decay = S.join([S.constant(1.0), S.exponential(1.0, rate, every=4, staircase=staircase)], [3])
    if end is None:
        ours = decay
    elif rate < 1:
        ours = S.clip(decay, lo=end)
    else:
        ours = S.clip(decay, hi=end)
    _assert_row(ours, theirs, jnp.arange(60))


def test_exponential_decay_optax_expected_values() -> None:
    # optax's ExponentialTest.test_immutable_count: 32 halving every step.
    s = S.exponential(32.0, 0.5)
    np.testing.assert_allclose([s(k) for k in range(5)], [32, 16, 8, 4, 2], atol=1e-3)


@pytest.mark.parametrize("exponent", [0.5, 2.0, 3.0])
def test_cosine_exponent_with_from_fn(exponent: float) -> None:
    # optax's cosine `exponent` has no primitive; the README's from_fn row.
    v, n, alpha = 0.1, 100, 0.02

    def fn(t: jax.Array) -> jax.Array:
        decay = 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, n) / n))
        return v * ((1 - alpha) * decay**exponent + alpha)

    theirs = optax.cosine_decay_schedule(v, n, alpha, exponent)
    _assert_row(S.from_fn(fn), theirs, jnp.arange(150), rtol=1e-5)


def test_cosine_exponent_optax_expected_values() -> None:
    # optax's CosineDecayTest.test_with_exponent (init 0.1, 100 steps, exponent 2).
    s = S.from_fn(lambda t: 0.1 * (0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(t, 100) / 100))) ** 2)
    np.testing.assert_allclose(
        s(jnp.array([0, 10, 50, 75, 100])),
        [0.1, 0.09516553580760956, 0.025, 0.0021446612663567066, 0.0],
        rtol=1e-5,
        atol=1e-9,
    )


def test_join_optax_expected_values() -> None:
    # optax's _join_test.py: constants 1, 2, 3 joined at 3 and 6.
    s = S.join([S.constant(1.0), S.constant(2.0), S.constant(3.0)], [3, 6])
    np.testing.assert_allclose(s(jnp.arange(9)), [1, 1, 1, 2, 2, 2, 3, 3, 3])


def test_warmup_cosine_decay_optax_limits() -> None:
    # optax's WarmupCosineDecayTest.test_limits.
    for init, peak, end in [(10.0, 0.5, 1e-4), (5.0, 3.0, 0.0)]:
        s = S.warmup(S.cosine(peak, 900, end=end), 100, init=init)
        np.testing.assert_allclose([s(0), s(100)], [init, peak], rtol=1e-6)
        np.testing.assert_allclose(s(1000), end, rtol=1e-3, atol=1e-9)


# ------------------------------------------------------------------ torch rows


def _torch_lrs(make: Any, n: int, lr: float = 0.1) -> np.ndarray:
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_lambda_lr_row_with_jnp_where() -> None:
    # A Python `if` on the step cannot be traced; jnp.where can.
    def factor(k: int) -> float:
        return (k + 1) / 10 if k < 10 else 0.95 ** (k - 10)

    theirs = _torch_lrs(lambda L, o: L.LambdaLR(o, factor), 60)
    ours = S.from_fn(lambda t: 0.1 * jnp.where(t < 10, (t + 1) / 10, 0.95 ** (t - 10)))
    np.testing.assert_allclose(jax.jit(ours)(jnp.arange(60)), theirs, rtol=1e-6)
    untraceable = S.from_fn(lambda t: 0.1 * ((t + 1) / 10 if t < 10 else 0.95 ** (t - 10)))
    with pytest.raises(jax.errors.TracerBoolConversionError):
        jax.jit(untraceable)(3)


def test_chained_scheduler_is_not_a_product_with_a_floor() -> None:
    # The README row says when the product holds; with eta_min it does not
    # (torch 0.0424771, the product 0.0424738 at step 51; 0.87 apart at step 199).
    theirs = _torch_lrs(
        lambda L, o: L.ChainedScheduler([L.CosineAnnealingLR(o, 200, 1e-3), L.StepLR(o, 50, 0.5)]),
        120,
    )
    product = S.cosine(0.1, 200, end=1e-3) * S.step_decay(1.0, 50, 0.5)
    ours = np.asarray(product(jnp.arange(120)), np.float64)
    np.testing.assert_allclose(ours[:51], theirs[:51], rtol=1e-6)
    assert abs(ours[51] - theirs[51]) / theirs[51] > 5e-5
    assert np.max(np.abs(ours - theirs) / theirs) > 0.01


def test_torch_closed_form_expectations() -> None:
    # torch's test_lrscheduler.py closed forms: StepLR(3, 0.1), MultiStepLR([2, 5, 9], 0.1)
    # and ExponentialLR(0.9) from lr 0.05 over 10 epochs.
    steps = jnp.arange(10)
    np.testing.assert_allclose(
        S.step_decay(0.05, 3, 0.1)(steps), [0.05] * 3 + [0.005] * 3 + [0.0005] * 3 + [0.00005]
    )
    np.testing.assert_allclose(
        S.multistep(0.05, (2, 5, 9), 0.1)(steps),
        [0.05] * 2 + [0.005] * 3 + [0.0005] * 4 + [0.00005],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        S.exponential(0.05, 0.9)(steps), [0.05 * 0.9**k for k in range(10)], rtol=1e-6
    )
    # CosineAnnealingLR(T_max=10, eta_min=1e-10) from lr 0.05, epochs 0..9.
    expected = [1e-10 + (0.05 - 1e-10) * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(10)]
    np.testing.assert_allclose(S.cosine(0.05, 10, end=1e-10)(steps), expected, rtol=1e-6)


def test_torch_cyclic_and_one_cycle_expectations() -> None:
    # torch's test_cycle_lr_triangular_mode: base 1, max 5, step_size_up 4,
    # base_momentum 1, max_momentum 5.
    steps = jnp.arange(11)
    np.testing.assert_allclose(S.cyclic(1.0, 5.0, 4)(steps), [1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3])
    np.testing.assert_allclose(
        S.cyclic_momentum(1.0, 5.0, 4)(steps), [5, 4, 3, 2, 1, 2, 3, 4, 5, 4, 3]
    )
    # test_onecycle_lr_linear_annealing: max_lr 25, final_div_factor 2,
    # base_momentum 1, max_momentum 22, total_steps 10.
    lr = S.one_cycle(25.0, 10, final_div_factor=2.0, anneal="linear")
    np.testing.assert_allclose(
        lr(steps[:10]), [1, 13, 25, 21.5, 18, 14.5, 11, 7.5, 4, 0.5], rtol=1e-6
    )
    np.testing.assert_allclose(
        lr.momentum(1.0, 22.0)(steps[:10]), [22, 11.5, 1, 4, 7, 10, 13, 16, 19, 22], rtol=1e-6
    )


def test_transformers_expected_values() -> None:
    # transformers' ScheduleInitTest.test_schedulers: lr 10, 10 steps,
    # num_warmup_steps 2 and num_training_steps 10 unless stated.
    expected = {
        ("constant", 0, None, ()): [10.0] * 10,
        ("constant_with_warmup", 4, None, ()): [0.0, 2.5, 5.0, 7.5] + [10.0] * 6,
        ("linear", 2, 10, ()): [0.0, 5.0, 10.0, 8.75, 7.5, 6.25, 5.0, 3.75, 2.5, 1.25],
        ("cosine", 2, 10, ()): [0.0, 5.0, 10.0, 9.61, 8.53, 6.91, 5.0, 3.08, 1.46, 0.38],
        ("cosine_with_restarts", 2, 10, (("num_cycles", 2),)): [
            *[0.0, 5.0, 10.0, 8.53, 5.0, 1.46, 10.0, 8.53, 5.0, 1.46]
        ],
        ("polynomial", 2, 10, (("power", 2.0), ("lr_end", 1e-7))): [
            *[0.0, 5.0, 10.0, 7.656, 5.625, 3.906, 2.5, 1.406, 0.625, 0.156]
        ],
        ("inverse_sqrt", 2, None, ()): [
            *[0.0, 5.0, 10.0, 8.165, 7.071, 6.325, 5.774, 5.345, 5.0, 4.714]
        ],
    }
    for (name, warmup, total, kw), values in expected.items():
        s = S.get(name, 10.0, warmup, total, **dict(kw))
        np.testing.assert_allclose(s(jnp.arange(10)), values, atol=1e-2, err_msg=name)


def test_get_knows_every_transformers_scheduler_name() -> None:
    transformers = pytest.importorskip("transformers")
    names = [t.value for t in transformers.SchedulerType]
    assert "cosine_warmup_with_min_lr" in names
    for name in names:
        if name in S.NAMES:
            continue
        # The metric-driven ones: reduce_lr_on_plateau and greedy (GreedyLR).
        with pytest.raises(ValueError, match=r"is not a schedule: .*O\.reduce_on_plateau"):
            S.get(name, 1e-3, 10, 100)
    assert set(names) - set(S.NAMES) == {"reduce_lr_on_plateau", "greedy"}


def test_metric_driven_names_point_at_the_wrapper() -> None:
    for name in ("reduce_lr_on_plateau", "greedy"):
        with pytest.raises(ValueError, match="O.reduce_on_plateau"):
            S.get(name, 1e-3)
