"""Parameter groups: glob patterns on parameter paths, first match wins, defaults elsewhere.

Trajectories against torch param groups are in test_parity (adamw_groups,
sgd_groups_schedule); these tests pin the matching rules and the errors.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import optimizers as O
from cadence import schedules as S
from cadence.optimizers._groups import matches


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*/bias", "dense/bias", True),
        ("*/bias", "bias", False),
        ("*/bias", "enc/dense/bias", False),
        ("**/bias", "bias", True),
        ("**/bias", "enc/dense/bias", True),
        ("encoder/**", "encoder/layer0/w", True),
        ("encoder/**", "encoder/w", True),
        ("encoder/**", "decoder/w", False),
        ("encoder/**", "encoder", False),
        ("layers/*/w", "layers/3/w", True),
        ("layers/?/w", "layers/12/w", False),
        ("*norm*", "layernorm_scale", True),
        ("w.b", "wxb", False),
        ("a+b", "a+b", True),
        ("**", "anything/at/all", True),
    ],
)
def test_pattern_semantics(pattern, path, expected):
    assert matches(pattern, path) is expected


class Dense(NamedTuple):
    kernel: jax.Array
    bias: jax.Array


def test_paths_use_dict_keys_sequence_indices_and_field_names():
    params = {"layers": [Dense(jnp.ones(2), jnp.ones(1)), Dense(jnp.ones(2), jnp.ones(1))]}
    opt = O.sgd(1.0, groups={"layers/1/*": {"lr": 0.5}, "*/*/bias": {"lr": 0.0}})
    grads = jax.tree.map(jnp.ones_like, params)
    u, _ = opt.update(grads, opt.init(params), params)
    assert float(u["layers"][0].kernel[0]) == -1.0  # default
    assert float(u["layers"][0].bias[0]) == 0.0  # */*/bias
    assert float(u["layers"][1].kernel[0]) == -0.5  # layers/1/*
    assert float(u["layers"][1].bias[0]) == -0.5  # first match wins


def test_group_values_override_only_what_they_name():
    params = {"w": jnp.ones(1), "b": jnp.ones(1)}
    opt = O.sgd(0.1, momentum=0.9, weight_decay=0.5, groups={"b": {"weight_decay": 0.0}})
    hp = O.hyperparams(opt.init(params))
    assert set(hp["lr"]) == {"default", "b"}
    assert float(hp["weight_decay"]["b"]) == 0.0 and float(hp["weight_decay"]["default"]) == 0.5
    assert float(hp["momentum"]["b"]) == pytest.approx(0.9)
    u, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    assert float(u["b"][0]) == 0.0 and float(u["w"][0]) == pytest.approx(-0.05)


def test_group_schedules_run_on_the_shared_update_count():
    params = {"enc": jnp.zeros(1), "head": jnp.zeros(1)}
    opt = O.sgd(1.0, groups={"enc": {"lr": S.piecewise((1,), (0.1, 0.01))}})
    state = opt.init(params)
    seen = []
    for _ in range(2):
        u, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
        seen.append((float(u["enc"][0]), float(u["head"][0])))
    assert seen == [(pytest.approx(-0.1), -1.0), (pytest.approx(-0.01), -1.0)]


def test_unknown_hyperparameter_in_a_group_raises_naming_it():
    with pytest.raises(ValueError, match="'betas'"):
        O.adam(groups={"*": {"betas": (0.9, 0.99)}})
    with pytest.raises(ValueError, match="'amsgrad'"):
        O.adam(groups={"*": {"amsgrad": True}})
    with pytest.raises(ValueError, match="'default' is reserved"):
        O.sgd(0.1, groups={"default": {"lr": 0.1}})
    with pytest.raises(TypeError, match="groups"):
        O.sgd(0.1, groups=[("*", {"lr": 0.1})])


def test_a_pattern_that_matches_nothing_warns_at_init_naming_it():
    params = {"w": jnp.ones(1), "b": jnp.ones(1)}
    opt = O.adam(groups={"*/bias": {"weight_decay": 0.0}})
    with pytest.warns(UserWarning, match=r"'\*/bias' matches no parameter"):
        opt.init(params)
    shadowed = O.adam(groups={"*": {"lr": 0.1}, "b": {"lr": 0.2}})
    with pytest.warns(UserWarning, match="'b' matches only parameters an earlier pattern took"):
        shadowed.init(params)


def test_groups_print_compare_and_stay_static_where_zero():
    a = O.adamw(groups={"*/b": {"weight_decay": 0.0, "lr": S.constant(0.1)}})
    assert "groups={'*/b': {'weight_decay': 0.0, 'lr': constant(value=0.1)}}" in repr(a)
    assert a == O.adamw(groups={"*/b": {"weight_decay": 0.0, "lr": S.constant(0.1)}})
    assert hash(a) == hash(O.adamw(groups={"*/b": {"weight_decay": 0.0, "lr": S.constant(0.1)}}))
    # lr 1e-3, eps... and the group's lr schedule value are leaves; its zero weight decay is not.
    assert 0.0 not in jax.tree.leaves(a.groups)
    assert jax.tree.map(lambda x: x, a) == a


def test_groups_under_jit_with_the_optimizer_as_an_argument():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    opt = O.adamw(0.1, weight_decay=0.1, groups={"b": {"weight_decay": 0.0, "lr": 0.01}})
    step = jax.jit(lambda o, g, s, p: o.update(g, s, p))
    grads = jax.tree.map(jnp.ones_like, params)
    u_jit, _ = step(opt, grads, opt.init(params), params)
    u, _ = opt.update(grads, opt.init(params), params)
    for a, b in zip(jax.tree.leaves(u_jit), jax.tree.leaves(u), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
