"""`O.add_param_group` against torch's ``optimizer.add_param_group`` continuing a run.

A two-leaf model trains for `BEFORE` updates; then a third leaf joins with
its own settings and all three train for `AFTER` more, on random gradients
whose scale varies over four orders of magnitude, in float64 (to 1e-10 of the
largest parameter at every update after the change). The old group's lr
follows a cosine schedule of the optimizer's count, the new group's is
constant; the new leaf's bias corrections (its own step) start again at 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S

BEFORE, AFTER = 30, 50
OLD = {"body": {"w": (3, 2), "b": (2,)}}
NEW = {"head": {"w": (2, 2)}}
COSINE = lambda k: 0.5 * (1 + math.cos(math.pi * min(k, 100) / 100))  # noqa: E731


def _data():
    rng = np.random.default_rng(7)
    shapes = {"body/w": (3, 2), "body/b": (2,), "head/w": (2, 2)}
    init = {n: rng.standard_normal(s) for n, s in shapes.items()}
    grads = []
    for _ in range(BEFORE + AFTER):
        scale = 10.0 ** rng.uniform(-2, 1)
        grads.append({n: scale * rng.standard_normal(s) for n, s in shapes.items()})
    return init, grads


def _nest(flat):
    out = {}
    for name, v in flat.items():
        outer, inner = name.split("/")
        out.setdefault(outer, {})[inner] = jnp.asarray(v)
    return out


# name -> (cadence before, settings of the new group, torch class, kwargs, new group options)
CASES = {
    "adam": (
        lambda: O.adam(S.cosine(0.01, 100), weight_decay=0.01),
        {"lr": 0.02, "b1": 0.8},
        "Adam",
        dict(lr=0.01, weight_decay=0.01),
        {"lr": 0.02, "betas": (0.8, 0.999)},
    ),
    "sgd_momentum": (
        # Dampening: torch starts a new buffer as the gradient, undamped.
        lambda: O.sgd(S.cosine(0.05, 100), momentum=0.9, dampening=0.2),
        {"lr": 0.01},
        "SGD",
        dict(lr=0.05, momentum=0.9, dampening=0.2),
        {"lr": 0.01},
    ),
    "nadam": (
        lambda: O.nadam(S.cosine(0.01, 100), weight_decay=0.01, decoupled_weight_decay=True),
        {"lr": 0.005, "weight_decay": 0.0},
        "NAdam",
        dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
        {"lr": 0.005, "weight_decay": 0.0},
    ),
    "asgd": (
        lambda: O.asgd(S.cosine(0.02, 100), lambd=1e-2, t0=10.0),
        {"lr": 0.01},
        "ASGD",
        dict(lr=0.02, lambd=1e-2, t0=10),
        {"lr": 0.01},
    ),
}


def _torch_run(name):
    torch = pytest.importorskip("torch")
    _, _, cls, kwargs, options = CASES[name]
    init, grads = _data()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        params = {n: torch.nn.Parameter(torch.tensor(v)) for n, v in init.items()}
        opt = getattr(torch.optim, cls)([params["body/w"], params["body/b"]], **kwargs)
        out = []
        for k in range(BEFORE + AFTER):
            if k == BEFORE:
                opt.add_param_group({"params": [params["head/w"]], **options})
            active = [n for n in params if k >= BEFORE or not n.startswith("head")]
            for n in active:
                params[n].grad = torch.tensor(grads[k][n])
            opt.step()
            # The old group's cosine, set by hand: torch's schedulers refuse an
            # optimizer that has gained a group since they were made.
            opt.param_groups[0]["lr"] = kwargs["lr"] * COSINE(k + 1)
            if k >= BEFORE:
                out.append(np.concatenate([params[n].detach().numpy().ravel() for n in params]))
        return np.stack(out)
    finally:
        torch.set_default_dtype(before)


def _cadence_run(name, resume_dir=None):
    build, settings, *_ = CASES[name]
    init, grads = _data()
    opt = build()
    params = _nest({n: v for n, v in init.items() if not n.startswith("head")})
    state = opt.init(params)

    def advance(opt, params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(advance)
    for k in range(BEFORE):
        g = _nest({n: v for n, v in grads[k].items() if not n.startswith("head")})
        params, state = step(opt, params, state, g)
    params = params | _nest({"head/w": init["head/w"]})
    opt, state = O.add_param_group(opt, state, params, settings)
    if resume_dir is not None:
        checkpoint.save(resume_dir, BEFORE, params, state, optimizer=opt)
        restored = checkpoint.restore(resume_dir, params_like=params)
        assert restored.optimizer == opt
        opt, params, state = restored.optimizer, restored.params, restored.opt_state
    out = []
    for k in range(BEFORE, BEFORE + AFTER):
        params, state = step(opt, params, state, _nest(grads[k]))
        flat = {"body/w": params["body"]["w"], "body/b": params["body"]["b"]}
        flat["head/w"] = params["head"]["w"]
        out.append(np.concatenate([np.asarray(v).ravel() for v in flat.values()]))
    return np.stack(out), opt, state


@pytest.mark.parametrize("name", sorted(CASES))
def test_continues_like_torch(name, x64):
    ref = _torch_run(name)
    ours, _, _ = _cadence_run(name)
    scale = np.max(np.abs(ref), axis=1)
    error = float(np.max(np.max(np.abs(ours - ref), axis=1) / scale))
    assert error <= 1e-10, f"{name}: relative error {error:.3g}"


def test_checkpoint_resume_after_the_change_is_bit_identical(x64, tmp_path):
    ours, opt, state = _cadence_run("adam")
    resumed, opt2, state2 = _cadence_run("adam", resume_dir=tmp_path / "ckpt")
    np.testing.assert_array_equal(ours, resumed)
    assert opt2 == opt and opt.to_config()["groups"] == {
        "head/w": {"lr": 0.02, "b1": 0.8, "own_step": True}
    }
    jax.tree.map(np.testing.assert_array_equal, state, state2)


def test_new_leaves_start_fresh_and_old_keep_their_buffers():
    opt = O.chain(O.clip_by_global_norm(1.0), O.nadam(0.1, groups={"**/b": {"lr": 0.05}}))
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update({"a": jnp.ones(2), "b": -jnp.ones(3)}, state, params)
    grown_params = params | {"c": {"b": jnp.zeros(2)}}
    grown, new = O.add_param_group(opt, state, grown_params)
    inner, old = new.inner[1], state.inner[1]
    # The new group comes first, so that "**/b" does not take c/b.
    assert list(grown.txs[1].groups.as_dict()) == ["c/b", "**/b"]
    np.testing.assert_array_equal(inner.mu["a"], old.mu["a"])
    np.testing.assert_array_equal(inner.nu["b"], old.nu["b"])
    np.testing.assert_array_equal(inner.mu["c"]["b"], jnp.zeros(2))
    assert [float(x) for x in inner.mu_product] == [
        float(old.mu_product[0]),
        1.0,
        float(old.mu_product[1]),
    ]
    assert int(inner.count) == 3 and int(inner.hyperparams["own_step"]["c/b"]) == 3
    # hyperparams hides the offsets; the new group's lr is the default's.
    hp = O.hyperparams(new)
    assert "own_step" not in hp and float(hp["lr"]["c/b"]) == pytest.approx(0.1)
    # It trains: update and step agree on the grown tree (to float32 rounding:
    # the chain's step hands the clipping coefficient to the kernel).
    g = jax.tree.map(jnp.ones_like, grown_params)
    u, _ = grown.update(g, new, grown_params)
    p, _ = grown.step(g, new, grown_params)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)  # noqa: E731
    jax.tree.map(close, optax.apply_updates(grown_params, u), p)


def test_wrappers_grow_what_they_hold():
    opt = O.skip_nonfinite(O.accumulate(O.adam(0.1), every=2))
    params = {"a": jnp.ones(2)}
    state = opt.init(params)
    _, state = opt.update({"a": jnp.ones(2)}, state, params)
    grown, new = O.add_param_group(opt, state, params | {"h": jnp.ones(1)}, {"lr": 0.5})
    assert grown.tx.tx.groups.as_dict() == {"h": {"lr": 0.5, "own_step": True}}
    np.testing.assert_array_equal(new.inner.grads["a"], state.inner.grads["a"])
    np.testing.assert_array_equal(new.inner.grads["h"], jnp.zeros(1))
    assert int(new.inner.micro_step) == 1


def test_prefix_pattern_when_it_takes_no_old_leaf():
    opt = O.adam(0.1)
    params = {"body": {"w": jnp.ones(2)}}
    state = opt.init(params)
    grown_params = params | {"head": {"w": jnp.ones(2), "b": jnp.ones(1)}}
    grown, _ = O.add_param_group(opt, state, grown_params)
    assert list(grown.groups.as_dict()) == ["head/**"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: {"x": jnp.ones(2)}, "params lack 'a'"),
        (lambda p: p, "no parameter the state does not already cover"),
        (lambda p: p | {"*": jnp.ones(1)}, "glob character"),
        (lambda p: {"a": jnp.ones(3), "n": jnp.ones(1)}, "changed shape"),
    ],
    ids=["removed", "nothing-new", "glob", "shape"],
)
def test_bad_calls_are_refused(make, match):
    opt = O.adam(0.1)
    params = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match=match):
        O.add_param_group(opt, opt.init(params), make(params), {"lr": 0.5})


def test_unsupported_transformations_and_settings_are_refused():
    params = {"a": jnp.ones(2)}
    grown = params | {"b": jnp.ones(2)}
    part = O.partition({"x": O.adam(0.1)}, O.rules(("x",)))
    with pytest.raises(ValueError, match="partition is not supported"):
        O.add_param_group(part, part.init(params), grown)
    with pytest.raises(ValueError, match="unknown hyperparameter 'momentum'"):
        O.add_param_group(O.adam(0.1), O.adam(0.1).init(params), grown, {"momentum": 0.9})
    plain = O.sgd(0.1)  # keeps nothing per parameter
    with pytest.raises(ValueError, match="does not tell the new parameters"):
        O.add_param_group(plain, plain.init(params), grown, {"lr": 0.5})
    assert O.add_param_group(plain, plain.init(params), grown)[0] == plain


@pytest.mark.parametrize("opt", [O.adam(0.1), O.asgd(0.1)], ids=["adam", "asgd"])
def test_grown_state_can_be_donated(opt):
    # No array sits twice in the grown state (the new group's step offset is
    # not the count itself, ASGD's eta not the recorded lr): a donated step runs.
    params = {"a": jnp.ones(2)}
    state = opt.init(params)
    _, state = opt.update(params, state, params)
    params = params | {"c": jnp.ones(1)}
    grown, state = O.add_param_group(opt, state, params, {"lr": 0.5})
    step = jax.jit(lambda p, s, g: grown.step(g, s, p), donate_argnums=(0, 1))
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(2):
        params, state = step(params, state, grads)
    assert int(state.count) == 3


def test_a_state_from_before_the_change_is_refused():
    opt = O.adam(0.1)
    params = {"a": jnp.ones(2)}
    state = opt.init(params)
    params = params | {"c": jnp.ones(1)}
    grown, _ = O.add_param_group(opt, state, params)
    # The grown optimizer with a state built for another configuration.
    other = O.adam(0.1, groups={"c": {"lr": 0.1}}).init(params)
    with pytest.raises(ValueError, match="adam.update: the state was made for a different"):
        grown.update(params, other, params)
