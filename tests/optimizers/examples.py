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
    "adamw_groups": O.adamw(
        0.01, groups={"*/b": {"weight_decay": 0.0}, "encoder/**": {"lr": S.linear(1e-3, 0.0, 5)}}
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
