"""`nadam`, `muon` and `adafactor` beyond trajectory parity: state layout, errors, config.

Muon takes 2-D leaves only, so the invariants `test_optimizers.py` checks on
`OPTIMIZERS` run here on `MATRIX_OPTIMIZERS` with `matrices()`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S

from .examples import MATRIX_OPTIMIZERS, matrices, params

MUON = sorted(MATRIX_OPTIMIZERS)


def _grads(k: int, dtype=jnp.float32):
    return jax.tree.map(lambda x: x * (k + 1.5), matrices(dtype, seed=100 + k))


def _run(opt, p, steps=3, method="update"):
    state = opt.init(p)
    for k in range(steps):
        if method == "step":
            p, state = opt.step(_grads(k, p["head"]["w"].dtype), state, p)
        else:
            u, state = opt.update(_grads(k, p["head"]["w"].dtype), state, p)
            p = optax.apply_updates(p, u)
    return p, state


def _close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, np.max(np.abs(y))))


# --------------------------------------------------------------------------- muon's invariants


@pytest.mark.parametrize("name", MUON)
def test_muon_jit_equals_eager_and_state_structure_is_stable(name):
    opt = MATRIX_OPTIMIZERS[name]
    p = matrices()
    eager = _run(opt, p)
    jitted = jax.jit(lambda o, p: _run(o, p))(opt, p)
    _close(jitted[0], eager[0], rtol=1e-5)
    init = opt.init(p)
    for state in (eager[1], jitted[1]):
        assert jax.tree.structure(state) == jax.tree.structure(init)
        assert [jax.typeof(x) for x in jax.tree.leaves(state)] == [
            jax.typeof(x) for x in jax.tree.leaves(init)
        ]


@pytest.mark.parametrize("name", MUON)
def test_muon_step_equals_update_then_apply(name):
    opt = MATRIX_OPTIMIZERS[name]
    step = jax.jit(lambda o, p: _run(o, p, method="step"))(opt, matrices())
    update = jax.jit(lambda o, p: _run(o, p))(opt, matrices())
    for a, b in zip(jax.tree.leaves(step), jax.tree.leaves(update), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", MUON)
def test_muon_config_pickle_repr_round_trips(name):
    opt = MATRIX_OPTIMIZERS[name]
    config = json.loads(json.dumps(opt.to_config()))
    assert O.from_config(config) == opt and O.from_config(config).to_config() == config
    for other in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert other == opt and hash(other) == hash(opt)
    namespace = {n: getattr(O, n) for n in dir(O)} | {n: getattr(S, n) for n in dir(S)}
    assert eval(repr(opt), namespace) == opt  # noqa: S307 (our own repr, in a test)


@pytest.mark.parametrize("name", MUON)
def test_muon_inside_chains_and_under_eval_shape(name):
    opt = MATRIX_OPTIMIZERS[name]
    p, g = matrices(), _grads(0)
    expected, _ = opt.update(g, opt.init(p), p)
    chained = optax.chain(optax.identity(), opt)
    _close(chained.update(g, chained.init(p), p)[0], expected, rtol=0)
    ours = O.chain(O.clip_by_global_norm(1e6), opt)
    _close(ours.update(g, ours.init(p), p)[0], expected, rtol=0)
    abstract = jax.eval_shape(opt.init, p)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), abstract) == jax.tree.map(
        lambda x: (x.shape, x.dtype), opt.init(p)
    )


@pytest.mark.parametrize("name", MUON)
def test_muon_state_dtype_and_bf16_params(name):
    opt = dataclasses.replace(MATRIX_OPTIMIZERS[name], state_dtype=jnp.bfloat16)
    p, state = _run(opt, matrices())
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.momentum_buffer))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    _close(p, _run(MATRIX_OPTIMIZERS[name], matrices())[0], rtol=2e-2)
    p16, state16 = _run(MATRIX_OPTIMIZERS[name], matrices(jnp.bfloat16))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((p16, state16.momentum_buffer)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state16.hyperparams))


def test_muon_refuses_a_leaf_that_is_not_2d():
    opt = O.muon()
    with pytest.raises(ValueError, match=r"muon.init: the leaf at 'encoder/b' has shape \(2,\)"):
        opt.init(params())
    p = matrices()
    bad = p | {"head": {"w": p["head"]["w"], "b": jnp.ones(3)}}
    for method in ("update", "step"):
        with pytest.raises(ValueError, match=rf"muon.{method}: the leaf at 'head/b'.*O.partition"):
            getattr(opt, method)(bad, opt.init(p), bad)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(ns_coefficients=(1.0, 2.0)), ValueError, "ns_coefficients must be 3 numbers"),
        (dict(ns_coefficients="abc"), TypeError, "ns_coefficients must be a sequence"),
        (dict(ns_coefficients=(1.0, float("nan"), 2.0)), ValueError, "must not be NaN"),
        (dict(ns_steps=100), ValueError, "ns_steps must be < 100"),
        (dict(ns_steps=-1), ValueError, "ns_steps must be >= 0"),
        (dict(adjust_lr_fn="spectral"), ValueError, "unknown adjust_lr_fn 'spectral'"),
        (dict(adjust_lr_fn=1), TypeError, "adjust_lr_fn must be a string or None"),
        (dict(ns_dtype=jnp.int8), ValueError, "ns_dtype must be a floating dtype"),
        (dict(lr=-1.0), ValueError, "lr must be >= 0"),
    ],
)
def test_muon_validates_its_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        O.muon(**kwargs)


def test_spectral_unclamped_scales_by_sqrt_rows_over_columns():
    # torch 2.14's third adjustment (2.13 has two): sqrt(A/B) where "original"
    # gives sqrt(max(1, A/B)); without decay the steps differ by that ratio.
    with jax.enable_x64(True):
        p, g = matrices(jnp.float64), _grads(0, jnp.float64)
        steps = {
            fn: O.muon(0.1, weight_decay=0.0, adjust_lr_fn=fn, ns_dtype=None).update(
                g, O.muon().init(p), p
            )[0]
            for fn in ("original", "spectral_unclamped")
        }
    for leaf in ("encoder", "head"):
        rows, cols = p[leaf]["w"].shape
        ratio = np.sqrt(rows / cols) / np.sqrt(max(1.0, rows / cols))
        np.testing.assert_allclose(
            np.asarray(steps["spectral_unclamped"][leaf]["w"]),
            np.asarray(steps["original"][leaf]["w"]) * ratio,
            rtol=1e-14,
        )


# --------------------------------------------------------------------------- nadam


def test_nadam_keeps_one_mu_product_per_group():
    opt = O.nadam(0.01, groups={"*/b": {"b1": 0.5}})
    state = opt.init(params())
    assert state.mu_product == (1.0, 1.0)
    for _ in range(3):
        _, state = opt.update(jax.tree.map(jnp.ones_like, params()), state, params())
    psi = 4e-3
    for b1, product in zip((0.9, 0.5), state.mu_product, strict=True):
        expected = np.prod([b1 * (1 - 0.5 * 0.96 ** (t * psi)) for t in (1, 2, 3)])
        np.testing.assert_allclose(product, expected, rtol=1e-6)
    assert set(O.hyperparams(state)["b1"]) == {"default", "*/b"}


# --------------------------------------------------------------------------- adafactor


def test_adafactor_factors_leaves_of_two_or_more_dims():
    p = {"m": jnp.ones((2, 3, 4)), "v": jnp.ones(5), "s": jnp.ones(())}
    state = O.adafactor().init(p)
    shapes = {
        n: jax.tree.map(jnp.shape, getattr(state, n)) for n in ("row_var", "col_var", "variance")
    }
    assert shapes == {
        "row_var": {"m": (2, 3, 1), "v": (1,), "s": ()},
        "col_var": {"m": (2, 1, 4), "v": (1,), "s": ()},
        "variance": {"m": (1, 1, 1), "v": (5,), "s": ()},
    }
    _, new = O.adafactor().update(p, state, p)
    assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, state)


def test_adafactor_eps1_none_is_the_parameter_dtypes_epsilon():
    # torch takes eps1 from the parameter's dtype: bfloat16's (2^-7) floors
    # a small gradient's moment at 2^-14 (the update shrinks 8-fold here),
    # float32's does not. Zero parameters: the step is eps2 * lr * U, which
    # bfloat16 holds without rounding it away.
    torch = pytest.importorskip("torch")
    g = np.full((4, 3), 1e-3, np.float32)
    for dtype, tdtype, expected in (
        (jnp.bfloat16, torch.bfloat16, 1e-8 / 2**-7),
        (jnp.float32, torch.float32, 1e-5),
    ):
        p = jnp.zeros((4, 3), dtype)
        u, _ = O.adafactor(0.01).update(jnp.asarray(g, dtype), O.adafactor().init(p), p)
        tp = torch.nn.Parameter(torch.zeros(4, 3, dtype=tdtype))
        tp.grad = torch.tensor(g, dtype=tdtype)
        torch.optim.Adafactor([tp], lr=0.01).step()
        theirs = tp.detach().float().numpy()
        np.testing.assert_allclose(np.asarray(u, np.float32), theirs, rtol=1e-2)
        np.testing.assert_allclose(np.asarray(u, np.float32), -expected, rtol=1e-2)


def test_adafactor_needs_params_unless_lr_is_zero():
    # The step is scaled by the parameters' RMS (and decays them by lr * wd).
    p = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match="adafactor.update: params are required when lr is not 0"):
        O.adafactor().update(p, O.adafactor().init(p))
    u, _ = O.adafactor(0.0).update(p, O.adafactor(0.0).init(p))
    assert not np.any(np.asarray(u["w"]))


def test_muon_reports_its_hyperparameters():
    opt = MATRIX_OPTIMIZERS["muon_groups"]
    state = opt.update(_grads(0), opt.init(matrices()), matrices())[1]
    hp = O.hyperparams(state)
    assert set(hp) == {"lr", "weight_decay", "momentum", "eps"}
    assert float(hp["lr"]["head/**"]) == pytest.approx(0.01)
    assert float(hp["weight_decay"]["default"]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beta2_decay=0.5), "beta2_decay must be <= 0"),
        (dict(d=0.5), "d must be >= 1"),
        (dict(eps1=-1.0), "eps1 must be >= 0"),
        (dict(eps2=-1.0), "eps2 must be >= 0"),
    ],
)
def test_adafactor_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        O.adafactor(**kwargs)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "opt",
    [
        O.adafactor(eps1=1e-6, groups={"*/b": {"lr": S.cosine(0.1, 10)}}),
        O.adafactor(),
        O.muon(adjust_lr_fn="match_rms_adamw", ns_coefficients=(3, -3.2, 1.2), ns_dtype=None),
        O.nadam(S.warmup(S.cosine(0.01, 8), 2), decoupled_weight_decay=True),
    ],
)
def test_new_field_kinds_round_trip_through_json(opt):
    config = json.loads(json.dumps(opt.to_config()))
    assert O.from_config(config) == opt
    assert repr(O.from_config(config)) == repr(opt)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "muon", "ns_coefficients": [1, "a", 2]}, "ns_coefficients must be a list"),
        ({"type": "muon", "ns_coefficients": 3}, "ns_coefficients must be a list"),
        ({"type": "muon", "adjust_lr_fn": 3}, "adjust_lr_fn must be a string or null"),
        ({"type": "adafactor", "eps1": "small"}, "eps1 must be a number or null"),
    ],
)
def test_from_config_names_a_bad_new_field(config, message):
    with pytest.raises(ValueError, match=rf"from_config: config\.{message}"):
        O.from_config(config)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("opt", "tree"),
    [
        (O.nadam(S.cosine(0.01, 8), groups={"*/b": {"b1": 0.5}}), params),
        (O.adafactor(S.cosine(0.05, 8), weight_decay=0.1), params),
        (MATRIX_OPTIMIZERS["muon_groups"], matrices),
    ],
    ids=["nadam", "adafactor", "muon"],
)
def test_checkpoint_resume_is_bit_identical(opt, tree, tmp_path):
    def grads(k, p):
        return jax.tree.map(lambda x: jnp.cos(x * (k + 1)), p)

    step = jax.jit(lambda p, s, g: opt.step(g, s, p))
    p, state = tree(), opt.init(tree())
    for k in range(2):
        p, state = step(p, state, grads(k, p))
    checkpoint.save(tmp_path, 2, p, state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state)
    resumed = (restored.params, restored.opt_state)
    for k in range(2, 4):
        p, state = step(p, state, grads(k, p))
        resumed = step(*resumed, grads(k, resumed[0]))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves((p, state)), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_muon_recipe_with_partition():
    # Muon for the 2-D hidden matrices, AdamW for the rest: the leaves Muon
    # sees are its own, and its updates are Muon's alone on them.
    muon, adamw = O.muon(0.02, ns_dtype=None), O.adamw(3e-4)
    opt = O.partition({"muon": muon, "adamw": adamw}, O.rules(("muon", "**", 2), ("adamw",)))
    p = params()
    g = jax.tree.map(jnp.cos, p)
    updates, state = opt.update(g, opt.init(p), p)
    hidden = {k: {"w": p[k]["w"]} for k in p}
    expected, _ = muon.update({k: {"w": g[k]["w"]} for k in g}, muon.init(hidden), hidden)
    for k in p:
        np.testing.assert_array_equal(updates[k]["w"], expected[k]["w"])
    assert O.from_config(json.loads(json.dumps(opt.to_config()))) == opt
    with pytest.raises(ValueError, match="O.partition"):
        muon.init(p)
