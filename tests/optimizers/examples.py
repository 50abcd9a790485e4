"""Instances of every optimizer and transformation type, for the invariant tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cadence import optimizers as O
from cadence import schedules as S

# Every optimizer with its optional paths switched on (momentum, weight decay,
# amsgrad, centered, ...), as users would build them: concrete numbers.
OPTIMIZERS: dict[str, O.Transformation] = {
    "sgd": O.sgd(0.1),
    "sgd_nesterov": O.sgd(0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "sgd_dampening": O.sgd(S.cosine(0.1, 10), momentum=0.9, dampening=0.3),
    "adam": O.adam(0.01, weight_decay=0.01),
    "adam_amsgrad": O.adam(0.01, amsgrad=True),
    "adamw": O.adamw(S.warmup(S.cosine(0.01, 8), 2, init=1e-3), weight_decay=0.1, amsgrad=True),
    "rmsprop": O.rmsprop(0.01),
    "rmsprop_centered": O.rmsprop(0.01, momentum=0.9, centered=True, weight_decay=0.01),
    "adagrad": O.adagrad(0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
    "lion": O.lion(0.001, weight_decay=0.1),
    "nadam": O.nadam(0.01, weight_decay=0.01, momentum_decay=0.01),
    "nadam_decoupled": O.nadam(
        S.cosine(0.01, 8),
        weight_decay=0.1,
        decoupled_weight_decay=True,
        groups={"*/b": {"b1": 0.5}},
    ),
    "adafactor": O.adafactor(S.cosine(0.05, 8), weight_decay=0.1, eps1=1e-6, d=3.0),
    "asgd": O.asgd(0.05, lambd=1e-2, t0=2.0, weight_decay=0.01),
    "asgd_groups": O.asgd(
        S.cosine(0.05, 8), alpha=0.5, t0=0.0, groups={"*/b": {"lr": 0.01, "lambd": 0.0}}
    ),
    "rprop": O.rprop(0.05),
    "rprop_groups": O.rprop(
        S.cosine(0.05, 8),
        eta_minus=0.3,
        eta_plus=1.5,
        min_step=1e-3,
        max_step=0.1,
        groups={"*/b": {"lr": 0.01, "max_step": 0.05}},
    ),
    "adamw_groups": O.adamw(
        0.01, groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": S.linear(1e-3, 0.0, 5)}}
    ),
    "adopt": O.adopt(0.01, weight_decay=0.01),
    "adopt_decoupled": O.adopt(
        S.cosine(0.01, 8),
        b1=0.3,
        weight_decay=0.1,
        decoupled=True,
        clip_exp=None,
        groups={"*/b": {"b2": 0.99}},
    ),
    "lamb": O.lamb(0.01, trust_clip=True),
    "lamb_groups": O.lamb(
        S.cosine(0.01, 8),
        grad_averaging=False,
        bias_correction=False,
        max_grad_norm=None,
        always_adapt=True,
        groups={"*/b": {"weight_decay": 0.0}},
    ),
    "lars": O.lars(0.1, momentum=0.9, weight_decay=0.01, nesterov=True, trust_coeff=0.01),
    "lars_clip": O.lars(
        S.cosine(0.1, 8),
        momentum=0.9,
        dampening=0.1,
        trust_clip=True,
        always_adapt=True,
        groups={"encoder/**": {"lr": 0.05}},
    ),
    "radam": O.radam(0.01, weight_decay=0.01),
    "radam_decoupled": O.radam(
        S.cosine(0.01, 8),
        weight_decay=0.1,
        decoupled_weight_decay=True,
        groups={"*/b": {"weight_decay": 0.0, "b2": 0.8}},
    ),
    "adamax": O.adamax(0.01, weight_decay=0.01),
    "adamax_groups": O.adamax(S.cosine(0.01, 8), groups={"*/b": {"b1": 0.5}}),
    "adadelta": O.adadelta(weight_decay=0.01),
    "adadelta_groups": O.adadelta(S.cosine(1.0, 8), groups={"encoder/**": {"rho": 0.5}}),
    "ademamix": O.ademamix(0.01, weight_decay=0.01),
    "ademamix_schedules": O.ademamix(
        S.cosine(0.01, 8),
        b3=S.linear(0.9, 0.999, 8),
        alpha=S.linear(0.0, 5.0, 8),
        groups={"*/b": {"weight_decay": 0.0, "b3": 0.99}},
    ),
    "schedule_free_adamw": O.schedule_free_adamw(0.01, weight_decay=0.01, warmup_steps=3, r=0.5),
    "schedule_free_adamw_groups": O.schedule_free_adamw(
        S.cosine(0.01, 8),
        weight_decay=0.1,
        groups={"*/b": {"b1": 0.5, "weight_decay": 0.0}, "head/**": {"r": 1.0}},
    ),
    "schedule_free_sgd": O.schedule_free_sgd(
        0.1, momentum=0.8, weight_decay=0.01, warmup_steps=2, weight_lr_power=1.0
    ),
}

# Muon takes 2-D leaves only, so it is not among `OPTIMIZERS` (whose example
# parameters have vectors): `tests/optimizers/test_more_optimizers.py` runs
# the same invariants on it with `matrices()`.
MATRIX_OPTIMIZERS: dict[str, O.Transformation] = {
    "muon": O.muon(0.02, ns_dtype=None),
    "muon_bf16": O.muon(
        S.cosine(0.02, 8), momentum=0.9, nesterov=False, adjust_lr_fn="match_rms_adamw"
    ),
    "muon_groups": O.muon(0.02, groups={"head/**": {"lr": 0.01, "weight_decay": 0.0}}),
}

# Building blocks and wrappers (each holding an optimizer).
TRANSFORMS: dict[str, O.Transformation] = {
    "chain": O.chain(O.clip_by_global_norm(1.0), O.adam(0.01)),
    "clip_by_global_norm": O.clip_by_global_norm(S.linear(2.0, 1.0, 5), norm_type=float("inf")),
    "clip_by_value": O.clip_by_value(0.5),
    "accumulate": O.accumulate(O.sgd(0.1, momentum=0.9), 2),
    "skip_nonfinite": O.skip_nonfinite(O.adamw(0.01)),
    "reduce_on_plateau": O.reduce_on_plateau(O.rmsprop(0.01), patience=1, cooldown=1),
    "flatten": O.flatten(O.adamw(0.01, groups={"*/b": {"weight_decay": 0.0}})),
    "partition": O.partition(
        {"matrices": O.sgd(0.1, momentum=0.9), "rest": O.adam(0.01, weight_decay=0.01)},
        O.rules(("matrices", "**", 2), ("rest",)),
    ),
    "master_weights": O.master_weights(O.adamw(0.01, weight_decay=0.1)),
    "loss_scale": O.loss_scale(O.adam(0.01), init_scale=4.0, growth_interval=2),
    # k=1 syncs on every update: the first (a copy) and the later (a pull).
    "lookahead": O.lookahead(O.sgd(0.1, momentum=0.9), alpha=0.5, k=1),
    "lookahead_chain": O.lookahead(O.chain(O.clip_by_global_norm(1.0), O.adam(0.01)), 0.8, k=2),
    "average_ema": O.average(O.adamw(S.cosine(0.01, 8)), decay=0.9, start=1),
    "average_swa": O.average(O.sgd(0.1, momentum=0.9), every=2),
    # torch's LBFGS: evaluates the loss itself (`EXTRA` gives it one). A fixed
    # step: the examples' gradients and value are not the loss's, and a line
    # search from a wrong value stays at the start (test_lbfgs.py covers it).
    "lbfgs": O.lbfgs(S.cosine(0.5, 8), max_iter=4, history_size=2),
}

EVERYTHING = OPTIMIZERS | TRANSFORMS

# Extra `update` arguments a transformation needs.
EXTRA = {"reduce_on_plateau": {"value": 1.0}}


def quartic(params):
    """A loss for `lbfgs` on any parameter tree (the examples' gradients are not its own)."""
    z = [x.astype(jnp.float32) - 0.5 for x in jax.tree.leaves(params)]
    return sum(jnp.sum(x**2 + x**4) for x in z)


EXTRA["lbfgs"] = {"value": 1.0, "value_fn": quartic}


def params(dtype=jnp.float32):
    """A small two-layer parameter tree (paths encoder/w, encoder/b, head/w, head/b)."""
    rng = np.random.default_rng(0)
    tree = {
        "encoder": {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)},
        "head": {"w": rng.standard_normal((2, 1)), "b": rng.standard_normal(1)},
    }
    return _cast(tree, dtype)


def grads(k: int, dtype=jnp.float32):
    """Gradients for step k, of `params`' structure, with varied scales."""
    rng = np.random.default_rng(100 + k)
    scale = 10.0 ** rng.uniform(-2, 1)
    tree = {
        "encoder": {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)},
        "head": {"w": rng.standard_normal((2, 1)), "b": rng.standard_normal(1)},
    }
    return _cast({k: {n: v * scale for n, v in d.items()} for k, d in tree.items()}, dtype)


def matrices(dtype=jnp.float32, seed=0):
    """A tree of 2-D leaves only (paths encoder/w, head/w), one tall and one wide."""
    rng = np.random.default_rng(seed)
    tree = {
        "encoder": {"w": rng.standard_normal((3, 2))},
        "head": {"w": rng.standard_normal((2, 4))},
    }
    return _cast(tree, dtype)


def _cast(tree, dtype):
    return {k: {n: jnp.asarray(v, dtype) for n, v in d.items()} for k, d in tree.items()}
