"""Bad input raises at construction, naming the argument."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import schedules as S

C = S.constant(1.0)

BAD = [
    (lambda: S.linear(1.0, 0.0, 0), ValueError, "steps must be >= 1"),
    (lambda: S.linear(1.0, 0.0, -5), ValueError, "steps"),
    (lambda: S.linear(1.0, 0.0, 2.5), TypeError, "steps must be an integer"),
    (lambda: S.linear(math.nan, 0.0, 10), ValueError, "init must not be NaN"),
    (lambda: S.linear("1", 0.0, 10), TypeError, "init must be a number"),
    (lambda: S.linear(True, 0.0, 10), TypeError, "init"),
    # Issue 20 item 4: infinity, True as a step count, arrays that skipped range checks.
    (lambda: S.linear(math.inf, 0.0, 10), ValueError, "init must be finite"),
    (lambda: S.linear(1 + 2j, 0.0, 10), TypeError, "init must be a real number"),
    (lambda: S.constant(3.5e38), ValueError, "value must be finite .within float32's range"),
    (lambda: S.piecewise((1,), (1.0, -1e39)), ValueError, "values must be finite"),
    (lambda: S.cosine(1.0, 10, end=np.complex64(1)), TypeError, "end must be a real number"),
    (lambda: S.constant(jnp.array(1 + 0j)), TypeError, "value must be real"),
    (lambda: S.cosine(1.0, 10, end=-math.inf), ValueError, "end must be finite"),
    (lambda: S.clip(C, lo=-math.inf), ValueError, "lo must be finite"),
    (lambda: S.piecewise((10,), (1.0, math.inf)), ValueError, "values must be finite"),
    (lambda: S.constant(1.0) * math.inf, ValueError, "right must be finite"),
    (lambda: S.linear(1.0, 0.0, True), TypeError, "steps must be an integer, got True"),
    (lambda: S.warmup(C, True), TypeError, "steps must be an integer, got True"),
    (lambda: S.restarts(C, 10, limit=True), TypeError, "limit must be an integer"),
    (lambda: S.exponential(1.0, jnp.float32(0.0)), ValueError, "rate must be > 0"),
    (lambda: S.exponential(1.0, np.array(-0.5)), ValueError, "rate must be > 0"),
    (lambda: S.cosine(1.0, 10, k=jnp.array(-1.0)), ValueError, "k must be > 0"),
    (lambda: S.step_decay(1.0, 10, jnp.array(-0.1)), ValueError, "gamma must be >= 0"),
    (lambda: S.linear(jnp.array(jnp.inf), 0.0, 10), ValueError, "init must be finite"),
    (lambda: S.constant(jnp.array([1.0, jnp.nan])), ValueError, "value must not be NaN"),
    (lambda: S.constant(1.0) / jnp.float32(0.0), ValueError, "division by zero"),
    (lambda: S.get("inverse_sqrt", 1.0, timescale=0), ValueError, "timescale must be > 0"),
    (lambda: S.get("inverse_sqrt", 1.0, 10, timescale=0), ValueError, "timescale must be > 0"),
    (lambda: S.constant(math.nan), ValueError, "value must not be NaN"),
    (lambda: S.cosine(1.0, 0), ValueError, "steps must be > 0"),
    (lambda: S.cosine(1.0, 10, k=0.0), ValueError, "k must be > 0"),
    (lambda: S.cosine(1.0, 10, cycles=-1.0), ValueError, "cycles"),
    (lambda: S.cosine(1.0, math.inf), ValueError, "steps must be finite"),
    (lambda: S.polynomial(1.0, 10, power=0.0), ValueError, "power must be > 0"),
    (lambda: S.exponential(1.0, 0.0), ValueError, "rate must be > 0"),
    (lambda: S.exponential(1.0, 0.9, every=0), ValueError, "every"),
    (lambda: S.exponential(1.0, 0.9, staircase=1), TypeError, "staircase must be a bool"),
    (lambda: S.step_decay(1.0, 0, 0.1), ValueError, "every"),
    (lambda: S.step_decay(1.0, 10, -0.1), ValueError, "gamma must be >= 0"),
    (lambda: S.multistep(1.0, (-1, 10), 0.1), ValueError, "milestones must be >= 0"),
    (lambda: S.multistep(1.0, 10, 0.1), TypeError, "milestones"),
    (lambda: S.piecewise((10, 10), (1.0, 0.5, 0.1)), ValueError, "strictly increasing"),
    (lambda: S.piecewise((10,), (1.0,)), ValueError, "values must have"),
    (lambda: S.piecewise((10,), (1.0, math.nan)), ValueError, "values must be finite"),
    (lambda: S.inverse_sqrt(1.0, 0), ValueError, "timescale"),
    (lambda: S.noam(0, 10), ValueError, "d_model"),
    (lambda: S.noam(512, 0), ValueError, "warmup"),
    (lambda: S.one_cycle(1.0, 100, anneal="cosine"), ValueError, "unknown anneal"),
    (lambda: S.one_cycle(1.0, 100, pct_start=1.0), ValueError, "pct_start"),
    (lambda: S.one_cycle(1.0, 100, pct_start=0.005), ValueError, "pct_start"),
    (lambda: S.one_cycle(1.0, 100, pct_start=0.6, three_phase=True), ValueError, "pct_start"),
    (lambda: S.one_cycle(1.0, 1), ValueError, "steps"),
    (lambda: S.one_cycle(1.0, 100, div_factor=0.0), ValueError, "div_factor"),
    (lambda: S.cyclic(0.1, 1.0, 0), ValueError, "up must be > 0"),
    (lambda: S.cyclic(0.1, 1.0, 10, mode="triangle"), ValueError, "unknown mode"),
    (lambda: S.cyclic(0.1, 1.0, 10, -3), ValueError, "down"),
    (lambda: S.wsd(1.0, 10, 10, 10, shape="exp"), ValueError, "unknown shape"),
    (lambda: S.wsd(1.0, 10, 10, 10, warmup_shape="exp"), ValueError, "unknown warmup_shape"),
    (lambda: S.wsd(1.0, -1, 10, 10), ValueError, "warmup"),
    (lambda: S.from_fn(3.0), TypeError, "fn must be callable"),
    (lambda: S.join([C, C], []), ValueError, "boundaries must have len"),
    (lambda: S.join([C, C], [5, 6]), ValueError, "boundaries must have len"),
    (lambda: S.join([C, C, C], [6, 5]), ValueError, "strictly increasing"),
    (lambda: S.join([C, C], [-1]), ValueError, "boundaries must be >= 0"),
    (lambda: S.join([], []), ValueError, "at least 1"),
    (lambda: S.join([C, 1.0], [5]), TypeError, "schedules must hold schedules"),
    (lambda: S.join(C, [5]), TypeError, "sequence of schedules"),
    (lambda: S.warmup(C, -1), ValueError, "steps must be >= 0"),
    (lambda: S.warmup(0.1, 10), TypeError, "s must be a Schedule"),
    (lambda: S.restarts(C, 0), ValueError, "period must be > 0"),
    (lambda: S.restarts(C, 10, mult=0.5), ValueError, "mult must be >= 1"),
    (lambda: S.restarts(C, 10, decay=0.0), ValueError, "decay must be > 0"),
    (lambda: S.restarts(C, 10, limit=0), ValueError, "limit must be >= 1"),
    (lambda: S.per_epoch(C, 0), ValueError, "steps_per_epoch"),
    (lambda: S.clip(C), ValueError, "give lo, hi or both"),
    (lambda: S.clip(C, lo=1.0, hi=0.5), ValueError, "lo must be <= hi"),
    (lambda: S.get("cosine_annealing", 1.0), ValueError, "known names: constant"),
    (lambda: S.get("cosine", 1.0, 10), ValueError, "total_steps is required"),
    (lambda: S.get("cosine", 1.0, 10, 10), ValueError, "total_steps must be > warmup_steps"),
    (lambda: S.get("cosine", 1.0, -1, 10), ValueError, "warmup_steps must be >= 0"),
    (lambda: S.get("cosine", 1.0, 0, 10, lr_end=0.1), ValueError, "unknown keyword"),
    (lambda: S.get("polynomial", 1e-3, 0, 10, lr_end=1e-2), ValueError, "lr_end"),
    (lambda: S.get("cosine_with_min_lr", 1.0, 0, 10), ValueError, "exactly one of"),
    (lambda: S.get("warmup_stable_decay", 1.0, 0, 10), ValueError, "num_decay_steps"),
]


@pytest.mark.parametrize(("build", "error", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise_naming_them(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_errors_name_the_schedule_type():
    with pytest.raises(ValueError, match=r"^cosine: steps must be > 0, got 0$"):
        S.cosine(1.0, 0)


def test_validation_lets_tracers_through():
    # jit and vmap rebuild schedules with traced leaves; validation must not
    # call float() on them.
    s = S.exponential(1.0, 0.9, end=0.1)
    out = jax.jit(lambda s: s(3))(s)
    np.testing.assert_allclose(out, 0.729, rtol=1e-6)
    out = jax.vmap(lambda r: S.exponential(1.0, r)(2))(jnp.array([0.5, 0.9]))
    np.testing.assert_allclose(out, [0.25, 0.81], rtol=1e-6)


def test_bad_steps_raise_type_error():
    with pytest.raises(TypeError, match="step"):
        C("3")
    with pytest.raises(TypeError, match="step"):
        C(True)
    with pytest.raises(TypeError, match="step"):
        C(np.bool_(True))
    with pytest.raises(TypeError, match="dtype bool"):
        C(jnp.array([True, False]))
    with pytest.raises(TypeError, match="step"):
        C(None)


def test_unsorted_milestones_count_as_torch_counts_them():
    # torch's MultiStepLR keeps its milestones in a Counter: order is irrelevant.
    s = S.multistep(1.0, (30, 10, 10), 0.5)
    assert s == S.multistep(1.0, (10, 10, 30), 0.5)
    assert s.milestones == (10, 10, 30)
    np.testing.assert_allclose(s(jnp.array([9, 10, 29, 30])), [1.0, 0.25, 0.25, 0.125])
