"""The Transformation base: validating arguments and grads, and optax's protocol."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: O.sgd(-0.1), "lr"),
        (lambda: O.adam(lr=-1e-3), "lr"),
        (lambda: O.adam(eps=-1e-8), "eps"),
        (lambda: O.adam(b1=1.0), "b1"),
        (lambda: O.adam(b2=-0.1), "b2"),
        (lambda: O.adamw(b2=1.5), "b2"),
        (lambda: O.lion(b1=1.0), "b1"),
        (lambda: O.rmsprop(alpha=1.0), "alpha"),
        (lambda: O.rmsprop(eps=-1.0), "eps"),
        (lambda: O.adagrad(lr_decay=-1.0), "lr_decay"),
        (lambda: O.adagrad(initial_accumulator_value=-1.0), "initial_accumulator_value"),
        (lambda: O.sgd(0.1, momentum=-0.5), "momentum"),
        (lambda: O.sgd(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: O.sgd(float("nan")), "lr"),
        (lambda: O.sgd(float("inf")), "lr"),
        (lambda: O.clip_by_global_norm(-1.0), "max_norm"),
        (lambda: O.clip_by_value(-1.0), "v"),
        (lambda: O.accumulate(O.sgd(0.1), 0), "every"),
        (lambda: O.reduce_on_plateau(O.sgd(0.1), factor=1.0), "factor"),
        (lambda: O.reduce_on_plateau(O.sgd(0.1), mode="lowest"), "mode"),
        (lambda: O.reduce_on_plateau(O.sgd(0.1), threshold_mode="pct"), "threshold_mode"),
        (lambda: O.reduce_on_plateau(O.sgd(0.1), patience=-1), "patience"),
        (lambda: O.adam(state_dtype=jnp.int32), "state_dtype"),
        (lambda: O.clip_by_global_norm(1.0, norm_type=0.0), "norm_type"),
        (lambda: O.adam(groups={"*": {"b2": 1.0}}), "b2"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_wrong_types_raise_type_error():
    with pytest.raises(TypeError, match="lr"):
        O.sgd("0.1")
    with pytest.raises(TypeError, match="nesterov"):
        O.sgd(0.1, nesterov=1)
    with pytest.raises(TypeError, match="tx"):
        O.accumulate(0.1, 2)
    with pytest.raises(ValueError, match="nesterov"):
        O.sgd(0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        O.sgd(0.1, momentum=0.9, dampening=0.1, nesterov=True)


def test_schedules_and_callables_are_accepted_unchecked():
    opt = O.adam(lambda t: 1e-3 * 0.5**t, b2=S.linear(0.9, 0.999, 10))
    assert isinstance(opt.lr, S.Schedule) and type(opt.lr).__name__ == "from_fn"
    assert isinstance(opt.b2, S.Schedule)
    assert O.sgd(np.float64(0.1)).lr == 0.1 and type(O.sgd(np.float64(0.1)).lr) is float


def _tree_error(opt, grads, params, state=None):
    state = opt.init(params) if state is None else state
    with pytest.raises(ValueError) as info:
        opt.update(grads, state, params)
    return str(info.value)


def test_grads_whose_tree_differs_name_the_first_differing_path():
    p = {"encoder": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "head": jnp.ones(3)}
    opt = O.adam(0.1)
    state = opt.init(p)
    renamed = {"encoder": {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "head": jnp.ones(3)}
    message = _tree_error(opt, renamed, None, state)
    assert "'encoder/bias'" in message and "'encoder/b'" in message
    missing = {"encoder": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}}
    assert "'head'" in _tree_error(opt, missing, None, state)
    extra = p | {"tail": jnp.ones(1)}
    assert "'tail'" in _tree_error(opt, extra, None, state)
    reshaped = {"encoder": {"w": jnp.ones((2, 3)), "b": jnp.ones(2)}, "head": jnp.ones(3)}
    message = _tree_error(opt, reshaped, None, state)
    assert "'encoder/w'" in message and "(2, 3)" in message and "(2, 2)" in message


def test_tree_errors_against_params_and_for_wrappers():
    p = {"a": jnp.ones(2), "b": [jnp.ones(1), jnp.ones(1)]}
    bad = {"a": jnp.ones(2), "b": [jnp.ones(1)]}
    # sgd without momentum keeps no per-leaf state: params are the reference.
    assert "'b/1'" in _tree_error(O.sgd(0.1), bad, p)
    assert "'b/1'" in _tree_error(O.accumulate(O.sgd(0.1), 2), bad, p)
    assert "'b/1'" in _tree_error(O.chain(O.clip_by_value(1.0), O.adam()), bad, p)


def test_tree_error_inside_jit_is_the_same_value_error():
    p = {"a": jnp.ones(2), "b": jnp.ones(3)}
    opt = O.lion()
    state = opt.init(p)
    with pytest.raises(ValueError, match="'c'"):
        jax.jit(opt.update)({"a": jnp.ones(2), "c": jnp.ones(3)}, state, p)


def test_state_of_another_optimizer_or_configuration_is_rejected():
    p = jnp.ones(2)
    with pytest.raises(TypeError, match="AdamState"):
        O.adam().update(p, O.sgd(0.1).init(p), p)
    with pytest.raises(ValueError, match="nu_max"):
        O.adam(amsgrad=True).update(p, O.adam().init(p), p)
    with pytest.raises(ValueError, match="momentum_buffer"):
        O.sgd(0.1, momentum=0.9).update(p, O.sgd(0.1).init(p), p)


def test_integer_params_are_rejected_naming_the_path():
    with pytest.raises(ValueError, match="'steps'"):
        O.adam().init({"w": jnp.ones(2), "steps": jnp.zeros((), jnp.int32)})


def test_a_transformation_is_an_optax_pair_with_working_halves():
    opt = O.sgd(0.5)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    assert len(opt) == 2
    init, update = opt
    assert "init of sgd(lr=0.5" in repr(init)
    state = init(jnp.ones(2))
    u, _ = update(jnp.ones(2), state)
    np.testing.assert_array_equal(u, -0.5 * np.ones(2))


def test_equal_objects_are_one_static_jit_argument():
    step = jax.jit(lambda opt, g, s: opt.update(g, s)[0], static_argnums=0)
    g = jnp.ones(2)
    step(O.adam(1e-3, groups={"*": {"lr": 0.1}}), g, O.adam().init(g))
    step(O.adam(1e-3, groups={"*": {"lr": 0.1}}), g, O.adam().init(g))
    assert step._cache_size() == 1


def test_switching_momentum_on_changes_the_treedef_only_then():
    zero, on, other = O.sgd(0.1), O.sgd(0.1, momentum=0.9), O.sgd(0.2, momentum=0.5)
    assert jax.tree.structure(zero) != jax.tree.structure(on)
    assert jax.tree.structure(on) == jax.tree.structure(other)
    assert jax.tree.leaves(zero) == [0.1, 0.0]  # lr, dampening: momentum and wd are static
    assert jax.tree.map(lambda x: x, on) == on
