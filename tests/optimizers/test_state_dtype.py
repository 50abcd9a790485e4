"""``state_dtype`` by buffer name: validation, config, the stored dtypes and their numbers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence.optimizers._quantize import Quantized

from .examples import OPTIMIZERS, grads, params


def _by_buffer(opt: O.Transformation, dtype: str) -> dict[str, str]:
    """Every buffer `opt`'s rule can keep, in `dtype`."""
    return dict.fromkeys(opt._buffer_names(), dtype)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_rule_takes_a_dict_equal_to_one_dtype(name):
    # A dict naming every buffer (also those this configuration does not
    # keep) stores and computes exactly as the same single dtype.
    base = OPTIMIZERS[name]
    one = dataclasses.replace(base, state_dtype=jnp.bfloat16)
    by_buffer = dataclasses.replace(base, state_dtype=_by_buffer(base, "bfloat16"))
    assert O.from_config(by_buffer.to_config()) == by_buffer
    p, g = params(), grads(0)
    u1, s1 = jax.jit(one.update)(g, one.init(p), p)
    u2, s2 = jax.jit(by_buffer.update)(g, by_buffer.init(p), p)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2)), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_each_buffer_is_stored_in_its_dtype():
    opt = O.adam(0.1, amsgrad=True, state_dtype={"mu": jnp.bfloat16, "nu": "float32"})
    p = {"w": jnp.ones(3, jnp.float16)}
    state = opt.init(p)
    assert state.mu["w"].dtype == jnp.bfloat16
    assert state.nu["w"].dtype == jnp.float32
    assert state.nu_max["w"].dtype == jnp.float16  # unnamed: the parameter's
    _, state = jax.jit(opt.update)({"w": jnp.full(3, 0.5, jnp.float16)}, state, p)
    assert (state.mu["w"].dtype, state.nu["w"].dtype) == (jnp.bfloat16, jnp.float32)


def test_dict_mixes_dtypes_and_8bit():
    opt = O.adamw(1e-2, state_dtype={"mu": "8bit", "nu": jnp.bfloat16})
    state = opt.init({"w": jnp.ones((16, 256))})
    assert isinstance(state.mu["w"], Quantized)
    assert state.nu["w"].dtype == jnp.bfloat16
    assert opt.to_config()["state_dtype"] == {"mu": "8bit", "nu": "bfloat16"}


def test_numbers_match_the_stored_dtypes():
    # mu in bfloat16 and nu in float32 gives the float32 run's nu and a
    # bfloat16-rounded mu, as torch with those buffer dtypes.
    p = {"w": jnp.asarray(np.linspace(-1, 1, 7), jnp.float32)}
    g = {"w": jnp.asarray(np.linspace(0.3, -2, 7), jnp.float32)}
    mixed = O.adam(0.1, state_dtype={"mu": jnp.bfloat16, "nu": jnp.float32})
    plain = O.adam(0.1)
    _, sm = mixed.update(g, mixed.init(p), p)
    _, sp = plain.update(g, plain.init(p), p)
    np.testing.assert_array_equal(np.asarray(sm.nu["w"]), np.asarray(sp.nu["w"]))
    np.testing.assert_array_equal(
        np.asarray(sm.mu["w"]), np.asarray(sp.mu["w"].astype(jnp.bfloat16))
    )


def test_optimizer_with_a_dict_is_static_and_hashable():
    opt = O.adamw(1e-2, state_dtype={"mu": jnp.bfloat16})
    assert hash(opt) == hash(O.adamw(1e-2, state_dtype={"mu": "bfloat16"}))
    p = {"w": jnp.ones(3)}
    step = jax.jit(lambda o, g, s, p: o.step(g, s, p))
    new, _ = step(opt, p, opt.init(p), p)
    ups, _ = opt.update(p, opt.init(p), p)
    np.testing.assert_array_equal(
        np.asarray(new["w"]), np.asarray(optax.apply_updates(p, ups)["w"])
    )
    with pytest.raises(TypeError, match="read-only"):
        opt.state_dtype["nu"] = "float32"


def test_empty_dict_is_none():
    assert O.adam(state_dtype={}).state_dtype is None


@pytest.mark.parametrize(
    "state_dtype, match",
    [
        ({"m": jnp.float32}, r"unknown buffer 'm'; adam's buffers are \['mu', 'nu', 'nu_max'\]"),
        ({"mu": jnp.int8}, r"state_dtype\['mu'\].*floating.*\['mu', 'nu', 'nu_max'\]"),
        ({"mu": "no such dtype"}, r"state_dtype\['mu'\].*\['mu', 'nu', 'nu_max'\]"),
        ({"mu": jnp.zeros(2)}, r"state_dtype\['mu'\]"),
        ({1: jnp.float32}, "unknown buffer 1"),
        ({"mu": "float8_e4m3fn"}, "too narrow"),
    ],
)
def test_bad_dict_is_refused_at_construction(state_dtype, match):
    with pytest.raises(ValueError, match=match):
        O.adam(state_dtype=state_dtype)


def test_flatten_refuses_a_dict():
    with pytest.raises(TypeError, match="state_dtype by buffer"):
        O.flatten(O.adam(state_dtype={"mu": jnp.bfloat16}))


def test_from_config_refuses_a_malformed_state_dtype():
    config = O.adam().to_config() | {"state_dtype": [1, 2]}
    with pytest.raises(ValueError, match="state_dtype"):
        O.from_config(config)
