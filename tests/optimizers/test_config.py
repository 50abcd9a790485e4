"""to_config / from_config: exact round trips, registered types only, clear errors."""

from __future__ import annotations

import json
import math

import pytest

from cadence import optimizers as O
from cadence import schedules as S


def test_config_is_nested_json_with_schedules_and_groups():
    opt = O.chain(
        O.clip_by_global_norm(1.0, norm_type=math.inf),
        O.adamw(S.warmup(S.cosine(1e-3, 90), 10), groups={"*/bias": {"weight_decay": 0.0}}),
    )
    config = opt.to_config()
    assert config["type"] == "chain"
    assert config["txs"][0] == {"type": "clip_by_global_norm", "max_norm": 1.0, "norm_type": "inf"}
    adamw = config["txs"][1]
    assert adamw["lr"]["type"] == "warmup" and adamw["lr"]["s"]["type"] == "cosine"
    assert adamw["groups"] == {"*/bias": {"weight_decay": 0.0}}
    assert O.from_config(json.loads(json.dumps(config))) == opt


def test_state_dtype_and_wrappers_round_trip():
    import jax.numpy as jnp

    opt = O.reduce_on_plateau(
        O.accumulate(O.skip_nonfinite(O.lion(state_dtype=jnp.bfloat16)), 4),
        mode="max",
        threshold_mode="abs",
        cooldown=3,
    )
    config = json.loads(json.dumps(opt.to_config()))
    assert config["tx"]["tx"]["tx"]["state_dtype"] == "bfloat16"
    assert O.from_config(config) == opt


def test_python_functions_cannot_be_serialized():
    with pytest.raises(ValueError, match="adam.lr is a Python function"):
        O.adam(lambda t: 1e-3).to_config()
    with pytest.raises(ValueError, match=r"groups\['b'\]\['lr'\]"):
        O.sgd(0.1, groups={"b": {"lr": lambda t: 0.1}}).to_config()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "sparse_adam"}, "not a transformation type"),
        ({"lr": 0.1}, "not a transformation type"),
        ("sgd", "must be a dict"),
        ({"type": "sgd"}, "missing field 'lr'"),
        ({"type": "sgd", "lr": 0.1, "betas": [0.9]}, "unknown field"),
        ({"type": "sgd", "lr": "0.1"}, "config.lr must be a number or a schedule config"),
        ({"type": "sgd", "lr": -0.1}, "lr must be >= 0"),
        ({"type": "sgd", "lr": {"type": "nope"}}, "config.lr"),
        ({"type": "adam", "amsgrad": 1}, "true or false"),
        ({"type": "adam", "groups": {"b": {"nope": 1.0}}}, "unknown hyperparameter 'nope'"),
        ({"type": "accumulate", "tx": {"type": "sgd", "lr": 0.1}, "every": 2.5}, "integer"),
        ({"type": "chain", "txs": [{"type": "sgd"}]}, r"config.txs\[0\]: missing field"),
        ({"type": "chain", "txs": {"type": "sgd"}}, "list 'txs'"),
        ({"type": "clip_by_global_norm", "max_norm": 1.0, "norm_type": "max"}, "inf"),
        ({"type": "foreign", "tx": None}, "not a transformation type"),
    ],
)
def test_from_config_rejects_bad_input(config, message):
    with pytest.raises(ValueError, match=message):
        O.from_config(config)
