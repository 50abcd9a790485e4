"""Groups on trees whose leaves are wrapped (flax NNX's Variables): one pattern, one parameter."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cadence import optimizers as O


@jax.tree_util.register_pytree_with_keys_class
class Box:
    """A stand-in for flax's ``nnx.Variable``: the same interface and key path."""

    def __init__(self, value):
        self.value = value

    def get_value(self):
        return self.value

    def set_value(self, value):
        self.value = value

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.GetAttrKey("value"), self.value)], None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def _wrapped(params):
    return jax.tree.map(Box, params)


def test_patterns_mean_the_same_parameter_at_init_and_update():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    opt = O.adamw(0.1, weight_decay=0.5, groups={"*/bias": {"weight_decay": 0.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = opt.init(_wrapped(params))  # nnx.Optimizer's init sees Variables
    state = jax.tree.map(
        lambda b: b.get_value() if isinstance(b, Box) else b,
        state,
        is_leaf=lambda x: isinstance(x, Box),
    )
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, state, params)  # and update the plain arrays
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_array_equal(new["dense"]["bias"], 1.0)
    np.testing.assert_allclose(new["dense"]["kernel"], 0.95)


def test_init_reads_group_values_through_wrappers():
    params = {"dense": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
    opt = O.adagrad(groups={"*/bias": {"initial_accumulator_value": 5.0}})
    state = opt.init(_wrapped(params))
    np.testing.assert_array_equal(state.sum["dense"]["bias"].get_value(), 5.0)
    np.testing.assert_array_equal(state.sum["dense"]["kernel"].get_value(), 0.0)


def test_a_pattern_through_the_wrapper_warns_at_the_users_line():
    opt = O.adamw(groups={"*/bias/value": {"weight_decay": 0.0}})
    params = _wrapped({"dense": {"bias": jnp.ones(2)}})
    with pytest.warns(UserWarning, match="'\\*/bias/value' matches no parameter") as record:
        opt.init(params)
    assert record[0].filename == __file__
