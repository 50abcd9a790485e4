"""Deeply nested schedules: linear cost, bounded configs, and a fuzz of `from_config`.

`warmup` evaluated its child twice and `restarts` three times per call, so a
1 KB config of 28 nested warmups was accepted and then took longer than a
run (16 levels: 46 s); around 400 levels `from_config` raised RecursionError.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadence import schedules as S
from cadence.schedules._config import MAX_DEPTH

from .examples import EXAMPLES


class _Counting(S.Schedule):
    """Not registered: counts the calls of its wrapped schedule."""

    calls = 0

    def _value(self, t):
        type(self).calls += 1
        return t * 0 + 1.0


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: S.warmup(s, 5, init=0.1),
        lambda s: S.restarts(s, 7),
        lambda s: S.restarts(s, 7, mult=2.0, decay=0.5, limit=3),
    ],
    ids=["warmup", "restarts", "restarts-mult"],
)
def test_children_are_evaluated_once_per_call(wrap) -> None:
    _Counting.calls = 0
    s = _Counting()
    for _ in range(6):
        s = wrap(s)
    values = s(jnp.arange(20))
    assert _Counting.calls == 1
    assert values.shape == (20,)


def _nested_warmups(depth: int) -> dict:
    config: dict = {"type": "constant", "value": 1.0}
    for _ in range(depth):
        config = {"type": "warmup", "s": config, "steps": 2, "init": 0.0}
    return config


def _equations(jaxpr) -> int:
    """Equations in a jaxpr, those of its sub-jaxprs (pjit, cond, ...) included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                count += _equations(inner)
    return count


def test_deep_nesting_evaluates_in_linear_time() -> None:
    # The traced program's size, not a timing: doubling the depth at most
    # doubles it (it grew as 2**depth: 46 s at 16 levels).
    sizes = {}
    for depth in (14, 28):
        s = S.from_config(_nested_warmups(depth))
        sizes[depth] = _equations(jax.make_jaxpr(s)(jnp.arange(100)).jaxpr)
    assert sizes[28] <= 2.2 * sizes[14], sizes
    values = np.asarray(S.from_config(_nested_warmups(28))(jnp.arange(100)))
    assert values[0] == 0.0 and values[-1] == 1.0


def test_from_config_bounds_the_depth() -> None:
    assert S.from_config(_nested_warmups(MAX_DEPTH - 1))
    with pytest.raises(ValueError, match="nest deeper than 32 levels"):
        S.from_config(_nested_warmups(40))
    with pytest.raises(ValueError, match="nest deeper"):
        S.from_config(_nested_warmups(1000))  # was RecursionError
    # Through JSON, as a config file arrives.
    with pytest.raises(ValueError, match="nest deeper"):
        S.from_config(json.loads(json.dumps(_nested_warmups(500))))


# --------------------------------------------------------------------- fuzz

CONFIGS = [S.to_config(s) for s in EXAMPLES.values()]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-3, 3), max_size=3),
    st.just({"type": "constant", "value": 1.0}),
    st.just({}),
)


def _paths(config: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(config, dict):
        for k, v in config.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(config: object, path: tuple, value: object, delete: bool) -> object:
    config = json.loads(json.dumps(config))
    if not path:
        return value
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return config


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.data())
def test_from_config_fuzz(data: st.DataObject) -> None:
    """A mutated config builds a schedule that round-trips, or raises ValueError; nothing else."""
    config = data.draw(st.sampled_from(CONFIGS))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(config)))
        config = _mutate(config, path, data.draw(junk), data.draw(st.booleans()))
    try:
        s = S.from_config(config)
    except ValueError:
        return
    assert S.from_config(S.to_config(s)) == s
    values = np.asarray(s(jnp.array([0, 1, 1000])))
    assert values.shape == (3,)
    assert not np.any(np.isnan(values)), (config, values)
