"""The README's "Coming from PyTorch" section, kept honest.

The README's example itself runs in tests/test_readme.py; here
`test_scheduler_table` checks every row of the README's lr_scheduler table
against torch, and `test_optimizer_table` every optimizer row.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from cadence import optimizers as O
from cadence import schedules as S

torch = pytest.importorskip("torch")


LR = 0.1
STEPS = 60

# (torch scheduler factory, cadence schedule): the README's table, row by row.
SCHEDULERS = {
    "LambdaLR": (
        lambda s, o: s.LambdaLR(o, lambda k: 0.95**k),
        S.from_fn(lambda t: LR * 0.95**t),
    ),
    "MultiplicativeLR": (
        lambda s, o: s.MultiplicativeLR(o, lambda k: 0.9),
        S.exponential(LR, 0.9),
    ),
    "StepLR": (lambda s, o: s.StepLR(o, step_size=10, gamma=0.5), S.step_decay(LR, 10, 0.5)),
    "MultiStepLR": (
        lambda s, o: s.MultiStepLR(o, milestones=[10, 25], gamma=0.1),
        S.multistep(LR, (10, 25), 0.1),
    ),
    "ConstantLR": (
        lambda s, o: s.ConstantLR(o, factor=0.5, total_iters=8),
        S.piecewise((8,), (LR * 0.5, LR)),
    ),
    "LinearLR": (
        lambda s, o: s.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=20),
        S.linear(LR * 0.1, LR * 1.0, 20),
    ),
    "ExponentialLR": (lambda s, o: s.ExponentialLR(o, gamma=0.97), S.exponential(LR, 0.97)),
    "SequentialLR": (
        lambda s, o: s.SequentialLR(
            o,
            [s.LinearLR(o, 0.1, 1.0, total_iters=10), s.ExponentialLR(o, gamma=0.9)],
            milestones=[10],
        ),
        S.join([S.linear(LR * 0.1, LR, 10), S.exponential(LR, 0.9)], [10]),
    ),
    "CosineAnnealingLR": (
        lambda s, o: s.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.001),
        S.cosine(LR, STEPS, end=0.001),
    ),
    "ChainedScheduler": (
        lambda s, o: s.ChainedScheduler([s.StepLR(o, 10, 0.5), s.ExponentialLR(o, 0.99)]),
        S.step_decay(LR, 10, 0.5) * S.exponential(1.0, 0.99),
    ),
    "CyclicLR": (
        lambda s, o: s.CyclicLR(
            o, 0.01, LR, step_size_up=10, mode="triangular2", cycle_momentum=False
        ),
        S.cyclic(0.01, LR, 10, mode="triangular2"),
    ),
    "CosineAnnealingWarmRestarts": (
        lambda s, o: s.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=0.001),
        S.restarts(S.cosine(LR, 10, end=0.001), 10, mult=2),
    ),
    "OneCycleLR": (
        lambda s, o: s.OneCycleLR(o, max_lr=LR, total_steps=STEPS, cycle_momentum=False),
        S.one_cycle(LR, STEPS),
    ),
    "PolynomialLR": (
        lambda s, o: s.PolynomialLR(o, total_iters=40, power=2.0),
        S.polynomial(LR, 40, power=2.0),
    ),
    "SWALR": (
        lambda s, o: torch.optim.swa_utils.SWALR(
            o, swa_lr=0.02, anneal_epochs=20, anneal_strategy="linear"
        ),
        S.swa(LR, 0.02, 20, "linear"),
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_table(name, x64):
    make, schedule = SCHEDULERS[name]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=LR)
    sched = make(torch.optim.lr_scheduler, opt)
    expected = []
    for _ in range(STEPS):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = np.asarray(schedule(jnp.arange(STEPS)))
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-15)


OPTIMIZERS = {
    "SGD": (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        O.sgd(0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    ),
    "Adam": (
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01, amsgrad=True),
        O.adam(0.01, b1=0.8, b2=0.99, weight_decay=0.01, amsgrad=True),
    ),
    "AdamW": (lambda p: torch.optim.AdamW(p, lr=0.01), O.adamw(0.01)),
    "RMSprop": (
        lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
        O.rmsprop(0.01, momentum=0.5, centered=True),
    ),
    "Adagrad": (
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        O.adagrad(0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_table(name, x64):
    make, opt = OPTIMIZERS[name]
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((20, 4))
    p_torch = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    reference = make([p_torch])
    p = jnp.ones(4)
    state = opt.init(p)
    for g in grads:
        p_torch.grad = torch.tensor(g)
        reference.step()
        u, state = opt.update(jnp.asarray(g), state, p)
        p = p + u
    np.testing.assert_allclose(p, p_torch.detach().numpy(), rtol=1e-12)
