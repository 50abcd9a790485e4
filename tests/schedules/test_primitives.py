"""Each primitive against its closed form in NumPy (float64), at boundaries and past the end.

The outside references (torch, transformers, timm) are in test_parity.py; this
file covers the formulas themselves, the exact end values, and the schedules no
reference library has (noam, piecewise, exponential's floor, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import schedules as S

T = np.arange(0, 301, dtype=np.float64)


def values(s: S.Schedule, t: np.ndarray = T) -> np.ndarray:
    return np.asarray(s(jnp.asarray(t)), dtype=np.float64)


def check(
    s: S.Schedule,
    expected: np.ndarray,
    t: np.ndarray = T,
    rtol: float = 1e-6,
    scale: float | None = None,
) -> None:
    """float32 to `rtol` (plus 1e-7 of `scale`, the values' magnitude), float64 to 1e-12."""
    got = values(s, t)
    scale = np.max(np.abs(expected)) if scale is None else scale
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-7 * scale)
    with jax.enable_x64(True):
        np.testing.assert_allclose(values(s, t), expected, rtol=1e-12, atol=1e-300)


def test_constant():
    check(S.constant(0.3), np.full_like(T, 0.3))


@pytest.mark.parametrize(
    ("init", "end", "steps"), [(1.0, 0.0, 100), (0.0, 2.0, 7), (3e-4, 3e-6, 250)]
)
def test_linear(init, end, steps):
    expected = end + (init - end) * (steps - np.minimum(T, steps)) / steps
    check(S.linear(init, end, steps), expected)


@pytest.mark.parametrize("cls", ["linear", "polynomial"])
def test_decays_end_exactly_at_end(cls):
    # No -2e-18 from 1 - t * (1/T): the value at and past `steps` is `end`.
    for end in (0.0, 1e-5, 0.1):
        for steps in (3, 7, 10, 97, 1000):
            s = S.linear(1.0, end, steps) if cls == "linear" else S.polynomial(1.0, steps, end)
            for x64 in (False, True):
                with jax.enable_x64(x64):
                    v = s(jnp.array([steps, steps + 1, 10 * steps]))
                    assert np.all(np.asarray(v) == np.asarray(v.dtype.type(end)))
                    assert float(s(0)) == 1.0
                    assert float(jax.jit(s)(steps)) == float(v.dtype.type(end))


@pytest.mark.parametrize(
    ("init", "steps", "end", "cycles", "k"),
    [
        (1.0, 100, 0.0, 0.5, 1.0),
        (1e-3, 37, 1e-5, 0.5, 1.0),
        (1.0, 80, 0.1, 1.5, 1.0),
        (1.0, 60, 0.0, 0.5, 2.0),
        (2.0, 50, 0.5, 0.5, 0.5),
        (1.0, 12.5, 0.0, 0.5, 1.0),
    ],
)
def test_cosine(init, steps, end, cycles, k):
    p = (np.minimum(T, steps) / steps) ** k
    expected = end + (init - end) * 0.5 * (1 + np.cos(2 * np.pi * cycles * p))
    expected = np.where(T > steps, end, expected)
    check(S.cosine(init, steps, end=end, cycles=cycles, k=k), expected)


def test_cosine_is_exact_at_its_ends_and_accurate_near_zero():
    s = S.cosine(1.0, 1000)
    v = values(s, np.arange(1001))
    assert v[0] == 1.0 and v[1000] == 0.0
    # Near the end the value is tiny; its relative error stays at float32 level.
    expected = 0.5 * (1 + np.cos(np.pi * np.arange(990, 1000) / 1000))
    np.testing.assert_allclose(v[990:1000], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("steps", "end", "power"), [(100, 0.0, 1.0), (70, 0.01, 2.0), (33, 1e-7, 0.5)]
)
def test_polynomial(steps, end, power):
    expected = end + (1.0 - end) * ((steps - np.minimum(T, steps)) / steps) ** power
    check(S.polynomial(1.0, steps, end=end, power=power), expected)


@pytest.mark.parametrize(
    ("rate", "every", "staircase", "end"),
    [(0.95, 1, False, None), (0.5, 10, True, None), (0.5, 10, False, 0.05), (1.02, 3, False, 2.0)],
)
def test_exponential(rate, every, staircase, end):
    e = np.floor(T / every) if staircase else T / every
    expected = rate**e
    if end is not None:
        expected = np.maximum(expected, end) if rate < 1 else np.minimum(expected, end)
    check(S.exponential(1.0, rate, every=every, staircase=staircase, end=end), expected)


@pytest.mark.parametrize("every", [1, 7, 30, 97])
def test_step_decay_counts_exactly_at_multiples(every):
    t = np.arange(0, 40 * every + 1)
    expected = 0.9 ** np.floor(t / every)
    check(S.step_decay(1.0, every, 0.9), expected, t)


def test_multistep_counts_repeated_milestones_twice():
    expected = 0.1 ** np.searchsorted([10, 30, 30, 200], T, side="right")
    check(S.multistep(1.0, (10, 30, 30, 200), 0.1), expected)
    check(S.multistep(1.0, (), 0.1), np.ones_like(T))


def test_piecewise_switches_at_boundaries():
    s = S.piecewise((10, 20), (1.0, 0.5, 0.25))
    v = values(s, np.array([0, 9, 10, 11, 19, 20, 21, 1000]))
    np.testing.assert_array_equal(v, [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])
    check(S.piecewise((), (0.7,)), np.full_like(T, 0.7))


@pytest.mark.parametrize("timescale", [1, 25, 10_000, 12.5])
def test_inverse_sqrt(timescale):
    check(S.inverse_sqrt(2.0, timescale), 2.0 / np.sqrt((T + timescale) / timescale))


@pytest.mark.parametrize(("d_model", "warmup"), [(512, 4000), (64, 20), (1, 1)])
def test_noam(d_model, warmup):
    n = T + 1
    expected = d_model**-0.5 * np.minimum(n**-0.5, n * warmup**-1.5)
    check(S.noam(d_model, warmup), expected)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("warmup_shape", ["linear", "cosine", "1-sqrt"])
def test_wsd(shape, warmup_shape):
    w, st, d, end = 20, 50, 80, 0.1
    expected = []
    for t in T:
        if t < w:
            p = t / w
            f = {"linear": p, "cosine": 0.5 * (1 - np.cos(np.pi * p)), "1-sqrt": 1 - np.sqrt(1 - p)}
            expected.append(end + (1 - end) * f[warmup_shape])
        elif t < w + st:
            expected.append(1.0)
        elif t < w + st + d:
            p = (t - w - st) / d
            f = {"linear": 1 - p, "cosine": 0.5 * (1 + np.cos(np.pi * p)), "1-sqrt": 1 - np.sqrt(p)}
            expected.append(end + (1 - end) * f[shape])
        else:
            expected.append(end)
    s = S.wsd(1.0, w, st, d, end=end, shape=shape, warmup_shape=warmup_shape)
    check(s, np.array(expected))


def test_from_fn_passes_float_steps():
    s = S.from_fn(lambda t: 1.0 / (1.0 + t))
    check(s, 1.0 / (1.0 + T))


def test_one_cycle_phase_ends_are_torchs():
    # Phase ends at pct * total - 1 and total - 1 (optax's onecycle ends a step later).
    s = S.one_cycle(1.0, 100, pct_start=0.3)
    v = values(s, np.array([0, 29, 99, 100, 500]))
    np.testing.assert_allclose(v, [0.04, 1.0, 4e-6, 4e-6, 4e-6], rtol=1e-6)
    s3 = S.one_cycle(1.0, 100, pct_start=0.3, three_phase=True, anneal="linear")
    v = values(s3, np.array([0, 29, 58, 99]))
    np.testing.assert_allclose(v, [0.04, 1.0, 0.04, 4e-6], rtol=1e-6)


def test_cyclic_modes():
    base, peak, up, down, gamma = 0.1, 1.0, 10, 15, 0.995
    cycle = np.floor(1 + T / (up + down))
    x = 1 + T / (up + down) - cycle
    r = up / (up + down)
    scale = np.where(x <= r, x / r, (x - 1) / (r - 1))
    for mode, amp in [
        ("triangular", np.ones_like(T)),
        ("triangular2", 1 / 2.0 ** (cycle - 1)),
        ("exp_range", gamma**T),
    ]:
        expected = base + (peak - base) * scale * amp
        check(S.cyclic(base, peak, up, down, mode=mode, gamma=gamma), expected)


def test_k_decay_gradient_is_finite_at_step_0() -> None:
    # 1 - (t / T)**k is computed from log1p(-(T - t) / T), -inf at t = 0.
    grads = [jax.grad(lambda k, t=t: S.cosine(1.0, 50, k=k)(t))(2.0) for t in (0, 25, 49)]
    assert np.all(np.isfinite(grads))
    assert grads[0] == 0.0
