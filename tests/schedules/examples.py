"""One or more instances of every schedule type, for the invariant tests."""

from __future__ import annotations

from cadence import schedules as S


def _double(t):
    return 2.0 * t


EXAMPLES: dict[str, S.Schedule] = {
    "constant": S.constant(0.1),
    "linear": S.linear(1.0, 0.1, 50),
    "cosine": S.cosine(1e-3, 80, end=1e-5),
    "cosine_k": S.cosine(1.0, 60, end=0.1, cycles=1.5, k=2.0),
    "cosine_fractional": S.cosine(1.0, 12.5),
    "polynomial": S.polynomial(1.0, 70, end=0.01, power=2.0),
    "exponential": S.exponential(1.0, 0.95),
    "exponential_floor": S.exponential(1.0, 0.5, every=10, staircase=True, end=0.05),
    "exponential_ceiling": S.exponential(0.01, 1.1, end=1.0),
    "step_decay": S.step_decay(0.5, 15, 0.5),
    "multistep": S.multistep(0.5, (10, 30, 30), 0.1),
    "piecewise": S.piecewise((10, 40), (1.0, 0.5, 0.25)),
    "inverse_sqrt": S.inverse_sqrt(1.0, 25),
    "noam": S.noam(64, 20),
    "one_cycle": S.one_cycle(1.0, 90),
    "one_cycle_3": S.one_cycle(1.0, 90, pct_start=0.25, anneal="linear", three_phase=True),
    "cyclic": S.cyclic(0.1, 1.0, 10, 15, mode="triangular2"),
    "cyclic_exp": S.cyclic(0.1, 1.0, 10, mode="exp_range", gamma=0.99),
    "one_cycle_momentum": S.one_cycle_momentum(90, pct_start=0.25, three_phase=True),
    "cyclic_momentum": S.cyclic_momentum(0.8, 0.9, 10, 15, mode="triangular2"),
    "wsd": S.wsd(1.0, 10, 30, 20, end=0.1, shape="1-sqrt", warmup_shape="cosine"),
    "join": S.join([S.linear(0.0, 1.0, 10), S.cosine(1.0, 50), S.constant(0.0)], [10, 60]),
    "warmup": S.warmup(S.cosine(1.0, 60), 20, init=0.1),
    "restarts": S.restarts(S.cosine(1.0, 20, end=0.1), 20, mult=2.0, decay=0.5, limit=3),
    "per_epoch": S.per_epoch(S.step_decay(1.0, 2, 0.5), 7),
    "clip": S.clip(S.linear(2.0, -1.0, 50), lo=0.0, hi=1.0),
    "shift": S.shift(S.cosine(1.0, 40), 5),
    "arithmetic": 0.5 * S.cosine(1.0, 50) + S.constant(0.1) / 2.0 - 0.01,
    "registry": S.get("cosine_with_restarts", 1.0, 10, 90, num_cycles=2),
    "swa": S.swa(0.1, 0.02, 30),
    "swa_linear": S.swa(0.01, 0.05, 7, anneal="linear"),
    "swa_at_once": S.swa(0.1, 0.05, 0),
}

# Not serializable: excluded from config round trips.
FROM_FN = S.from_fn(_double)

TYPES_COVERED = {type(s).__name__ for s in EXAMPLES.values()} | {"from_fn"}
