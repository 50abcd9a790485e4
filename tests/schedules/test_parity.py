"""Parity of every schedule with torch, transformers, timm and pytorch-accelerated.

Each case of `tests.reference.schedule_cases` is checked against its golden
vector always, and against the live reference when it is importable, in
float32 and in float64, evaluated eagerly and under `jit`. Tolerances: float64
``rtol=1e-12`` with no real atol (an exact zero must stay exact); float32
``rtol=1e-6`` plus ``1e-7`` of the largest reference value.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import schedules as S

from ..reference import schedule_cases as C

CASES = {case.id: case for case in C.CASES}
IDS = list(CASES)
JOIN_IDS = [case.id for case in C.CASES if case.boundaries]
GOLDEN_PATH = Path(C.__file__).with_name(C.GOLDEN)
# Every case is evaluated on the same steps 0..MAX_N and cut to its own 0..n:
# eager jnp ops compile once per shape, so one shape serves all cases.
MAX_N = max(case.n for case in C.CASES)


@pytest.fixture(params=["f32", "f64"])
def precision(request: pytest.FixtureRequest) -> str:
    """Run the test in float32, then in float64 (under the `x64` fixture)."""
    if request.param == "f64":
        request.getfixturevalue("x64")
    return request.param


@functools.cache
def _golden() -> dict[str, list[float]]:
    return json.loads(GOLDEN_PATH.read_text())["cases"]


def _require(source: str) -> None:
    """Skip unless the live reference for `source` can run here."""
    if source == C.CLOSED_FORM:
        return
    pytest.importorskip("torch")
    if source == C.TRANSFORMERS:
        pytest.importorskip("transformers")
    elif source == C.TIMM:
        try:
            C.load_timm_cosine()
        except ImportError as e:
            pytest.skip(f"timm's scheduler is not loadable: {e}")


@functools.cache
def _live(case_id: str) -> tuple[float, ...]:
    """The live reference values, run once per case."""
    return tuple(CASES[case_id].reference())


@functools.cache
def _cadence(case_id: str, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """cadence at steps 0..n, eager and jitted; once per case and precision."""
    s = CASES[case_id].build()
    steps = jnp.arange(MAX_N + 1)
    eager, jitted = s(steps), jax.jit(s)(steps)
    dtype = jnp.float64 if precision == "f64" else jnp.float32
    assert eager.dtype == dtype and jitted.dtype == dtype
    assert eager.shape == jitted.shape == steps.shape
    n = CASES[case_id].n
    return np.asarray(eager)[: n + 1], np.asarray(jitted)[: n + 1]


def _assert_close(
    ours: np.ndarray, theirs: object, precision: str, what: str, steps: np.ndarray | None = None
) -> None:
    """Tolerance of the parity contract; the message lists the differing steps."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    if precision == "f64":
        # A tiny atol only, so an exact zero must come out as an exact zero.
        rtol, atol = 1e-12, 1e-300
    else:
        rtol, atol = 1e-6, 1e-7 * float(np.max(np.abs(theirs)))
    ok = np.abs(ours - theirs) <= atol + rtol * np.abs(theirs)
    bad = np.flatnonzero(~ok)
    if bad.size:
        steps = np.arange(ours.size) if steps is None else steps
        rows = [
            f"  step {steps[i]}: ours {ours[i]!r}, theirs {theirs[i]!r}, "
            f"rel {abs(ours[i] - theirs[i]) / max(abs(theirs[i]), 1e-300):.3g}"
            for i in bad[:12]
        ]
        pytest.fail(
            f"{what}: {bad.size} of {ours.size} steps differ (rtol={rtol}, atol={atol:.3g})\n"
            + "\n".join(rows)
        )


@pytest.mark.parametrize("case_id", IDS)
def test_golden(case_id: str, precision: str) -> None:
    expected = _golden()[case_id]
    assert len(expected) == CASES[case_id].n + 1
    eager, jitted = _cadence(case_id, precision)
    _assert_close(eager, expected, precision, "eager vs golden")
    _assert_close(jitted, expected, precision, "jit vs golden")


@pytest.mark.parametrize("case_id", IDS)
def test_live(case_id: str, precision: str) -> None:
    _require(CASES[case_id].source)
    expected = _live(case_id)
    assert len(expected) == CASES[case_id].n + 1
    eager, jitted = _cadence(case_id, precision)
    _assert_close(eager, expected, precision, "eager vs live")
    _assert_close(jitted, expected, precision, "jit vs live")


def test_golden_file_matches_table() -> None:
    assert set(_golden()) == set(CASES), "regenerate: python -m tests.reference.generate schedules"


@pytest.mark.parametrize("case_id", JOIN_IDS)
def test_join_boundary_steps(case_id: str, precision: str) -> None:
    """`S.join` at b-1, b, b+1 for each boundary b, as scalar steps, against SequentialLR."""
    case = CASES[case_id]
    s = case.build()
    assert isinstance(s, S.join) and tuple(s.boundaries) == case.boundaries
    steps = np.array([k for b in case.boundaries for k in (b - 1, b, b + 1)])
    jitted = jax.jit(s)
    eager_values = np.array([s(int(k)) for k in steps])
    jit_values = np.array([jitted(int(k)) for k in steps])
    references = {"golden": np.asarray(_golden()[case_id])}
    try:
        _require(case.source)
    except pytest.skip.Exception:
        pass
    else:
        references["live"] = np.asarray(_live(case_id))
    for name, values in references.items():
        _assert_close(eager_values, values[steps], precision, f"eager vs {name}", steps)
        _assert_close(jit_values, values[steps], precision, f"jit vs {name}", steps)


@pytest.mark.parametrize("case_id", IDS)
def test_float32_relative_accuracy(case_id: str) -> None:
    """float32 within 1e-6 of each reference value, relative, with no absolute tolerance.

    The contract's ``atol`` of 1e-7 of the largest value hid small values that
    were 2e-6 to 1.2e-4 off (a LinearLR ramp from 0.01, cycle ends of
    CosineAnnealingWarmRestarts, k-decay, the end of a three-phase OneCycleLR);
    exact zeros must stay exact.
    """
    expected = np.asarray(_golden()[case_id])
    eager, _ = _cadence(case_id, "f32")
    ours = np.asarray(eager, np.float64)
    zero = expected == 0
    assert np.all(ours[zero] == 0), f"steps {np.flatnonzero(zero & (ours != 0))} should be 0"
    rel = np.abs(ours - expected)[~zero] / np.abs(expected[~zero])
    worst = int(np.argmax(rel)) if rel.size else 0
    assert rel.size == 0 or rel.max() <= 1e-6, (
        f"relative error {rel.max():.3g} at step {np.flatnonzero(~zero)[worst]}"
    )
