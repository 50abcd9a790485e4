"""torch's momentum cycling (``cycle_momentum=True``, its default) with cadence's optimizers.

OneCycleLR and CyclicLR write a cycled momentum into SGD's ``momentum`` or
Adam's ``betas[0]`` at every step; ``s.momentum()`` is that schedule. The
values themselves are parity cases (``tests/reference/schedule_cases.py``);
here whole training trajectories are compared with live torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S

STEPS = 40
RNG = np.random.default_rng(3)
A = RNG.standard_normal((8, 3))
Y = RNG.standard_normal(8)
W0 = RNG.standard_normal(3)


def _torch_trajectory(make_opt: Callable[[Any], Any], make_sched: Callable[[Any, Any], Any]):
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = make_opt([w])
    sched = make_sched(torch.optim.lr_scheduler, opt)
    a, y = torch.tensor(A), torch.tensor(Y)
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((a @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        out.append(w.detach().numpy().copy())
    return np.array(out)


def _cadence_trajectory(tx: optax.GradientTransformation) -> np.ndarray:
    def loss(w: jax.Array) -> jax.Array:
        return jnp.mean((jnp.asarray(A) @ w - jnp.asarray(Y)) ** 2)

    @jax.jit
    def step(w, state):
        updates, state = tx.update(jax.grad(loss)(w), state, w)
        return optax.apply_updates(w, updates), state

    w = jnp.asarray(W0)
    state = tx.init(w)
    out = []
    for _ in range(STEPS):
        w, state = step(w, state)
        out.append(np.asarray(w))
    return np.array(out)


def _one_cycle(**kw: Any) -> tuple[Callable[[Any, Any], Any], S.one_cycle]:
    def make(L: Any, o: Any) -> Any:
        return L.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, **kw)

    lr = S.one_cycle(
        0.1,
        STEPS,
        pct_start=kw.get("pct_start", 0.3),
        anneal=kw.get("anneal_strategy", "cos"),
        three_phase=kw.get("three_phase", False),
    )
    return make, lr


def _cyclic(**kw: Any) -> tuple[Callable[[Any, Any], Any], S.cyclic]:
    def make(L: Any, o: Any) -> Any:
        return L.CyclicLR(o, 1e-3, 0.05, step_size_up=6, step_size_down=9, **kw)

    lr = S.cyclic(1e-3, 0.05, 6, 9, mode=kw.get("mode", "triangular"), gamma=kw.get("gamma", 1.0))
    return make, lr


CONFIGS = {
    "OneCycleLR-cos": _one_cycle(),
    "OneCycleLR-linear-three_phase": _one_cycle(
        anneal_strategy="linear", three_phase=True, pct_start=0.25
    ),
    "CyclicLR-triangular2": _cyclic(mode="triangular2"),
    "CyclicLR-exp_range": _cyclic(mode="exp_range", gamma=0.98),
}
MOMENTA = {"OneCycleLR": (0.85, 0.95), "CyclicLR": (0.8, 0.9)}  # torch's defaults


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_cycling_matches_torch(config: str, nesterov: bool, x64: None) -> None:
    torch = pytest.importorskip("torch")
    make_sched, lr = CONFIGS[config]
    base, peak = MOMENTA[config.split("-")[0]]

    def make_opt(params: Any) -> Any:
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=nesterov)

    theirs = _torch_trajectory(make_opt, make_sched)
    ours = _cadence_trajectory(O.sgd(lr, momentum=lr.momentum(base, peak), nesterov=nesterov))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-13)
    # Without the momentum schedule the run differs from update 2 on.
    plain = _cadence_trajectory(O.sgd(lr, momentum=0.9, nesterov=nesterov))
    assert not np.allclose(plain, theirs, rtol=1e-6)


@pytest.mark.parametrize("config", CONFIGS)
def test_adam_b1_cycling_matches_torch(config: str, x64: None) -> None:
    torch = pytest.importorskip("torch")
    make_sched, lr = CONFIGS[config]
    base, peak = MOMENTA[config.split("-")[0]]
    theirs = _torch_trajectory(lambda p: torch.optim.Adam(p, lr=0.1), make_sched)
    ours = _cadence_trajectory(O.adam(lr, b1=lr.momentum(base, peak)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-13)


def test_momentum_methods_copy_the_cycle() -> None:
    lr = S.one_cycle(0.1, 90, pct_start=0.25, anneal="linear", three_phase=True)
    assert lr.momentum(0.8, 0.99) == S.one_cycle_momentum(
        90, 0.25, base=0.8, peak=0.99, anneal="linear", three_phase=True
    )
    cyc = S.cyclic(1e-3, 0.1, 10, 15, mode="exp_range", gamma=0.99)
    assert cyc.momentum() == S.cyclic_momentum(0.8, 0.9, 10, 15, "exp_range", 0.99)


def test_momentum_schedules_validate_like_the_lr_ones() -> None:
    with pytest.raises(ValueError, match="one_cycle_momentum: pct_start"):
        S.one_cycle_momentum(100, pct_start=1.0)
    with pytest.raises(ValueError, match="unknown anneal"):
        S.one_cycle_momentum(100, anneal="cosine")
    with pytest.raises(ValueError, match="up must be > 0"):
        S.cyclic_momentum(0.8, 0.9, 0)
    with pytest.raises(ValueError, match="base must be finite"):
        S.cyclic_momentum(float("inf"), 0.9, 10)
