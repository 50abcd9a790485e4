"""Step counts past int32, and finite values at every step a count can reach.

Token-counted runs pass 2**31 steps: step counts, boundaries and Python-int
steps of any size must work (they raised OverflowError when an int32 constant
was made of them), and every schedule must stay finite on [0, 2**31 - 1], the
range of a saturating int32 count (exponential decays gave NaN from 13M steps).
References: torch's closed forms (``_get_closed_form_lr`` at a set
``last_epoch``), optax where it takes such counts, and float64 formulas.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadence import optimizers as O
from cadence import schedules as S

from .examples import EXAMPLES

BIG = [2**31 - 1, 2**31, 10**10]
N = 3 * 10**10  # a horizon past all of BIG


def _close(ours: object, theirs: object, *, rtol: float = 2e-6) -> None:
    # float32 holds steps past 2**24 rounded; 2e-6 covers that and the arithmetic.
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=rtol, atol=0)


def test_optax_giant_int_steps() -> None:
    # optax's _schedule_test.py, test_with_giant_int_steps: decay_steps = 1e10.
    s = S.cosine(1000.0, int(1e10))
    np.testing.assert_allclose(s(int(1e9)), 975.52826, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(s)(int(1e9)), 975.52826, rtol=1e-6)


@pytest.mark.parametrize("step", BIG)
def test_against_optax_at_giant_steps(step: int) -> None:
    pairs = [
        (S.cosine(1.0, N), optax.cosine_decay_schedule(1.0, N)),
        (S.exponential(1.0, 0.5, every=2**31), optax.exponential_decay(1.0, 2**31, 0.5)),
        (
            S.exponential(1.0, 0.5, every=2**31, staircase=True),
            optax.exponential_decay(1.0, 2**31, 0.5, staircase=True),
        ),
    ]
    for ours, theirs in pairs:
        _close(ours(step), float(theirs(step)))


def _torch_closed_form(make, step: int) -> float:
    torch = pytest.importorskip("torch")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make(torch.optim.lr_scheduler, optimizer)
    scheduler.last_epoch = step
    return float(scheduler._get_closed_form_lr()[0])


TORCH_CLOSED_FORMS = {
    "StepLR": (lambda L, o: L.StepLR(o, 2**31, 0.5), S.step_decay(1.0, 2**31, 0.5)),
    "MultiStepLR": (
        lambda L, o: L.MultiStepLR(o, [2**31, 10**10], 0.1),
        S.multistep(1.0, (2**31, 10**10), 0.1),
    ),
    "ExponentialLR": (lambda L, o: L.ExponentialLR(o, 1 - 1e-10), S.exponential(1.0, 1 - 1e-10)),
    "CosineAnnealingLR": (lambda L, o: L.CosineAnnealingLR(o, N, 0.01), S.cosine(1.0, N, 0.01)),
    "LinearLR": (
        lambda L, o: L.LinearLR(o, start_factor=0.5, end_factor=1.0, total_iters=N),
        S.linear(0.5, 1.0, N),
    ),
    "PolynomialLR": (lambda L, o: L.PolynomialLR(o, N, 2.0), S.polynomial(1.0, N, power=2.0)),
}


@pytest.mark.parametrize("name", TORCH_CLOSED_FORMS)
@pytest.mark.parametrize("step", BIG)
def test_against_torch_closed_forms_at_giant_steps(name: str, step: int) -> None:
    make, ours = TORCH_CLOSED_FORMS[name]
    # In float32 a step past 2**24 is rounded (2**31 - 1 counts as 2**31);
    # under jax_enable_x64 it is exact (test_float64_is_exact_at_giant_steps).
    _close(ours(step), _torch_closed_form(make, int(np.float32(step))))


def _warmup_cosine(t: float) -> float:
    w, d = 2**31, N - 2**31
    if t < w:
        return t / w
    return 0.5 * (1 + math.cos(math.pi * min(t - w, d) / d))


# Every other combinator and named schedule with a count or boundary past
# int32, against its float64 formula.
FORMULAS = {
    "warmup": (S.warmup(S.cosine(1.0, N - 2**31), 2**31), _warmup_cosine),
    "join": (
        S.join([S.constant(1.0), S.linear(1.0, 0.0, N)], [2**31]),
        lambda t: 1.0 if t < 2**31 else 1.0 - (t - 2**31) / N,
    ),
    "wsd": (
        S.wsd(1.0, 2**30, 2**31, N, end=0.1),
        lambda t: (
            0.1 + 0.9 * t / 2**30
            if t < 2**30
            else 1.0
            if t < 2**30 + 2**31
            else 1.0 - 0.9 * (t - 2**30 - 2**31) / N
        ),
    ),
    "per_epoch": (
        S.per_epoch(S.step_decay(1.0, 1, 0.5), 2**31),
        lambda t: 0.5 ** (t // 2**31),
    ),
    "restarts-limit": (
        S.restarts(S.cosine(1.0, 10, end=0.25), 10, limit=2**31),
        lambda t: 0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * (t % 10) / 10)),
    ),
    "restarts-period": (
        S.restarts(S.cosine(1.0, 2**32), 2**32),
        lambda t: 0.5 * (1 + math.cos(math.pi * (t % 2**32) / 2**32)),
    ),
    "get-linear": (
        S.get("linear", 1.0, 100, 10**11),
        lambda t: t / 100 if t < 100 else (10**11 - t) / (10**11 - 100),
    ),
    "piecewise": (S.piecewise((2**31,), (1.0, 0.5)), lambda t: 1.0 if t < 2**31 else 0.5),
}


@pytest.mark.parametrize("name", FORMULAS)
def test_counts_past_int32_against_float64_formulas(name: str) -> None:
    s, formula = FORMULAS[name]
    for step in [0, 12345, *BIG]:
        # float32 rounds steps past 2**24; the formula sees the same rounded step.
        _close(s(step), formula(float(np.float32(step))))


@pytest.mark.parametrize("step", BIG)
def test_python_and_numpy_int_steps_past_int32(step: int) -> None:
    s = S.linear(1.0, 0.0, N)
    expected = 1.0 - float(np.float32(step)) / N
    _close(s(step), expected)
    _close(s(np.int64(step)), expected)
    _close(s(np.array([step, step], dtype=np.int64)), [expected, expected])


def test_float64_is_exact_at_giant_steps(x64: None) -> None:
    for step in BIG:
        np.testing.assert_allclose(S.linear(1.0, 0.0, N)(step), 1.0 - step / N, rtol=1e-14)
    for name, (make, ours) in TORCH_CLOSED_FORMS.items():
        for step in BIG:
            theirs = _torch_closed_form(make, step)
            np.testing.assert_allclose(ours(step), theirs, rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(
        S.cosine(1000.0, int(1e10))(int(1e9)), 1000 * 0.5 * (1 + math.cos(math.pi / 10))
    )


# ------------------------------------------------------------------ finiteness

EDGES = np.array([0, 1, 2**24 + 1, 13_199_884, 64_000_000, 10**8, 2**31 - 2, 2**31 - 1])


def test_exponential_no_nan_at_large_steps() -> None:
    # exp(head * e) underflowed to 0 while exp(tail * e) overflowed: 0 * inf.
    s = S.exponential(1e-3, 0.95, end=1e-5)
    np.testing.assert_allclose(s(13_000_000), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(s(13_199_884), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(s(EDGES[2:]), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(S.exponential(1.0, 0.99)(EDGES[3:]), 0.0)
    np.testing.assert_allclose(S.exponential(0.0, 2.0, end=0.0)(EDGES), 0.0)  # not 0 * inf
    grow = S.exponential(1e-3, 1.05, end=0.1)
    np.testing.assert_allclose(grow(EDGES[2:]), 0.1, rtol=1e-6)


def test_cyclic_exp_range_no_nan_at_large_steps() -> None:
    s = S.cyclic(0.1, 1.0, 10, mode="exp_range", gamma=0.99)
    np.testing.assert_allclose(s(EDGES[2:]), 0.1, rtol=1e-6)
    m = S.cyclic_momentum(0.8, 0.9, 10, mode="exp_range", gamma=0.99)
    np.testing.assert_allclose(m(EDGES[2:]), 0.9, rtol=1e-6)


def test_sgd_with_exponential_decay_is_finite_at_count_1e8() -> None:
    # The report: NaN updates at count 1e8.
    tx = O.sgd(S.exponential(0.1, 0.99, end=1e-3))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    state = jax.tree.map(
        lambda x: jnp.full_like(x, 10**8) if jnp.issubdtype(x.dtype, jnp.integer) else x, state
    )
    updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-6)


# Values that grow without bound (a rate, gamma or cycle decay > 1 with no
# `end`, or from a negative start under a ceiling) overflow where the true
# value does, so growth here always has a bound; everything else must be
# finite at every step. Random members of every type, plus the examples.
finite_values = st.floats(-10.0, 10.0, allow_nan=False)
positive = st.floats(1e-3, 10.0)
rates = st.floats(1e-3, 1.0)
counts = st.integers(1, 2**31 - 1)


@st.composite
def any_schedule(draw: st.DrawFn) -> S.Schedule:
    a, b = draw(finite_values), draw(finite_values)
    n, m = draw(counts), draw(st.integers(1, 1000))
    builders = [
        lambda: S.constant(a),
        lambda: S.linear(a, b, n),
        lambda: S.cosine(a, n, b, draw(st.sampled_from([0.5, 1.0, 1.5])), draw(positive)),
        lambda: S.polynomial(a, n, b, draw(positive)),
        lambda: S.exponential(a, draw(rates), m, draw(st.booleans()), draw(finite_values)),
        lambda: S.exponential(abs(a), 1 + draw(rates), m, end=abs(b) + abs(a)),
        lambda: S.step_decay(a, m, draw(rates)),
        lambda: S.multistep(a, sorted(draw(st.lists(counts, max_size=3))), draw(rates)),
        lambda: S.piecewise((n,), (a, b)),
        lambda: S.inverse_sqrt(a, draw(st.integers(1, 10**6))),
        lambda: S.noam(draw(st.integers(1, 4096)), draw(counts)),
        lambda: S.one_cycle(a, max(n, 10)),
        lambda: S.one_cycle_momentum(max(n, 10), base=a, peak=b, three_phase=True),
        lambda: S.cyclic(
            a, b, m, draw(counts), draw(st.sampled_from(["triangular2", "exp_range"])), draw(rates)
        ),
        lambda: S.cyclic_momentum(a, b, n, mode="exp_range", gamma=draw(rates)),
        lambda: S.wsd(a, m, n, draw(counts), b, draw(st.sampled_from(["cosine", "1-sqrt"]))),
        lambda: S.warmup(S.cosine(a, n), m, b),
        lambda: S.restarts(S.cosine(a, m, b), m, draw(st.floats(1.0, 3.0)), draw(rates)),
        lambda: S.restarts(S.exponential(a, draw(rates), end=b), m, decay=draw(rates)),
        lambda: S.join([S.constant(a), S.linear(a, b, n)], [m]),
        lambda: S.per_epoch(S.step_decay(a, 2, draw(rates)), m),
        lambda: S.shift(S.cosine(a, n), m),
        lambda: S.clip(S.linear(a, b, n), lo=min(a, b)),
        lambda: S.get("cosine_with_restarts", abs(a), m, m + n, num_cycles=3),
        lambda: a * S.cosine(1.0, n) + b,
    ]
    return draw(st.sampled_from(builders))()


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(any_schedule(), st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=4))
def test_every_schedule_is_finite_on_the_int32_range(s: S.Schedule, steps: list[int]) -> None:
    values = np.asarray(s(np.concatenate([EDGES, steps])))
    assert np.all(np.isfinite(values)), (s, values)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_finite_on_the_int32_range(name: str) -> None:
    values = np.asarray(EXAMPLES[name](EDGES))
    assert np.all(np.isfinite(values)), values
    saturated = np.asarray(EXAMPLES[name](jnp.array(2**31 - 1, jnp.int32)))
    assert np.isfinite(saturated)
