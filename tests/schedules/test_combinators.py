"""Combinators against their closed forms, with boundary semantics tested at b-1, b, b+1."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import schedules as S

from .test_primitives import check, values


def exact(s: S.Schedule, t: np.ndarray | None = None) -> np.ndarray:
    """Values in float64 (the primitives are checked against their closed forms)."""
    with jax.enable_x64(True):
        return values(s) if t is None else values(s, t)


@pytest.mark.parametrize("b", [1, 10, 57])
def test_join_switches_at_the_boundary(b):
    first, second = S.constant(7.0), S.linear(1.0, 0.0, 10)
    s = S.join([first, second], [b])
    v = values(s, np.array([b - 1, b, b + 1]))
    # At step == b the second schedule starts at its own step 0.
    np.testing.assert_allclose(v, [7.0, 1.0, 0.9], rtol=1e-7)


def test_join_three_schedules_local_steps():
    a, b, c = S.linear(0.0, 1.0, 10), S.cosine(1.0, 40), S.exponential(0.5, 0.9)
    s = S.join([a, b, c], [10, 50])
    t = np.arange(0, 120)
    expected = np.where(t < 10, exact(a, t), np.where(t < 50, exact(b, t - 10), exact(c, t - 50)))
    check(s, expected, t)


def test_warmup_ramps_linearly_to_the_first_value():
    inner = S.cosine(1.0, 90, end=0.1)
    s = S.warmup(inner, 10, init=0.2)
    t = np.arange(0, 130)
    expected = np.where(t < 10, 0.2 + (1.0 - 0.2) * t / 10, exact(inner, np.maximum(t - 10, 0)))
    check(s, expected, t)
    np.testing.assert_allclose(
        values(s, np.array([9, 10, 11])), [0.92, 1.0, values(inner, np.array([1]))[0]]
    )
    assert S.warmup(inner, 0)(5) == inner(5)


def _timm_closed_form(t, lr, lr_min, t0, mult, decay, limit, k=1.0):
    out = []
    for x in t:
        if mult != 1:
            i = math.floor(math.log(1 - x / t0 * (1 - mult), mult))
            # The closed form's floor(log) can be one off at exact restarts.
            while t0 * (mult ** (i + 1) - 1) / (mult - 1) <= x:
                i += 1
            while t0 * (mult**i - 1) / (mult - 1) > x:
                i -= 1
            ti = mult**i * t0
            tc = x - (1 - mult**i) / (1 - mult) * t0
        else:
            i, ti, tc = x // t0, t0, x - t0 * (x // t0)
        if limit is not None and i >= limit:
            out.append(lr_min)
            continue
        peak = lr * decay**i
        # 0.5 * (1 + cos(pi p)) as sin(pi (1 - p) / 2)**2: the textbook form
        # cancels near p = 1 and is not float64-accurate there.
        rest = (ti**k - tc**k) / ti**k
        out.append(lr_min + (peak - lr_min) * math.sin(math.pi * rest / 2) ** 2)
    return np.array(out)


@pytest.mark.parametrize(
    ("t0", "mult", "decay", "limit", "lr_min", "k"),
    [
        (20, 1.0, 1.0, None, 0.0, 1.0),
        (20, 2.0, 1.0, None, 0.01, 1.0),
        (15, 1.5, 0.5, None, 0.05, 1.0),
        (10, 1.0, 0.7, 3, 0.1, 2.0),
        (10, 10.0, 1.0, None, 0.0, 1.0),
    ],
)
def test_restarts_matches_sgdr_closed_form(t0, mult, decay, limit, lr_min, k):
    t = np.arange(0, 1200)
    s = S.restarts(S.cosine(1.0, t0, end=lr_min, k=k), t0, mult=mult, decay=decay, limit=limit)
    check(s, _timm_closed_form(t, 1.0, lr_min, t0, mult, decay, limit, k), t, rtol=2e-6)


def test_restarts_exact_restart_steps_land_in_the_new_cycle():
    # timm's floor(log(...)) puts t=1110 (m=10, T0=10) in the wrong cycle.
    s = S.restarts(S.cosine(1.0, 10), 10, mult=10.0)
    np.testing.assert_array_equal(values(s, np.array([10, 110, 1110])), [1.0, 1.0, 1.0])
    assert values(s, np.array([1109]))[0] < 1e-4


def test_restarts_holds_the_floor_after_the_limit():
    s = S.restarts(S.cosine(1.0, 10, end=0.2), 10, limit=2)
    v = values(s, np.array([19, 20, 21, 500]))
    assert v[0] > 0.2 and np.all(v[1:] == np.float32(0.2))


def test_per_epoch_steps_once_per_epoch():
    inner = S.multistep(1.0, (2, 5), 0.1)
    s = S.per_epoch(inner, 13)
    t = np.arange(0, 100)
    check(s, exact(inner, t // 13), t)


def test_clip_bounds():
    inner = S.linear(2.0, -1.0, 30)
    v = exact(inner)
    check(S.clip(inner, lo=0.0, hi=1.0), np.clip(v, 0.0, 1.0))
    check(S.clip(inner, lo=0.5), np.maximum(v, 0.5))
    check(S.clip(inner, hi=0.5), np.minimum(v, 0.5))


def test_arithmetic_with_numbers_and_schedules_on_either_side():
    a, b = S.cosine(1.0, 50), S.linear(0.5, 0.1, 80)
    va, vb = exact(a), exact(b)
    cases = [
        (a * 3.0, va * 3.0),
        (3.0 * a, va * 3.0),
        (a / 4.0, va / 4.0),
        (2.0 / (b + 1.0), 2.0 / (vb + 1.0)),
        (a + b, va + vb),
        (1.0 + a, va + 1.0),
        (a - b, va - vb),
        (1.0 - a, 1.0 - va),
        (a * b + 0.5 * b, va * vb + 0.5 * vb),
    ]
    for s, expected in cases:
        # A difference of close values cancels: the error scale is the operands'.
        check(s, expected, scale=3.0)
    assert repr(1.0 - a) == f"(1.0 - {a!r})"


def test_arithmetic_rejects_other_operands():
    s = S.constant(1.0)
    with pytest.raises(TypeError):
        s * "2"
    with pytest.raises(TypeError):
        s + jnp.ones(3)  # an array operand is not a hyperparameter
    with pytest.raises(ValueError, match="division by zero"):
        s / 0
