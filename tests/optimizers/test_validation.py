"""Bad hyperparameters, wrapped optimizers, counts and gradients: a clear error where they enter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence.optimizers._base import REGISTRY

from .examples import EVERYTHING


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: O.adam(b2=jnp.array(1.0)), "b2 must be in \\[0, 1\\)"),
        (lambda: O.sgd(np.array(-1.0)), "lr must be >= 0"),
        (lambda: O.adamw(weight_decay=np.float32(-0.1)), "weight_decay must be >= 0"),
        (lambda: O.adam(eps=jnp.array(jnp.nan)), "eps must not be NaN"),
        (lambda: O.rmsprop(alpha=jnp.array(jnp.inf)), "alpha must be"),
        (lambda: O.sgd(0.1, groups={"*": {"momentum": jnp.array(-1.0)}}), "momentum"),
    ],
)
def test_concrete_0d_arrays_get_the_range_checks_of_numbers(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "value", [jnp.float32(1e-3), np.float64(1e-3), np.array(1e-3), jnp.array(1e-3, jnp.float32)]
)
def test_concrete_0d_arrays_are_stored_as_python_floats(value):
    opt = O.adamw(value, b1=np.float32(0.9))
    assert type(opt.lr) is float and type(opt.b1) is float
    assert opt.lr == 1e-3 and opt.b1 == 0.9
    # Equal and hashable like the optimizer written with numbers (static data for flax).
    assert opt == O.adamw(1e-3) and hash(opt) == hash(O.adamw(1e-3))


def test_tracers_stay_leaves_for_vmap_sweeps():
    def first_update(lr):
        opt = O.adam(lr)
        p = jnp.ones(2)
        return opt.update(jnp.ones(2), opt.init(p), p)[0]

    out = jax.vmap(first_update)(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(out, [[-0.1, -0.1], [-0.2, -0.2]], rtol=1e-6)


@pytest.mark.parametrize("bad", [None, [0.1], {"lr": 0.1}, 1j, np.complex64(1), "0.1", True])
@pytest.mark.parametrize("name", ["lr", "b1", "eps"])
def test_non_numbers_are_refused_naming_the_argument(bad, name):
    with pytest.raises(TypeError, match=f"adam: {name} must be"):
        O.adam(**{name: bad})


@pytest.mark.parametrize("bad", [None, [0.5], {}, 2j])
def test_non_numbers_are_refused_for_plain_float_fields(bad):
    with pytest.raises(TypeError, match="reduce_on_plateau: factor must be"):
        O.reduce_on_plateau(O.sgd(0.1), factor=bad)


@pytest.mark.parametrize(
    "bad, hint",
    [
        (O.adam, "call it to build one"),
        (optax.adam, "call it to build one"),
        ({"type": "adam", "lr": 0.1}, "from_config"),
        (jnp.ones(2), "must be a gradient transformation"),
        (np.float32(1.0), "must be a gradient transformation"),
        (None, "must be a gradient transformation"),
    ],
)
@pytest.mark.parametrize(
    "wrap",
    [O.skip_nonfinite, lambda tx: O.accumulate(tx, 2), O.reduce_on_plateau, O.chain, O.flatten],
)
def test_a_wrapped_optimizer_must_be_a_transformation(bad, hint, wrap):
    with pytest.raises(TypeError, match=hint):
        wrap(bad)


def test_a_class_as_wrapped_optimizer_says_to_call_it():
    with pytest.raises(TypeError, match=r"skip_nonfinite: tx .*call it to build one \(e.g. adam"):
        O.skip_nonfinite(O.adam)


@pytest.mark.parametrize("bad", [True, False, np.bool_(True)])
def test_a_bool_is_not_a_step_count(bad):
    with pytest.raises(TypeError, match="accumulate: every must be an integer"):
        O.accumulate(O.sgd(0.1), bad)
    with pytest.raises(TypeError, match="reduce_on_plateau: patience must be an integer"):
        O.reduce_on_plateau(O.sgd(0.1), patience=bad)


@pytest.mark.parametrize("name", ["every", "patience", "cooldown"])
def test_counts_beyond_int32_are_refused_at_construction(name):
    build = {
        "every": lambda n: O.accumulate(O.sgd(0.1), n),
        "patience": lambda n: O.reduce_on_plateau(O.sgd(0.1), patience=n),
        "cooldown": lambda n: O.reduce_on_plateau(O.sgd(0.1), cooldown=n),
    }[name]
    build(2**31 - 1)
    with pytest.raises(ValueError, match=f"{name} must be <= 2147483647"):
        build(2**31)


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", jnp.float8_e4m3fn])
@pytest.mark.parametrize("opt", [O.adam, O.rmsprop, O.sgd])
def test_state_dtypes_too_narrow_for_a_second_moment_are_refused(dtype, opt):
    kwargs = {"lr": 0.1} if opt is O.sgd else {}
    with pytest.raises(ValueError, match="state_dtype float8_.* is too narrow for optimizer state"):
        opt(state_dtype=dtype, **kwargs)


@pytest.mark.parametrize(
    "opt", [O.adam(0.1), O.sgd(0.1), O.chain(O.clip_by_global_norm(1.0), O.lion())]
)
def test_complex_gradients_on_real_parameters_are_refused_at_update(opt):
    p = jnp.ones(3)
    g = jnp.ones(3) * (1 + 1e3j)
    with pytest.raises(ValueError, match="grads at the root are complex"):
        opt.update(g, opt.init(p), p)
    with pytest.raises(ValueError, match="grads at the root are complex"):
        opt.step(g, opt.init(p), p)


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_not_equal_is_the_negation_of_equal(name):
    opt = EVERYTHING[name]
    same = O.from_config(opt.to_config())
    assert opt == same and not (opt != same)
    other = O.sgd(0.123)
    assert opt != other and not (opt == other)
    assert O.chain() == O.chain() and not (O.chain() != O.chain())


def test_every_registered_type_negates_equality():
    # `!=` comes from the common base, not from each class.
    for cls in REGISTRY.values():
        assert "__ne__" not in cls.__dict__ or cls.__ne__ is O.Transformation.__ne__


def test_tree_utilities_rebuild_without_validation():
    # equinox and jax rebuild transformations with placeholders as leaves.
    opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(0.1, groups={"b": {"lr": 0.0}}))
    as_none = jax.tree.map(lambda _: None, opt)
    assert jax.tree.leaves(as_none) == []
    as_bool = jax.tree.map(lambda _: False, opt)
    assert set(jax.tree.leaves(as_bool)) == {False}
    arrays = jax.tree.map(jnp.asarray, opt)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(arrays))
    assert jax.tree.map(lambda x: float(str(x)), arrays) == opt
