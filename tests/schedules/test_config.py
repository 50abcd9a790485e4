"""Config I/O: exact round trips, and malformed or hostile input refused with ValueError."""

from __future__ import annotations

import json

import pytest

from cadence import schedules as S

GOOD = {"type": "linear", "init": 1.0, "end": 0.0, "steps": 10}

BAD = [
    ([], "must be a dict"),
    ("linear", "must be a dict"),
    ({}, "type None is not a schedule type"),
    ({"type": "Linear"}, "is not a schedule type"),
    ({"type": "os.system", "command": "true"}, "is not a schedule type"),
    ({"type": "__import__", "name": "os"}, "is not a schedule type"),
    ({"type": "Schedule"}, "is not a schedule type"),
    ({"type": "from_fn", "fn": "lambda t: t"}, "cannot be built from a config"),
    ({"type": "linear", "init": 1.0, "end": 0.0}, "missing field 'steps'"),
    ({**GOOD, "extra": 1}, r"unknown field\(s\) \['extra'\]"),
    ({**GOOD, "steps": 10.5}, "steps must be an integer"),
    ({**GOOD, "steps": "10"}, "steps must be an integer"),
    ({**GOOD, "steps": True}, "steps must be an integer"),
    ({**GOOD, "steps": 0}, "steps must be >= 1"),
    ({**GOOD, "init": "1.0"}, "init must be a number"),
    ({**GOOD, "init": None}, "init must be a number"),
    ({**GOOD, "init": [1.0]}, "init must be a number"),
    ({**GOOD, "init": {"type": "constant", "value": 1.0}}, "init must be a number"),
    ({"type": "multistep", "init": 1.0, "milestones": [1.5], "gamma": 0.1}, "list of integers"),
    ({"type": "piecewise", "boundaries": [1], "values": "ab"}, "list of numbers"),
    ({"type": "exponential", "init": 1.0, "rate": 0.5, "staircase": "yes"}, "true or false"),
    ({"type": "cyclic", "base": 0.1, "peak": 1.0, "up": 5, "mode": 3}, "must be a string"),
    ({"type": "warmup", "s": GOOD, "steps": 5, "init": "0"}, r"config.init must be a number"),
    ({"type": "warmup", "s": {**GOOD, "steps": -1}, "steps": 5}, r"config.s: linear: steps"),
    ({"type": "warmup", "s": 3.0, "steps": 5}, r"config.s must be a dict"),
    ({"type": "join", "schedules": GOOD, "boundaries": []}, "list of schedule configs"),
    ({"type": "join", "schedules": [GOOD, {"type": "x"}], "boundaries": [3]}, r"schedules\[1\]"),
    ({"type": "join", "schedules": [GOOD, GOOD], "boundaries": [3, 4]}, "boundaries must have"),
    ({"type": "arithmetic", "op": "**", "left": 1.0, "right": GOOD}, "unknown op"),
    ({"type": "arithmetic", "op": "*", "left": "x", "right": GOOD}, "left must be a number"),
]


@pytest.mark.parametrize(("config", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        S.from_config(config)


def test_nested_round_trip_through_json_text():
    s = S.clip(
        S.join(
            [
                S.warmup(S.restarts(S.cosine(1e-3, 50, end=1e-5, k=1.5), 50, 2.0, 0.5, 3), 10),
                S.constant(1e-5) * 0.5 + S.piecewise((3,), (0.0, 1e-6)),
            ],
            [400],
        ),
        lo=0.0,
    )
    config = S.to_config(s)
    assert json.loads(json.dumps(config)) == config
    assert S.from_config(json.loads(json.dumps(config))) == s
    assert config["s"]["schedules"][1]["type"] == "arithmetic"


def test_defaults_may_be_omitted_from_a_config():
    assert S.from_config({"type": "cosine", "init": 1.0, "steps": 10}) == S.cosine(1.0, 10)


def test_to_config_refuses_traced_and_batched_leaves():
    import jax
    import jax.numpy as jnp

    batched = jax.tree.map(lambda x: jnp.array([x, x]), S.constant(1.0))
    with pytest.raises(ValueError, match="not a scalar"):
        S.to_config(batched)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda s: S.to_config(s) and 0.0)(S.constant(1.0))
    with pytest.raises(TypeError, match="expected a Schedule"):
        S.to_config({"type": "constant", "value": 1.0})


def test_concrete_array_leaves_serialize_as_floats():
    import jax.numpy as jnp

    s = S.cosine(jnp.float32(0.5), 10)
    assert S.to_config(s)["init"] == 0.5
