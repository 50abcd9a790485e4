"""Parity cases for the schedules: a cadence builder beside a reference run, per case.

Every case pairs a cadence schedule built from the public API with the values
a reference library uses for the optimizer updates 0..n:

- ``transformers``: ``get_scheduler`` driving a real ``torch.optim.SGD``; the
  value at update k is ``param_groups[0]["lr"]`` read before the k-th
  ``optimizer.step(); scheduler.step()``.
- ``torch``: the ``torch.optim.lr_scheduler`` classes, read the same way.
- ``timm``: ``CosineLRScheduler(t_in_epochs=False, warmup_prefix=True)``, read
  before ``step_update(num_updates=k + 1)``. It is loaded without importing
  the timm package (see `load_timm_cosine`).
- ``closed_form``: pytorch-accelerated's CosineLrScheduler as intended (the
  package is not a dependency), written in NumPy.

``python -m tests.reference.generate schedules`` writes the golden vectors
(`GOLDEN`); ``tests/schedules/test_parity.py`` compares cadence against them
and against the live libraries.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadence import schedules as S

from .timm_sources import load_timm

GOLDEN = "schedules.json"

TRANSFORMERS = "transformers"
TORCH = "torch"
TIMM = "timm"
CLOSED_FORM = "closed_form"


@dataclass(frozen=True)
class Case:
    """One parity case: cadence's `build()` against `reference()` at steps 0..n."""

    id: str
    source: str
    build: Callable[[], S.Schedule]
    reference: Callable[[], list[float]]
    n: int
    # Boundaries of the S.join the builder returns (SequentialLR cases).
    boundaries: tuple[int, ...] = ()


# --------------------------------------------------------------------------- runners


def _run_torch(make: Callable[[Any, Any], Any], lr: float, n: int, read: str = "lr") -> list[float]:
    """Values of update k = 0..n for the scheduler ``make(lr_scheduler_module, optimizer)``.

    `read` is what is read from the param group: ``"lr"`` (of an SGD),
    ``"momentum"`` (of an SGD with momentum 0.9) or ``"beta1"`` (``betas[0]``
    of an Adam), the last two for torch's momentum cycling.
    """
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    if read == "beta1":
        optimizer = torch.optim.Adam([param], lr=lr)
    else:
        optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9 if read == "momentum" else 0.0)
    scheduler = make(torch.optim.lr_scheduler, optimizer)
    values = []
    for _ in range(n + 1):
        group = optimizer.param_groups[0]
        values.append(float(group["betas"][0] if read == "beta1" else group[read]))
        optimizer.step()
        scheduler.step()
    return values


def load_timm_cosine() -> type:
    """timm's CosineLRScheduler (see `timm_sources`).

    Raises:
        ImportError: timm or torch is not installed.
    """
    return load_timm("scheduler", "cosine_lr").CosineLRScheduler


def _run_timm(lr: float, n: int, **kw: Any) -> list[float]:
    """lr of update k = 0..n for timm's CosineLRScheduler stepped per update."""
    import torch

    cosine_lr_scheduler = load_timm_cosine()
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = cosine_lr_scheduler(
        optimizer, t_in_epochs=False, warmup_prefix=True, initialize=True, **kw
    )
    values = []
    for k in range(n + 1):
        values.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step_update(num_updates=k + 1)
    return values


def accelerated_cosine(
    lr: float,
    lr_min: float,
    warmup: int,
    warmup_starting_lr: float,
    cosine: int,
    cooldown: int,
    k: float,
) -> list[float]:
    """pytorch-accelerated's CosineLrScheduler as intended, at steps 0..warmup+cosine+cooldown.

    Linear warmup from `warmup_starting_lr` to `lr`, k-decay cosine from `lr` to
    `lr_min` over `cosine` steps, then `lr_min`. Not its off-by-one stepping nor
    its truncated cosine after a warmup.
    """
    t = np.arange(warmup + cosine + cooldown + 1, dtype=np.float64)
    ramp = warmup_starting_lr + t * (lr - warmup_starting_lr) / max(warmup, 1)
    tc = np.clip(t - warmup, 0, cosine)
    decay = lr_min + 0.5 * (lr - lr_min) * (1 + np.cos(np.pi * tc**k / cosine**k))
    values = np.where(t < warmup, ramp, np.where(t < warmup + cosine, decay, lr_min))
    return [float(v) for v in values]


# ----------------------------------------------------------------------- case makers


def _transformers(name: str, lr: float, warmup: int, total: int | None, n: int, **kw: Any) -> Case:
    parts = [name, f"w{warmup}"] + ([f"T{total}"] if total is not None else [])
    parts += [f"{k}{v}" for k, v in kw.items()]

    def build() -> S.Schedule:
        return S.get(name, lr, warmup, total, **kw)

    def reference() -> list[float]:
        from transformers import get_scheduler

        def make(_: Any, optimizer: Any) -> Any:
            return get_scheduler(
                name,
                optimizer,
                num_warmup_steps=warmup,
                num_training_steps=total,
                scheduler_specific_kwargs=dict(kw) or None,
            )

        return _run_torch(make, lr, n)

    return Case("-".join(["transformers", *parts]), TRANSFORMERS, build, reference, n)


def _torch(
    label: str,
    lr: float,
    n: int,
    make: Callable[[Any, Any], Any],
    build: Callable[[], S.Schedule],
    boundaries: tuple[int, ...] = (),
    read: str = "lr",
) -> Case:
    def reference() -> list[float]:
        return _run_torch(make, lr, n, read)

    return Case(f"torch-{label}", TORCH, build, reference, n, boundaries)


def _timm(
    label: str,
    n: int,
    lr: float,
    t_initial: int,
    *,
    lr_min: float = 0.0,
    cycle_mul: float = 1.0,
    cycle_decay: float = 1.0,
    cycle_limit: int | None = 1,
    warmup_t: int = 0,
    warmup_lr_init: float = 0.0,
    k_decay: float = 1.0,
) -> Case:
    """A timm case; ``cycle_limit=None`` is no limit (timm gets one past the horizon)."""

    def build() -> S.Schedule:
        cycles = S.restarts(
            S.cosine(lr, t_initial, end=lr_min, k=k_decay),
            t_initial,
            mult=cycle_mul,
            decay=cycle_decay,
            limit=cycle_limit,
        )
        return S.warmup(cycles, warmup_t, init=warmup_lr_init)

    def reference() -> list[float]:
        return _run_timm(
            lr,
            n,
            t_initial=t_initial,
            lr_min=lr_min,
            cycle_mul=cycle_mul,
            cycle_decay=cycle_decay,
            cycle_limit=n + 1 if cycle_limit is None else cycle_limit,
            warmup_t=warmup_t,
            warmup_lr_init=warmup_lr_init,
            k_decay=k_decay,
        )

    return Case(f"timm-CosineLRScheduler-{label}", TIMM, build, reference, n)


def _accelerated(
    label: str,
    lr: float,
    lr_min: float,
    warmup: int,
    warmup_starting_lr: float,
    cosine: int,
    cooldown: int,
    k: float = 1.0,
) -> Case:
    def build() -> S.Schedule:
        decay = S.warmup(S.cosine(lr, cosine, end=lr_min, k=k), warmup, init=warmup_starting_lr)
        return S.join([decay, S.constant(lr_min)], [warmup + cosine])

    def reference() -> list[float]:
        return accelerated_cosine(lr, lr_min, warmup, warmup_starting_lr, cosine, cooldown, k)

    n = warmup + cosine + cooldown
    return Case(f"accelerated-CosineLrScheduler-{label}", CLOSED_FORM, build, reference, n)


# ---------------------------------------------------------------------------- table


def _transformers_cases() -> list[Case]:
    T = _transformers
    cases = [
        T("constant", 0.01, 0, None, 50),
        T("constant_with_warmup", 0.01, 10, None, 60),
        T("constant_with_warmup", 0.01, 0, None, 30),
        T("constant_with_warmup", 0.01, 1, None, 20),
        # linear and polynomial hold their end value past T in transformers too.
        T("linear", 5e-4, 10, 100, 120),
        T("linear", 5e-4, 0, 80, 90),
        T("linear", 0.1, 1, 50, 60),
        T("polynomial", 0.1, 10, 100, 120, lr_end=1e-4, power=2.0),
        T("polynomial", 0.1, 0, 80, 90),
        T("polynomial", 0.1, 5, 60, 70, lr_end=1e-3, power=0.5),
        T("polynomial", 3e-4, 20, 120, 130, lr_end=3e-6, power=3.0),
        # transformers' cosine rises again past T (cadence holds the end): compare to T.
        T("cosine", 0.1, 10, 100, 100),
        T("cosine", 0.1, 0, 120, 120),
        T("cosine", 0.1, 10, 110, 110, num_cycles=1.0),
        T("cosine", 0.1, 5, 80, 80, num_cycles=0.3),
        T("cosine", 1e-3, 0, 90, 90, num_cycles=1.5),
        # cosine_with_restarts is 0 from T on in both.
        T("cosine_with_restarts", 0.1, 10, 110, 120, num_cycles=1),
        T("cosine_with_restarts", 0.1, 0, 100, 110, num_cycles=2),
        T("cosine_with_restarts", 0.1, 10, 110, 120, num_cycles=3),
        T("cosine_with_restarts", 0.1, 10, 110, 120, num_cycles=2.5),
        T("cosine_with_restarts", 0.1, 0, 90, 100, num_cycles=1.5),
        T("cosine_with_restarts", 0.1, 0, 99, 110),
        T("inverse_sqrt", 0.1, 10, None, 150),
        T("inverse_sqrt", 0.1, 0, None, 100),
        T("inverse_sqrt", 0.1, 10, None, 150, timescale=50),
        T("inverse_sqrt", 0.1, 0, None, 100, timescale=20),
        T("cosine_with_min_lr", 0.1, 10, 100, 100, min_lr=1e-3),
        T("cosine_with_min_lr", 0.1, 0, 80, 80, min_lr_rate=0.1),
        T("cosine_with_min_lr", 3e-4, 10, 100, 100, min_lr_rate=0.05, num_cycles=0.75),
        # Its decay is entered one step in and rises again at T: compare to T - 1.
        T("cosine_warmup_with_min_lr", 0.1, 10, 100, 99, min_lr=1e-3),
        T("cosine_warmup_with_min_lr", 0.1, 0, 80, 79, min_lr_rate=0.1),
        T("cosine_warmup_with_min_lr", 0.1, 1, 50, 49, min_lr=1e-3),
        T("cosine_warmup_with_min_lr", 0.1, 1, 60, 59, min_lr_rate=0.1, warmup_lr_rate=0.2),
        T("cosine_warmup_with_min_lr", 0.1, 0, 60, 59, min_lr_rate=0.1, warmup_lr_rate=0.2),
        T(
            "cosine_warmup_with_min_lr",
            3e-4,
            8,
            100,
            99,
            min_lr_rate=0.05,
            num_cycles=0.75,
            warmup_lr_rate=0.1,
        ),
    ]
    # warmup_stable_decay: every warmup shape x decay shape; stable steps given
    # (no total) or derived from total - warmup - decay; min_lr_ratio 0 or not.
    shapes = ("linear", "cosine", "1-sqrt")
    for i, warmup_type in enumerate(shapes):
        for j, decay_type in enumerate(shapes):
            ratio = (0.0, 0.1, 0.02)[(i + j) % 3]
            kw = dict(warmup_type=warmup_type, decay_type=decay_type, min_lr_ratio=ratio)
            if (i + j) % 2 == 0:
                cases.append(T("warmup_stable_decay", 0.1, 10, 100, 110, num_decay_steps=40, **kw))
            else:
                cases.append(
                    T(
                        "warmup_stable_decay",
                        0.1,
                        10,
                        None,
                        100,
                        num_stable_steps=30,
                        num_decay_steps=40,
                        **kw,
                    )
                )
    cases += [
        T("warmup_stable_decay", 0.1, 0, 80, 90, num_decay_steps=30),
        T("warmup_stable_decay", 0.1, 8, None, 80, num_stable_steps=0, num_decay_steps=50),
        T(
            "warmup_stable_decay",
            0.1,
            5,
            None,
            70,
            num_stable_steps=20,
            num_decay_steps=30,
            num_cycles=0.25,
            min_lr_ratio=0.1,
        ),
    ]
    return cases


def _torch_cases() -> list[Case]:
    C = _torch
    return [
        C(
            "StepLR-size7-gamma0.5",
            0.1,
            60,
            lambda L, o: L.StepLR(o, step_size=7, gamma=0.5),
            lambda: S.step_decay(0.1, 7, 0.5),
        ),
        C(
            "StepLR-size1-gamma0.9",
            0.1,
            50,
            lambda L, o: L.StepLR(o, step_size=1, gamma=0.9),
            lambda: S.step_decay(0.1, 1, 0.9),
        ),
        C(
            "StepLR-size25-gamma0.1",
            1.0,
            100,
            lambda L, o: L.StepLR(o, step_size=25, gamma=0.1),
            lambda: S.step_decay(1.0, 25, 0.1),
        ),
        C(
            "MultiStepLR-10-30-60-gamma0.1",
            0.1,
            80,
            lambda L, o: L.MultiStepLR(o, milestones=[10, 30, 60], gamma=0.1),
            lambda: S.multistep(0.1, (10, 30, 60), 0.1),
        ),
        C(
            "MultiStepLR-repeated-20-20-50-gamma0.5",
            0.1,
            70,
            lambda L, o: L.MultiStepLR(o, milestones=[20, 20, 50], gamma=0.5),
            lambda: S.multistep(0.1, (20, 20, 50), 0.5),
        ),
        C(
            "MultiStepLR-5-5-5-40-gamma0.3",
            0.2,
            60,
            lambda L, o: L.MultiStepLR(o, milestones=[5, 5, 5, 40], gamma=0.3),
            lambda: S.multistep(0.2, (5, 5, 5, 40), 0.3),
        ),
        C(
            "ExponentialLR-gamma0.95",
            0.1,
            100,
            lambda L, o: L.ExponentialLR(o, gamma=0.95),
            lambda: S.exponential(0.1, 0.95),
        ),
        C(
            "ExponentialLR-gamma0.99",
            1.0,
            300,
            lambda L, o: L.ExponentialLR(o, gamma=0.99),
            lambda: S.exponential(1.0, 0.99),
        ),
        C(
            "ExponentialLR-gamma1.02",
            0.01,
            60,
            lambda L, o: L.ExponentialLR(o, gamma=1.02),
            lambda: S.exponential(0.01, 1.02),
        ),
        # torch's CosineAnnealingLR is periodic past T_max (cadence holds eta_min): 0..T_max.
        C(
            "CosineAnnealingLR-T50",
            0.1,
            50,
            lambda L, o: L.CosineAnnealingLR(o, T_max=50),
            lambda: S.cosine(0.1, 50),
        ),
        C(
            "CosineAnnealingLR-T100-eta_min1e-3",
            0.1,
            100,
            lambda L, o: L.CosineAnnealingLR(o, T_max=100, eta_min=1e-3),
            lambda: S.cosine(0.1, 100, end=1e-3),
        ),
        C(
            "CosineAnnealingLR-T7-eta_min0.05",
            1.0,
            7,
            lambda L, o: L.CosineAnnealingLR(o, T_max=7, eta_min=0.05),
            lambda: S.cosine(1.0, 7, end=0.05),
        ),
        C(
            "CosineAnnealingWarmRestarts-T10-mult1",
            0.1,
            55,
            lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=10),
            lambda: S.restarts(S.cosine(0.1, 10), 10),
        ),
        C(
            "CosineAnnealingWarmRestarts-T10-mult2-eta_min1e-3",
            0.1,
            160,
            lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-3),
            lambda: S.restarts(S.cosine(0.1, 10, end=1e-3), 10, mult=2),
        ),
        C(
            "CosineAnnealingWarmRestarts-T7-mult2",
            0.1,
            120,
            lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=2),
            lambda: S.restarts(S.cosine(0.1, 7), 7, mult=2),
        ),
        C(
            "CosineAnnealingWarmRestarts-T5-mult3-eta_min0.01",
            0.1,
            100,
            lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=3, eta_min=0.01),
            lambda: S.restarts(S.cosine(0.1, 5, end=0.01), 5, mult=3),
        ),
        C(
            "CosineAnnealingWarmRestarts-T12-mult1-eta_min0.02",
            0.5,
            60,
            lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=12, eta_min=0.02),
            lambda: S.restarts(S.cosine(0.5, 12, end=0.02), 12),
        ),
        *_one_cycle_cases(),
        *_cyclic_cases(),
        C(
            "LinearLR-1_3-to-1-iters10",
            0.1,
            30,
            lambda L, o: L.LinearLR(o, start_factor=1 / 3, end_factor=1.0, total_iters=10),
            lambda: S.linear(0.1 * (1 / 3), 0.1 * 1.0, 10),
        ),
        C(
            "LinearLR-1-to-0.1-iters50",
            0.1,
            60,
            lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=50),
            lambda: S.linear(0.1 * 1.0, 0.1 * 0.1, 50),
        ),
        C(
            "LinearLR-0.5-to-0-iters20",
            0.2,
            30,
            lambda L, o: L.LinearLR(o, start_factor=0.5, end_factor=0.0, total_iters=20),
            lambda: S.linear(0.2 * 0.5, 0.2 * 0.0, 20),
        ),
        C(
            "PolynomialLR-iters50-power1",
            0.1,
            60,
            lambda L, o: L.PolynomialLR(o, total_iters=50, power=1.0),
            lambda: S.polynomial(0.1, 50, power=1.0),
        ),
        C(
            "PolynomialLR-iters40-power2",
            0.1,
            50,
            lambda L, o: L.PolynomialLR(o, total_iters=40, power=2.0),
            lambda: S.polynomial(0.1, 40, power=2.0),
        ),
        C(
            "PolynomialLR-iters30-power0.5",
            1.0,
            40,
            lambda L, o: L.PolynomialLR(o, total_iters=30, power=0.5),
            lambda: S.polynomial(1.0, 30, power=0.5),
        ),
        *_sequential_cases(),
        *_chained_cases(),
        *_edge_cases(),
        *_momentum_cases(),
        *_swa_cases(),
    ]


def _one_cycle(label: str, max_lr: float, total: int, **kw: Any) -> Case:
    """OneCycleLR (`kw` in torch's names) against `S.one_cycle`, at steps 0..total-1."""

    def make(L: Any, o: Any) -> Any:
        return L.OneCycleLR(o, max_lr=max_lr, total_steps=total, cycle_momentum=False, **kw)

    def build() -> S.Schedule:
        return S.one_cycle(
            max_lr,
            total,
            pct_start=kw.get("pct_start", 0.3),
            div_factor=kw.get("div_factor", 25.0),
            final_div_factor=kw.get("final_div_factor", 1e4),
            anneal=kw.get("anneal_strategy", "cos"),
            three_phase=kw.get("three_phase", False),
        )

    return _torch(f"OneCycleLR-{label}", max_lr, total - 1, make, build)


def _one_cycle_cases() -> list[Case]:
    # OneCycleLR extrapolates at last_epoch == total_steps, where cadence holds
    # its final value: compare 0..total_steps-1.
    C = _one_cycle
    return [
        C("cos", 0.1, 100),
        C("linear", 0.1, 100, anneal_strategy="linear"),
        C(
            "cos-pct0.4-div5-final1e3",
            1.0,
            150,
            pct_start=0.4,
            div_factor=5.0,
            final_div_factor=1e3,
        ),
        C("cos-three_phase-pct0.25", 0.1, 120, pct_start=0.25, three_phase=True),
        C(
            "linear-three_phase-div10-final100",
            0.5,
            90,
            anneal_strategy="linear",
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
        ),
        # pct_start * total - 1 = 16.1: fractional phase ends.
        C("cos-fractional-phase-total57", 0.1, 57),
        C("linear-pct0.15-total73", 0.3, 73, anneal_strategy="linear", pct_start=0.15),
    ]


def _cyclic(
    label: str, base: float, peak: float, up: int, down: int | None, mode: str, gamma: float = 1.0
) -> Case:
    """CyclicLR (lr only: no momentum cycling) against `S.cyclic`, at steps 0..120."""

    def make(L: Any, o: Any) -> Any:
        return L.CyclicLR(
            o,
            base_lr=base,
            max_lr=peak,
            step_size_up=up,
            step_size_down=down,
            mode=mode,
            gamma=gamma,
            cycle_momentum=False,
        )

    def build() -> S.Schedule:
        return S.cyclic(base, peak, up, down, mode=mode, gamma=gamma)

    return _torch(f"CyclicLR-{label}", base, 120, make, build)


def _cyclic_cases() -> list[Case]:
    Y = _cyclic
    return [
        Y("triangular-up10-down15", 1e-3, 0.1, 10, 15, "triangular"),
        Y("triangular-up20", 0.01, 0.1, 20, None, "triangular"),
        Y("triangular2-up8-down12", 1e-3, 0.1, 8, 12, "triangular2"),
        Y("triangular2-up5-down3", 0.05, 0.5, 5, 3, "triangular2"),
        Y("exp_range-up10-down5-gamma0.99", 1e-3, 0.1, 10, 5, "exp_range", 0.99),
        Y("exp_range-up6-down14-gamma0.995", 0.01, 1.0, 6, 14, "exp_range", 0.995),
    ]


def _sequential_cases() -> list[Case]:
    """SequentialLR: each scheduler restarts at its own step 0 at its milestone (S.join)."""
    lr = 0.1

    def linear_cosine(L: Any, o: Any) -> Any:
        warm = L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=10)
        decay = L.CosineAnnealingLR(o, T_max=90)
        return L.SequentialLR(o, [warm, decay], milestones=[10])

    def linear_exponential(L: Any, o: Any) -> Any:
        warm = L.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=5)
        decay = L.ExponentialLR(o, gamma=0.95)
        return L.SequentialLR(o, [warm, decay], milestones=[5])

    def linear_held_cosine(L: Any, o: Any) -> Any:
        # The warmup ends at 10 and holds until the milestone at 15.
        warm = L.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=10)
        decay = L.CosineAnnealingLR(o, T_max=60, eta_min=1e-3)
        return L.SequentialLR(o, [warm, decay], milestones=[15])

    def three(L: Any, o: Any) -> Any:
        warm = L.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=8)
        decay = L.CosineAnnealingLR(o, T_max=40, eta_min=1e-3)
        tail = L.ExponentialLR(o, gamma=0.97)
        return L.SequentialLR(o, [warm, decay, tail], milestones=[8, 48])

    return [
        _torch(
            "SequentialLR-LinearLR10-CosineAnnealingLR90",
            lr,
            100,
            linear_cosine,
            lambda: S.join([S.linear(lr * 0.1, lr, 10), S.cosine(lr, 90)], [10]),
            (10,),
        ),
        _torch(
            "SequentialLR-LinearLR5-ExponentialLR0.95",
            lr,
            60,
            linear_exponential,
            lambda: S.join([S.linear(lr * 0.01, lr, 5), S.exponential(lr, 0.95)], [5]),
            (5,),
        ),
        _torch(
            "SequentialLR-LinearLR10-held-to15-CosineAnnealingLR60-eta_min1e-3",
            lr,
            75,
            linear_held_cosine,
            lambda: S.join([S.linear(lr * 0.25, lr, 10), S.cosine(lr, 60, end=1e-3)], [15]),
            (15,),
        ),
        _torch(
            "SequentialLR-LinearLR8-CosineAnnealingLR40-ExponentialLR0.97",
            lr,
            90,
            three,
            lambda: S.join(
                [S.linear(lr * 0.2, lr, 8), S.cosine(lr, 40, end=1e-3), S.exponential(lr, 0.97)],
                [8, 48],
            ),
            (8, 48),
        ),
    ]


def _chained_cases() -> list[Case]:
    """ChainedScheduler is the product of its members when none has a floor.

    Each member multiplies the current lr by its own step-to-step factor; a
    member with a floor (CosineAnnealingLR's eta_min > 0) adds instead, and
    then the chain is not a product (README, "Coming from PyTorch").
    """
    lr = 0.1

    def step_exp(L: Any, o: Any) -> Any:
        return L.ChainedScheduler([L.StepLR(o, 10, 0.5), L.ExponentialLR(o, 0.99)])

    def cosine_step(L: Any, o: Any) -> Any:
        return L.ChainedScheduler([L.CosineAnnealingLR(o, 50), L.StepLR(o, 20, 0.5)])

    def linear_multistep(L: Any, o: Any) -> Any:
        warm = L.LinearLR(o, start_factor=0.1, total_iters=10)
        return L.ChainedScheduler([warm, L.MultiStepLR(o, [20, 40], 0.1)])

    return [
        _torch(
            "ChainedScheduler-StepLR10-ExponentialLR0.99",
            lr,
            60,
            step_exp,
            lambda: S.step_decay(lr, 10, 0.5) * S.exponential(1.0, 0.99),
        ),
        # Within T_max (CosineAnnealingLR's recursion is periodic past it).
        _torch(
            "ChainedScheduler-CosineAnnealingLR50-StepLR20",
            lr,
            49,
            cosine_step,
            lambda: S.cosine(lr, 50) * S.step_decay(1.0, 20, 0.5),
        ),
        _torch(
            "ChainedScheduler-LinearLR10-MultiStepLR-20-40",
            lr,
            60,
            linear_multistep,
            lambda: S.linear(lr * 0.1, lr, 10) * S.multistep(1.0, (20, 40), 0.1),
        ),
    ]


def _edge_cases() -> list[Case]:
    """Configurations where float32 accuracy or torch's edge semantics are at stake."""
    C = _torch
    return [
        # Rising ramps from a small start: `end + (init - end) * w` lost 2e-6
        # (1.7e-5 at 0.001) of the start value to cancellation in float32.
        C(
            "LinearLR-0.01-to-1-iters100",
            0.1,
            110,
            lambda L, o: L.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=100),
            lambda: S.linear(0.1 * 0.01, 0.1 * 1.0, 100),
        ),
        C(
            "LinearLR-0.001-to-1-iters50",
            0.1,
            60,
            lambda L, o: L.LinearLR(o, start_factor=0.001, end_factor=1.0, total_iters=50),
            lambda: S.linear(0.1 * 0.001, 0.1 * 1.0, 50),
        ),
        # Cycles of length 81 ending at 119: a stretched step lost the small
        # values near a cycle's end (5.2e-6 relative).
        C(
            "CosineAnnealingWarmRestarts-T3-mult3",
            0.1,
            150,
            lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=3),
            lambda: S.restarts(S.cosine(0.1, 3), 3, mult=3),
        ),
        # Phase ends 59.4 and 118.8: rounded in two places, the last value was
        # 1.0001e-4 for 1e-4.
        _one_cycle(
            "linear-three_phase-total151-pct0.4-div5-final1e3",
            0.5,
            151,
            pct_start=0.4,
            anneal_strategy="linear",
            div_factor=5.0,
            final_div_factor=1e3,
            three_phase=True,
        ),
        _one_cycle("cos-total151-pct0.4-div5-final1e3", 0.5, 151, pct_start=0.4, div_factor=5.0),
        # torch keeps its milestones in a Counter: any order.
        C(
            "MultiStepLR-unsorted-30-10-10-gamma0.5",
            0.1,
            40,
            lambda L, o: L.MultiStepLR(o, milestones=[30, 10, 10], gamma=0.5),
            lambda: S.multistep(0.1, (30, 10, 10), 0.5),
        ),
        C(
            "ConstantLR-factor0.25-iters8",
            0.1,
            20,
            lambda L, o: L.ConstantLR(o, factor=0.25, total_iters=8),
            lambda: S.piecewise((8,), (0.1 * 0.25, 0.1)),
        ),
        # total_iters=0: torch applies the factor at step 0 and never removes it.
        C(
            "ConstantLR-factor0.1-iters0",
            0.1,
            20,
            lambda L, o: L.ConstantLR(o, factor=0.1, total_iters=0),
            lambda: S.constant(0.1 * 0.1),
        ),
    ]


class _Handover:
    """torch's SWA recipe: `first` steps the lr until update `at`, then `swa` (SWALR) does.

    Both are built up front, as in torch's SWA example; `swa` anneals from
    the lr `first` leaves.
    """

    def __init__(self, first: Any, swa: Any, at: int) -> None:
        self.first, self.swa, self.at, self.count = first, swa, at, 0

    def step(self) -> None:
        (self.first if self.count < self.at else self.swa).step()
        self.count += 1


def _swa(label: str, lr: float, n: int, swa_lr: float, epochs: int, strategy: str) -> Case:
    def make(L: Any, o: Any) -> Any:
        from torch.optim.swa_utils import SWALR

        return SWALR(o, swa_lr=swa_lr, anneal_epochs=epochs, anneal_strategy=strategy)

    return _torch(f"SWALR-{label}", lr, n, make, lambda: S.swa(lr, swa_lr, epochs, strategy))


def _swa_cases() -> list[Case]:
    """SWALR alone (from the optimizer's lr), and taking over from a cosine at update 30."""
    lr, at, t_max = 0.1, 30, 60

    def handover(L: Any, o: Any) -> Any:
        from torch.optim.swa_utils import SWALR

        first = L.CosineAnnealingLR(o, T_max=t_max)
        return _Handover(first, SWALR(o, swa_lr=0.02, anneal_epochs=8), at)

    def build() -> S.Schedule:
        cosine = S.cosine(lr, t_max)
        # The lr SWALR finds at update `at`: CosineAnnealingLR's, in float64.
        found = lr * (1 + math.cos(math.pi * at / t_max)) / 2
        return S.join([cosine, S.swa(found, 0.02, 8)], [at])

    return [
        _swa("cos-epochs10", 0.1, 30, 0.05, 10, "cos"),
        _swa("linear-epochs7-rising", 0.01, 20, 0.05, 7, "linear"),
        _swa("cos-epochs1", 0.1, 10, 0.02, 1, "cos"),
        # anneal_epochs=0: torch sets swa_lr at construction.
        _swa("linear-epochs0", 0.1, 10, 0.03, 0, "linear"),
        _torch("CosineAnnealingLR-then-SWALR-at30", lr, 60, handover, build, boundaries=(at,)),
    ]


def _one_cycle_momentum(label: str, read: str, total: int, **kw: Any) -> Case:
    """OneCycleLR's cycled momentum (SGD) or beta1 (Adam) against `S.one_cycle_momentum`."""

    def make(L: Any, o: Any) -> Any:
        return L.OneCycleLR(o, max_lr=0.1, total_steps=total, **kw)

    def build() -> S.Schedule:
        return S.one_cycle(
            0.1,
            total,
            pct_start=kw.get("pct_start", 0.3),
            anneal=kw.get("anneal_strategy", "cos"),
            three_phase=kw.get("three_phase", False),
        ).momentum(kw.get("base_momentum", 0.85), kw.get("max_momentum", 0.95))

    return _torch(f"OneCycleLR-{read}-{label}", 0.1, total - 1, make, build, read=read)


def _cyclic_momentum(label: str, read: str, up: int, down: int | None, **kw: Any) -> Case:
    """CyclicLR's cycled momentum (SGD) or beta1 (Adam) against `S.cyclic_momentum`."""

    def make(L: Any, o: Any) -> Any:
        return L.CyclicLR(o, 1e-3, 0.1, step_size_up=up, step_size_down=down, **kw)

    def build() -> S.Schedule:
        return S.cyclic(
            1e-3, 0.1, up, down, mode=kw.get("mode", "triangular"), gamma=kw.get("gamma", 1.0)
        ).momentum(kw.get("base_momentum", 0.8), kw.get("max_momentum", 0.9))

    return _torch(f"CyclicLR-{read}-{label}", 1e-3, 100, make, build, read=read)


def _momentum_cases() -> list[Case]:
    """torch's cycle_momentum=True (its default), read from SGD's momentum or Adam's betas[0]."""
    M, Y = _one_cycle_momentum, _cyclic_momentum
    return [
        M("cos-total100", "momentum", 100),
        M("linear-total73-pct0.15", "momentum", 73, anneal_strategy="linear", pct_start=0.15),
        M("cos-three_phase-total120", "momentum", 120, pct_start=0.25, three_phase=True),
        M(
            "linear-three_phase-total151-base0.8-max0.99",
            "beta1",
            151,
            pct_start=0.4,
            anneal_strategy="linear",
            three_phase=True,
            base_momentum=0.8,
            max_momentum=0.99,
        ),
        M("cos-total57", "beta1", 57),
        Y("triangular-up10-down15", "momentum", 10, 15),
        Y("triangular2-up8-down12", "momentum", 8, 12, mode="triangular2"),
        Y(
            "exp_range-up6-down14-gamma0.99-base0.85-max0.95",
            "beta1",
            6,
            14,
            mode="exp_range",
            gamma=0.99,
            base_momentum=0.85,
            max_momentum=0.95,
        ),
    ]


def _timm_cases() -> list[Case]:
    M = _timm
    return [
        M("t50-default-one-cycle", 70, 0.1, 50),
        M(
            "t40-warmup5-init1e-4-lr_min1e-3",
            60,
            0.1,
            40,
            lr_min=1e-3,
            warmup_t=5,
            warmup_lr_init=1e-4,
        ),
        M("t50-k_decay2-lr_min1e-4", 60, 0.1, 50, lr_min=1e-4, k_decay=2.0),
        M("t30-k_decay0.5-warmup10", 50, 0.1, 30, k_decay=0.5, warmup_t=10),
        M("t20-mul1-limit3", 70, 0.1, 20, cycle_limit=3),
        M(
            "t25-mul1-decay0.5-lr_min1e-3-limit4-warmup10",
            120,
            0.1,
            25,
            lr_min=1e-3,
            cycle_decay=0.5,
            cycle_limit=4,
            warmup_t=10,
            warmup_lr_init=1e-3,
        ),
        M(
            "t10-mul2-decay0.5-lr_min1e-3-limit4",
            160,
            0.1,
            10,
            lr_min=1e-3,
            cycle_mul=2.0,
            cycle_decay=0.5,
            cycle_limit=4,
        ),
        M(
            "t20-mul1.5-decay0.7-limit5",
            200,
            0.1,
            20,
            cycle_mul=1.5,
            cycle_decay=0.7,
            cycle_limit=5,
        ),
        M(
            "t12-mul1.5-k_decay1.5-lr_min1e-3-warmup4-nolimit",
            150,
            0.1,
            12,
            lr_min=1e-3,
            cycle_mul=1.5,
            k_decay=1.5,
            cycle_limit=None,
            warmup_t=4,
            warmup_lr_init=0.01,
        ),
        M(
            "t8-mul2-decay0.8-warmup3-nolimit",
            130,
            0.1,
            8,
            cycle_mul=2.0,
            cycle_decay=0.8,
            cycle_limit=None,
            warmup_t=3,
            warmup_lr_init=0.01,
        ),
        M(
            "t15-mul1-decay0.9-lr_min0.01-nolimit",
            100,
            0.5,
            15,
            lr_min=0.01,
            cycle_decay=0.9,
            cycle_limit=None,
        ),
    ]


def _accelerated_cases() -> list[Case]:
    A = _accelerated
    return [
        A("w0-c80-cool20", 0.1, 1e-3, 0, 0.0, 80, 20),
        A("w10-start1e-4-c70-cool20", 0.1, 1e-3, 10, 1e-4, 70, 20),
        A("w10-c60-cool10-k2", 0.1, 1e-4, 10, 0.0, 60, 10, k=2.0),
        A("w5-c50-cool0-k0.5-lr_min0", 0.1, 0.0, 5, 0.0, 50, 0, k=0.5),
    ]


CASES: list[Case] = [
    *_transformers_cases(),
    *_torch_cases(),
    *_timm_cases(),
    *_accelerated_cases(),
]

if len({case.id for case in CASES}) != len(CASES):
    raise RuntimeError("schedule_cases: duplicate case ids")


def reference_versions() -> dict[str, str]:
    """Versions of the reference libraries that produced the golden vectors."""
    return {name: importlib.metadata.version(name) for name in ("torch", "transformers", "timm")}


def generate() -> dict:
    """Run every reference; the JSON-safe golden table for `GOLDEN`."""
    values = {}
    for case in CASES:
        run = case.reference()
        if len(run) != case.n + 1:
            raise RuntimeError(f"{case.id}: {len(run)} values for steps 0..{case.n}")
        values[case.id] = run
    return {"versions": reference_versions(), "cases": values}
