"""Fuzz: every constructor argument and every config field fed bad values.

The only acceptable outcomes are a transformation, or a ValueError/TypeError
that names the argument (the config path for `from_config`); never another
exception.
"""

from __future__ import annotations

import copy
import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadence import optimizers as O
from cadence import schedules as S
from cadence.optimizers import _base as B
from cadence.optimizers._groups import Groups

from .examples import EVERYTHING

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# Values a user might pass by mistake, of every kind.
odd_objects = st.sampled_from(
    [
        np.array([1.0, 2.0]),
        np.array(1.0 + 1j),
        np.array(True),
        np.array("x"),
        np.bool_(True),
        np.float32(-1.0),
        np.int64(2**40),
        jnp.array([0.5]),
        jnp.array(jnp.nan),
        jnp.array(jnp.inf),
        jnp.array(1 + 2j),
        O.adam,
        optax.adam,
        optax.adam(1e-3),
        O.sgd(0.1),
        object(),
        type,
        b"bytes",
        (),
        (1.0,),
        {"type": "adam"},
        {"*": {"lr": -1.0}},
        {"*": None},
        {1: {}},
        {"": {}},
        {"default": {}},
        {"*": {"nope": 1.0}},
    ]
)
bad_values = st.one_of(
    st.none(),
    st.booleans(),
    st.complex_numbers(max_magnitude=1e3),
    st.text(max_size=4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.lists(st.floats(allow_nan=False), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    odd_objects,
)


def _examples():
    """One instance of every registered type: the shared examples, else a default build."""
    by_type = {}
    for name in sorted(EVERYTHING):
        by_type.setdefault(type(EVERYTHING[name]).__name__, EVERYTHING[name])
    for type_name, cls in B.REGISTRY.items():
        for args in ((), (0.1,), (O.sgd(0.1),), ({"a": O.sgd(0.1)}, O.rules(("a",)))):
            if type_name in by_type:
                break
            try:
                by_type[type_name] = cls(*args)
            except (TypeError, ValueError):
                pass
    assert set(by_type) == set(B.REGISTRY), set(B.REGISTRY) - set(by_type)
    return by_type


EXAMPLES = _examples()


def _build(example, name, value):
    if isinstance(example, O.chain):
        return O.chain(*example.txs, value)
    if isinstance(example, O.partition):
        args = {"transforms": example.transforms, "label_fn": example.label_fn}
        return O.partition(**(args | {name: value}))
    fields = {f.name: getattr(example, f.name) for f in dataclasses.fields(example)}
    return type(example)(**(fields | {name: value}))


@FUZZ
@given(data=st.data())
def test_constructors_refuse_bad_values_naming_the_argument(data):
    example = EXAMPLES[data.draw(st.sampled_from(sorted(EXAMPLES)), label="type")]
    names = [f.name for f in dataclasses.fields(example)]
    name = data.draw(st.sampled_from(names), label="argument")
    value = data.draw(bad_values, label="value")
    try:
        built = _build(example, name, value)
    except (TypeError, ValueError) as e:
        assert name in str(e), (name, value, str(e))
    else:
        _check_stored(built)


def _check_stored(tx):
    """What a constructor accepted is stored as a usable value."""
    if isinstance(tx, (O.chain, O.partition)):
        for t in tx.txs if isinstance(tx, O.chain) else tx.transforms.values():
            _check_stored(t)
        return
    for f in dataclasses.fields(tx):
        value, kind = getattr(tx, f.name), f.metadata["kind"]
        if kind in (B.HYPER, B.FLOAT):
            ok = type(value) is float or (kind == B.HYPER and isinstance(value, S.Schedule))
            assert ok, (f.name, value)
        elif kind == B.CHILD:
            assert isinstance(value, O.Transformation), (f.name, value)
        elif kind == B.GROUPS:
            assert value is None or isinstance(value, Groups), (f.name, value)
            for _, group in () if value is None else value.items():
                for v in group.values():
                    assert type(v) is float or isinstance(v, S.Schedule), (f.name, v)


def _mutate(config, draw, path=()):
    """A copy of `config` with one field (maybe nested) replaced, removed or added."""
    config = copy.deepcopy(config)
    node = config
    keys = [k for k in node if k != "type"] if isinstance(node, dict) else []
    while keys and draw(st.booleans(), label="descend"):
        key = draw(st.sampled_from(keys), label="key")
        child = node[key]
        if isinstance(child, dict) and any(k != "type" for k in child):
            node, path = child, (*path, key)
            keys = [k for k in node if k != "type"]
        elif isinstance(child, list) and child and isinstance(child[0], dict):
            i = draw(st.integers(0, len(child) - 1), label="index")
            node, path = child[i], (*path, key, i)
            keys = [k for k in node if k != "type"]
        else:
            break
    action = draw(st.sampled_from(["replace", "remove", "add", "type"]), label="action")
    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(-(2**70), 2**70)
        | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=6,
    )
    if action == "replace" and keys:
        key = draw(st.sampled_from(keys), label="replaced")
        node[key] = draw(json_values, label="new value")
        return config, key
    if action == "remove" and keys:
        key = draw(st.sampled_from(keys), label="removed")
        del node[key]
        return config, None
    if action == "type":
        node["type"] = draw(st.sampled_from(["adam", "chain", "cosine", "nope", 3, None]))
        return config, None
    node[draw(st.text(min_size=1, max_size=5), label="added")] = 1.0
    return config, None


@FUZZ
@given(data=st.data())
def test_from_config_refuses_mutated_configs_with_value_or_type_errors(data):
    example = EXAMPLES[data.draw(st.sampled_from(sorted(EXAMPLES)), label="type")]
    config, key = _mutate(example.to_config(), data.draw)
    try:
        O.from_config(config)
    except (TypeError, ValueError) as e:
        if key is not None:
            assert str(key) in str(e), (key, str(e))


# Cases the fuzz found, kept as plain tests.
@pytest.mark.parametrize(
    "config, name",
    [
        ({"type": "adam", "groups": {"": {}}}, "groups"),
        ({"type": "adam", "groups": {"default": {"lr": 0.1}}}, "groups"),
        ({"type": "adam", "state_dtype": "01"}, "state_dtype"),
        ({"type": "adam", "state_dtype": "0{"}, "state_dtype"),
        ({"type": "adam", "state_dtype": "float8_e5m2"}, "state_dtype"),
        ({"type": "accumulate", "tx": {"type": "sgd", "lr": 0.1}, "every": 2**31}, "every"),
    ],
)
def test_from_config_cases_found_by_the_fuzz(config, name):
    with pytest.raises(ValueError, match=name):
        O.from_config(config)


def test_constructor_cases_found_by_the_fuzz():
    with pytest.raises(TypeError, match="groups"):
        O.adagrad(groups=np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="state_dtype"):
        O.adagrad(state_dtype=jnp.array([0.5]))
    with pytest.raises(TypeError, match="lr"):
        O.adam(lr=O.sgd)
