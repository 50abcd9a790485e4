"""Trajectory parity with torch.optim (and the Lion paper): golden vectors always, torch live.

Every case of `tests.reference.optimizer_cases` runs 200 updates on random
gradients and on a closed-loop least-squares fit, in float64 (to 1e-10) and
float32 (to 1e-5). The error of a snapshot is measured relative to its
largest parameter, so parameters crossing zero do not make the bound vacuous
or impossible.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.optimizers.harness import TOLERANCE, relative_error, run_cadence
from tests.reference import optimizer_cases as C

GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())


def _check(ours: np.ndarray, ref: np.ndarray, dtype: str, what: str) -> None:
    error = relative_error(ours, ref)
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"


# The live references (200 torch runs, half a minute of Python) are computed in
# a background thread while the main thread compiles cadence's programs (XLA
# compiles without holding the GIL).
_REFERENCES: dict[tuple[str, str, str], np.ndarray] = {}
_FAILURE: list[BaseException] = []
_THREAD: list[threading.Thread] = []
_LOCK = threading.Lock()


def _compute_references() -> None:
    try:
        for dtype in C.DTYPES:
            for case_id, case in C.CASES.items():
                for problem in C.PROBLEMS:
                    _REFERENCES[case_id, problem, dtype] = C.reference(case, problem, dtype)
    except BaseException as e:  # re-raised in the tests that need the references
        _FAILURE.append(e)


def _start_references(request: pytest.FixtureRequest) -> None:
    wanted = any("test_live_reference" in item.nodeid for item in request.session.items)
    with _LOCK:
        if wanted and not _THREAD and importlib.util.find_spec("torch") is not None:
            thread = threading.Thread(target=_compute_references, daemon=True)
            thread.start()
            _THREAD.append(thread)


def _reference(case_id: str, problem: str, dtype: str) -> np.ndarray:
    _THREAD[0].join()
    if _FAILURE:
        raise _FAILURE[0]
    return _REFERENCES[case_id, problem, dtype]


def test_golden_table_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    assert GOLDEN["meta"]["snapshots"] == list(C.SNAPSHOTS)
    assert GOLDEN["meta"]["leaves"] == list(C.LEAVES)


@pytest.mark.parametrize("case", sorted(C.CASES))
def test_golden_float64(case, x64, request):
    _start_references(request)
    for problem in C.PROBLEMS:
        ref = np.asarray(GOLDEN["cases"][case][problem]["float64"])
        _check(run_cadence(case, problem, "float64"), ref, "float64", f"{case}/{problem}")


@pytest.mark.parametrize("case", sorted(C.CASES))
def test_golden_float32(case, request):
    _start_references(request)
    for problem in C.PROBLEMS:
        ref = np.asarray(GOLDEN["cases"][case][problem]["float32"], np.float32)
        _check(run_cadence(case, problem, "float32"), ref, "float32", f"{case}/{problem}")


@pytest.mark.parametrize("dtype", C.DTYPES)
def test_golden_step(dtype, request):
    # `step` (one native loop per leaf on CPU) trains like torch too.
    if dtype == "float64":
        request.getfixturevalue("x64")
    for case in sorted(C.CASES):
        for problem in C.PROBLEMS:
            ref = np.asarray(GOLDEN["cases"][case][problem][dtype], dtype)
            ours = run_cadence(case, problem, dtype, method="step")
            _check(ours, ref, dtype, f"{case}/{problem} (step)")


@pytest.mark.parametrize("dtype", C.DTYPES)
@pytest.mark.parametrize("case", sorted(C.CASES))
def test_live_reference(case, dtype, request):
    pytest.importorskip("torch")  # for Lion too: the references are computed together
    _start_references(request)
    if dtype == "float64":
        request.getfixturevalue("x64")
    for problem in C.PROBLEMS:
        ref = _reference(case, problem, dtype)
        _check(run_cadence(case, problem, dtype), ref, dtype, f"{case}/{problem} vs live")
        # The golden file is current: it agrees with the live reference.
        golden = np.asarray(GOLDEN["cases"][case][problem][dtype])
        _check(golden, ref, dtype, f"{case}/{problem} golden vs live")
