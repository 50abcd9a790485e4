"""Schedule-free AdamW and SGD: parity with schedulefree, the eval parameters, validation.

Every case of `tests.reference.schedule_free_cases` runs 150 updates on
random gradients and on a closed-loop least-squares fit, in float64 (to
1e-10 of the largest parameter) and float32 (to 1e-5), for the train
parameters y and the eval parameters x, against the golden file and live
schedulefree. ``PYTHONPATH=. python tests/optimizers/test_schedule_free.py``
prints the worst errors, and optax.contrib's gaps.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence import schedules as S
from tests.optimizers.harness import TOLERANCE, nest, relative_error, trajectory, unnest
from tests.optimizers.more_harness import loss
from tests.reference import schedule_free_cases as C
from tests.reference.more_optimizer_cases import problem

GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())
RUNS = [(case, dtype) for case in sorted(C.CASES) for dtype in C.DTYPES]


# --------------------------------------------------------------------------- cadence's runs


def _trajectory(opt, init, grads, data, closed_loop, method):
    """y and x after every update; the gradient is ``closed_loop * grad(loss) + grads[k]``."""
    eval_params = O.schedule_free_eval_params
    return trajectory(opt, init, grads, loss, data, closed_loop, method, read=eval_params)


@functools.partial(jax.jit, static_argnames="method")
def _simulate_all(opts, init, grads, data, closed_loop, method):
    # One program for every case (the optimizers are arguments): few compilations.
    return {n: _trajectory(o, init, grads, data, closed_loop, method) for n, o in opts.items()}


def _snapshots(traj) -> np.ndarray:
    values = unnest(jax.tree.map(np.asarray, traj))
    return np.stack(
        [C.flat({n: v[k - 1] for n, v in values.items()}, C.MODEL) for k in C.SNAPSHOTS]
    )


@functools.cache
def _all(dtype: str, method: str) -> dict[tuple[str, str, str], np.ndarray]:
    data = problem(C.MODEL)

    def cast(tree):
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)

    opts = {name: case.build() for name, case in C.CASES.items()}
    out = {}
    for name in C.PROBLEMS:
        closed = name == "lsq"
        grads = {n: np.zeros_like(g) if closed else g for n, g in data.grads.items()}
        runs = _simulate_all(
            opts,
            cast(nest(data.init)),
            cast(nest(grads)),
            cast((data.xa, data.xb, data.z, data.y)),
            jnp.asarray(1.0 if closed else 0.0, dtype),
            method,
        )
        for case, (train, evaluated) in runs.items():
            assert jax.tree.leaves(train)[0].dtype == np.dtype(dtype)
            out[case, "train", name] = _snapshots(train)
            out[case, "eval", name] = _snapshots(evaluated)
    return out


def run_cadence(case: str, kind: str, problem_name: str, dtype: str, method="update"):
    """cadence's y ("train") or x ("eval") after each update in `C.SNAPSHOTS`."""
    return _all(dtype, method)[case, kind, problem_name]


@functools.cache
def _reference(case: str, problem_name: str, dtype: str) -> dict[str, np.ndarray]:
    return C.run_reference(C.CASES[case], problem_name, dtype)


def _check(ours, ref, dtype, what):
    error = relative_error(ours, ref)
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"


def _golden(case, kind, problem_name, dtype):
    return np.asarray(GOLDEN["cases"][case][kind][problem_name][dtype], dtype)


# --------------------------------------------------------------------------- parity


def test_golden_table_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    assert GOLDEN["meta"]["snapshots"] == list(C.SNAPSHOTS)
    assert GOLDEN["meta"]["leaves"] == list(C.MODELS[C.MODEL])
    for case in C.CASES:
        for kind in C.KINDS:
            assert sorted(GOLDEN["cases"][case][kind]) == sorted(C.PROBLEMS)


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_golden(case, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    for kind in C.KINDS:
        for name in C.PROBLEMS:
            ours = run_cadence(case, kind, name, dtype)
            _check(ours, _golden(case, kind, name, dtype), dtype, f"{case}/{kind}/{name}")


def test_golden_step(x64):
    # `step` (one native pass per leaf on CPU) gives the same trajectories.
    for case in sorted(C.CASES):
        for name in C.PROBLEMS:
            for kind in C.KINDS:
                ours = run_cadence(case, kind, name, "float64", method="step")
                ref = _golden(case, kind, name, "float64")
                _check(ours, ref, "float64", f"{case}/{kind}/{name} (step)")


def test_eval_parameters_are_not_the_train_parameters():
    # x and y part after the first update (which sets both to z): the eval
    # comparison checks something of its own.
    for case in C.CASES:
        train = _golden(case, "train", "lsq", "float64")
        evaluated = _golden(case, "eval", "lsq", "float64")
        np.testing.assert_array_equal(train[0], evaluated[0])
        assert relative_error(train[1:], evaluated[1:]) > 1e-4


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_live_reference(case, dtype, request):
    pytest.importorskip("schedulefree")
    if dtype == "float64":
        request.getfixturevalue("x64")
    for name in C.PROBLEMS:
        ref = _reference(case, name, dtype)
        for kind in C.KINDS:
            what = f"{case}/{kind}/{name}"
            _check(run_cadence(case, kind, name, dtype), ref[kind], dtype, f"{what} vs live")
            # The golden file is current: it agrees with the live reference.
            _check(_golden(case, kind, name, dtype), ref[kind], dtype, f"{what} golden vs live")


# --------------------------------------------------------------------------- optax.contrib

# optax.contrib's schedule-free AdamW and SGD configured as cases (they have no `r`).
OPTAX = {
    "adamw_lr0.02": lambda: optax.contrib.schedule_free_adamw(0.02),
    "adamw_warmup_wd": lambda: optax.contrib.schedule_free_adamw(
        0.02, warmup_steps=10, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05
    ),
    "sgd_lr0.05": lambda: optax.contrib.schedule_free_sgd(0.05),
    "sgd_warmup_wd": lambda: optax.contrib.schedule_free_sgd(
        0.05, warmup_steps=8, b1=0.8, weight_decay=0.01
    ),
}


@functools.cache
def _optax_run(case: str) -> np.ndarray:
    """optax's y after each update in `C.SNAPSHOTS` on the closed-loop problem, in float64."""
    data = problem(C.MODEL)
    tx = OPTAX[case]()
    args = tuple(jnp.asarray(a) for a in (data.xa, data.xb, data.z, data.y))

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params, *args), state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    init = jax.tree.map(jnp.asarray, nest(data.init))
    traj = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), length=C.STEPS)[1])(init)
    return _snapshots(traj)


def optax_gaps(case: str) -> tuple[np.ndarray, np.ndarray]:
    """optax's distance from schedulefree at each snapshot: relative to the largest
    parameter, and to the distance schedulefree's parameters have travelled."""
    ours = _optax_run(case)
    ref = _golden(case, "train", "lsq", "float64")
    start = C.flat(problem(C.MODEL).init, C.MODEL)
    gap = np.max(np.abs(ours - ref), axis=1)
    return gap / np.max(np.abs(ref), axis=1), gap / np.max(np.abs(ref - start), axis=1)


def test_optax_contrib_differs_as_documented(x64):
    # The figures in schedule_free_adamw's docstring: without warmup optax's
    # is the same algorithm; with it, its first update is zero (its schedule
    # counts from 0 inside the base optimizer, the averaging weights from 1).
    start = C.flat(problem(C.MODEL).init, C.MODEL)
    step12 = C.SNAPSHOTS.index(12)
    for plain, warm, (low, high) in [
        ("adamw_lr0.02", "adamw_warmup_wd", (0.15, 0.2)),
        ("sgd_lr0.05", "sgd_warmup_wd", (0.1, 0.15)),
    ]:
        assert optax_gaps(plain)[0].max() < 1e-13
        np.testing.assert_array_equal(_optax_run(warm)[0], start)
        assert low < optax_gaps(warm)[1][step12] < high


# --------------------------------------------------------------------------- eval parameters

P0 = {"encoder": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "head": {"w": -jnp.ones((2, 1))}}


def _grads(k):
    rng = np.random.default_rng(k)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), P0)


def _train(opt, steps=4):
    params, state = P0, opt.init(P0)
    for k in range(steps):
        updates, state = opt.update(_grads(k), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _expected(y, z, beta):
    """schedulefree's x, written as the paper does: (y - (1 - beta) z) / beta."""
    return (np.asarray(y, np.float64) - (1 - beta) * np.asarray(z, np.float64)) / beta


def test_eval_params_before_any_update_are_the_params():
    opt = O.schedule_free_adamw(0.1)
    out = O.schedule_free_eval_params(opt.init(P0), P0)
    jax.tree.map(np.testing.assert_array_equal, out, P0)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sf: sf,
        lambda sf: O.chain(O.clip_by_global_norm(1.0), sf),
        lambda sf: O.accumulate(sf, 2),
        lambda sf: O.skip_nonfinite(sf),
        lambda sf: optax.chain(optax.clip(1.0), sf),
        lambda sf: optax.MultiSteps(sf, 2),
    ],
    ids=["bare", "chain", "accumulate", "skip_nonfinite", "optax", "multi"],
)
def test_eval_params_through_wrappers(wrap):
    sf = O.schedule_free_sgd(0.1, momentum=0.7)
    params, state = _train(wrap(sf))
    out = O.schedule_free_eval_params(state, params)
    found = [s for s in _states(state) if hasattr(s, "z")]
    assert len(found) == 1
    expected = jax.tree.map(lambda y, z: _expected(y, z, 0.7), params, found[0].z)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), out, expected)
    assert not np.allclose(out["encoder"]["w"], params["encoder"]["w"])


def _states(state):
    """Every NamedTuple in a state, depth first."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        yield state
    if isinstance(state, (tuple, list)):
        for x in state:
            yield from _states(x)
    elif isinstance(state, dict):
        for x in state.values():
            yield from _states(x)


def test_eval_params_with_partition_leave_other_leaves_alone():
    opt = O.partition(
        {"sf": O.schedule_free_adamw(0.1, b1=0.8), "adam": O.adam(0.01)},
        O.rules(("adam", "head/**"), ("sf",)),
    )
    params, state = _train(opt)
    out = O.schedule_free_eval_params(state, params)
    np.testing.assert_array_equal(out["head"]["w"], params["head"]["w"])
    z = state.inner["sf"].z
    for name in ("encoder/w", "encoder/b"):
        outer, inner = name.split("/")
        np.testing.assert_allclose(
            out[outer][inner], _expected(params[outer][inner], z[name], 0.8), rtol=1e-6
        )


def test_eval_params_use_each_groups_value():
    opt = O.schedule_free_adamw(0.1, groups={"*/b": {"b1": 0.5}, "head/**": {"b1": 0.95}})
    params, state = _train(opt)
    out = O.schedule_free_eval_params(state, params)
    for (outer, inner), beta in {("encoder", "w"): 0.9, ("encoder", "b"): 0.5}.items():
        z = state.z[outer][inner]
        np.testing.assert_allclose(
            out[outer][inner], _expected(params[outer][inner], z, beta), rtol=1e-6
        )
    np.testing.assert_allclose(
        out["head"]["w"], _expected(params["head"]["w"], state.z["head"]["w"], 0.95), rtol=1e-5
    )


def test_eval_params_use_the_last_updates_scheduled_value():
    b1 = S.linear(0.9, 0.5, 4)
    params, state = _train(O.schedule_free_sgd(0.1, momentum=b1), steps=3)
    # The last update was the third (count 2): momentum 0.9 - 0.4 * 2 / 4.
    out = O.schedule_free_eval_params(state, params)
    np.testing.assert_allclose(
        out["encoder"]["w"],
        _expected(params["encoder"]["w"], state.z["encoder"]["w"], 0.7),
        rtol=1e-5,
    )


def test_eval_params_under_master_weights_start_from_the_wide_copy():
    # bfloat16 parameters are the rounding of the float32 y the optimizer
    # steps on: x comes from that y, then rounds once.
    opt = O.master_weights(O.schedule_free_adamw(0.1, b1=0.8))
    p16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), P0)
    params, state = p16, opt.init(p16)
    for k in range(4):
        g = jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grads(k))
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    out = O.schedule_free_eval_params(state, params)
    z, wide = state.inner.z, state.master
    for outer, inner in (("encoder", "w"), ("encoder", "b"), ("head", "w")):
        name = f"{outer}/{inner}"
        expected = _expected(wide[name], z[outer][inner], 0.8).astype(np.float32)
        assert out[outer][inner].dtype == jnp.bfloat16
        np.testing.assert_array_equal(out[outer][inner], jnp.asarray(expected, jnp.bfloat16))


def test_eval_params_of_a_flax_nnx_optimizer_use_each_groups_value():
    # nnx.Optimizer keeps z in Variables, whose own key is not part of the
    # path the groups match ("hidden/bias", not "hidden/bias/value").
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = O.schedule_free_adamw(0.1, groups={"bias": {"b1": 0.5}})
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.ones((4, 3))

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    for _ in range(3):
        train_step(model, optimizer)
    params = nnx.state(model, nnx.Param)
    out = O.schedule_free_eval_params(optimizer.opt_state, params)
    z = optimizer.opt_state.z
    for name, beta in (("bias", 0.5), ("kernel", 0.9)):
        y, zv = params[name].get_value(), z[name].get_value()
        np.testing.assert_allclose(out[name].get_value(), _expected(y, zv, beta), rtol=1e-5)


def test_eval_params_under_jit_and_in_float64(x64):
    opt = O.schedule_free_adamw(0.1)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), P0)
    state = opt.init(params)
    updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    eager = O.schedule_free_eval_params(state, params)
    jitted = jax.jit(O.schedule_free_eval_params)(state, params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        assert a.dtype == jnp.float64
        np.testing.assert_array_equal(a, b)


def test_eval_params_refuse_a_state_without_schedule_free():
    opt = O.chain(O.clip_by_global_norm(1.0), O.adam(0.1))
    with pytest.raises(ValueError, match="holds no schedule_free_adamw or schedule_free_sgd"):
        O.schedule_free_eval_params(opt.init(P0), P0)


def test_eval_params_refuse_flattened_or_mismatched_state():
    flat = O.flatten(O.schedule_free_sgd(0.1))
    with pytest.raises(ValueError, match="outside flatten"):
        O.schedule_free_eval_params(flat.init(P0), P0)
    state = O.schedule_free_sgd(0.1).init(P0)
    with pytest.raises(ValueError, match="'head/w' has no parameter"):
        O.schedule_free_eval_params(state, {"encoder": P0["encoder"]})


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: O.schedule_free_adamw(b1=0.0), "b1 must be in \\(0, 1\\), got 0.0"),
        (lambda: O.schedule_free_adamw(b1=1.0), "b1 must be in \\[0, 1\\)"),
        (lambda: O.schedule_free_adamw(groups={"*": {"b1": 0.0}}), "b1 must be in \\(0, 1\\)"),
        (lambda: O.schedule_free_sgd(momentum=0.0), "momentum must be in \\(0, 1\\)"),
        (lambda: O.schedule_free_sgd(momentum=1.0), "momentum must be in \\[0, 1\\)"),
        (lambda: O.schedule_free_adamw(b2=1.0), "b2 must be in"),
        (lambda: O.schedule_free_adamw(lr=-1.0), "lr must be >= 0"),
        (lambda: O.schedule_free_sgd(weight_decay=-0.1), "weight_decay must be >= 0"),
        (lambda: O.schedule_free_adamw(r=-1.0), "r must be >= 0"),
        (lambda: O.schedule_free_sgd(weight_lr_power=-2.0), "weight_lr_power must be >= 0"),
        (lambda: O.schedule_free_adamw(warmup_steps=-1), "warmup_steps"),
    ],
)
def test_bad_arguments_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("bad", [2.5, True, "10", None])
def test_warmup_steps_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="warmup_steps"):
        O.schedule_free_sgd(warmup_steps=bad)


def test_params_are_required_unless_lr_is_zero():
    g = jax.tree.map(jnp.ones_like, P0)
    opt = O.schedule_free_adamw(0.1)
    with pytest.raises(ValueError, match="params are required when lr is not 0"):
        opt.update(g, opt.init(P0))
    # With lr 0 nothing moves: y stays at z, and no parameter is needed.
    still = O.schedule_free_sgd(0.0)
    updates, state = still.update(g, still.init(P0))
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    jax.tree.map(np.testing.assert_array_equal, state.z, P0)


def test_z_starts_as_a_copy_of_the_params():
    # A copy: donating params and state together must not hand one buffer twice.
    state = O.schedule_free_adamw(0.1, state_dtype=jnp.bfloat16).init(P0)
    assert state.z["encoder"]["w"].dtype == jnp.bfloat16
    plain = O.schedule_free_sgd(0.1).init(P0)
    jax.tree.map(np.testing.assert_array_equal, plain.z, P0)
    assert plain.z["encoder"]["w"] is not P0["encoder"]["w"]
    assert (plain.lr_max, plain.weight_sum) == ((-1.0,), (0.0,))


if __name__ == "__main__":
    # The worst errors against live schedulefree, and optax's gaps.
    for case, dtype in RUNS:
        with jax.enable_x64(dtype == "float64"):
            errors = {kind: 0.0 for kind in C.KINDS}
            for name in C.PROBLEMS:
                ref = _reference(case, name, dtype)
                for kind in C.KINDS:
                    error = relative_error(run_cadence(case, kind, name, dtype), ref[kind])
                    errors[kind] = max(errors[kind], error)
        print(f"{case:22s} {dtype}  y {errors['train']:.2g}  x {errors['eval']:.2g}")
    with jax.enable_x64(True):
        for case in OPTAX:
            relative, travelled = optax_gaps(case)
            show = functools.partial(np.array2string, precision=3)
            print(f"optax.contrib {case}: of the largest parameter {show(relative)}")
            print(f"optax.contrib {case}: of the distance travelled {show(travelled)}")
