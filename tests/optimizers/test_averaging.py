"""`lookahead` and `average`: parity with timm's Lookahead and torch's AveragedModel, composition.

Every case of `tests.reference.averaging_cases` runs `STEPS` updates on
random gradients and on a closed-loop least-squares fit, in float64 (to
1e-10 of the largest value) and float32 (to 1e-5), for the parameters and
for the slow weights / averaged parameters, against the golden vectors and
the live references. The rest checks that the wrappers compose: chains,
groups, partition, accumulate, skip_nonfinite, jit, sharding, checkpoints.
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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S
from tests.optimizers.harness import TOLERANCE, lsq_loss, nest, relative_error, trajectory, unnest
from tests.reference import averaging_cases as C

GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())
RUNS = [(case, dtype) for case in sorted(C.CASES) for dtype in C.DTYPES]


# ----------------------------------------------------------------------------- harness


def _second(opt, state):
    """The copy the wrapper keeps: lookahead's slow weights or the average."""
    return state.slow if isinstance(opt, O.lookahead) else O.averaged_params(state)


def _trajectory(opt, init, grads, data, closed_loop):
    def second(state, params):
        return _second(opt, state)

    return trajectory(opt, init, grads, lsq_loss, data, closed_loop, read=second)


@jax.jit
def _simulate_all(opts, init, grads, data, closed_loop):
    # One program for every case: compilations dominate these small runs.
    return {name: _trajectory(o, init, grads, data, closed_loop) for name, o in opts.items()}


@functools.cache
def _all(dtype: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    data = C.problem()

    def cast(tree):
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)

    opts = {name: case.build() for name, case in C.CASES.items()}
    out = {}
    for problem in C.PROBLEMS:
        closed = problem == "lsq"
        grads = {n: (np.zeros_like(g) if closed else g)[: C.STEPS] for n, g in data.grads.items()}
        runs = _simulate_all(
            opts,
            cast(nest(data.init)),
            cast(nest(grads)),
            cast((data.xa, data.xb, data.y)),
            jnp.asarray(1.0 if closed else 0.0, dtype),
        )
        for name, run in runs.items():
            assert jax.tree.leaves(run)[0].dtype == np.dtype(dtype)
            params, second = (unnest(jax.tree.map(np.asarray, tree)) for tree in run)
            out[name, problem] = tuple(
                np.stack([C.flat({n: v[k - 1] for n, v in tree.items()}) for k in C.SNAPSHOTS])
                for tree in (params, second)
            )
    return out


def run_cadence(case: str, problem: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """cadence's parameters and slow/averaged copy after each update in `C.SNAPSHOTS`."""
    return _all(dtype)[case, problem]


@functools.cache
def _reference(case: str, problem: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return C.run_torch(C.CASES[case], problem, dtype)


def _errors(case: str, dtype: str, reference) -> dict[str, float]:
    out = {}
    for problem in C.PROBLEMS:
        ours = run_cadence(case, problem, dtype)
        theirs = reference(problem)
        for what, a, b in zip(("params", "second"), ours, theirs, strict=True):
            out[f"{problem}/{what}"] = relative_error(a, np.asarray(b, dtype))
    return out


def _check(errors: dict[str, float], dtype: str, what: str) -> None:
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[dtype]}
    assert not bad, f"{what}: relative errors above {TOLERANCE[dtype]}: {bad}"


# ------------------------------------------------------------------------------ parity


def test_golden_table_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    assert GOLDEN["meta"]["snapshots"] == list(C.SNAPSHOTS)
    assert GOLDEN["meta"]["steps"] == C.STEPS


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_golden(case, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    golden = GOLDEN["cases"][case]

    def reference(problem):
        return golden[problem][dtype]["params"], golden[problem][dtype]["second"]

    _check(_errors(case, dtype, reference), dtype, case)


@pytest.mark.parametrize(("case", "dtype"), RUNS)
def test_live_reference(case, dtype, request):
    pytest.importorskip("torch")
    try:
        C.load_timm("optim", "lookahead")
    except ImportError as e:
        pytest.skip(f"timm's Lookahead is not loadable: {e}")
    if dtype == "float64":
        request.getfixturevalue("x64")
    _check(_errors(case, dtype, lambda p: _reference(case, p, dtype)), dtype, f"{case} vs live")
    # The golden file is current: it agrees with the live references.
    golden = GOLDEN["cases"][case]
    for problem in C.PROBLEMS:
        for i, what in enumerate(("params", "second")):
            live = _reference(case, problem, dtype)[i]
            error = relative_error(np.asarray(golden[problem][dtype][what]), live)
            assert error <= TOLERANCE[dtype], f"{case}/{problem}/{what}: golden vs live {error}"


def test_the_cases_exercise_the_second_copy():
    # The averages are not the parameters at the end, nor the slow weights
    # after update 61 (between syncs for every k > 1); with k = 1 every
    # update syncs.
    for name, case in C.CASES.items():
        params, second = run_cadence(name, "lsq", "float32")
        row = C.SNAPSHOTS.index(61) if case.wrapper[0] == "lookahead" else -1
        error = relative_error(second[[row]], params[[row]])
        if case.wrapper == ("lookahead", {"alpha": 0.3, "k": 1}):
            assert error < 1e-6, name
        else:
            assert error > 1e-4, name


def test_timms_first_sync_keeps_the_fast_weights():
    opt = O.lookahead(O.sgd(1.0), alpha=0.5, k=2)
    p = jnp.zeros(1)
    state = opt.init(p)
    trail = []
    for _ in range(6):
        u, state = opt.update(jnp.ones(1), state, p)
        p = optax.apply_updates(p, u)
        trail.append(float(p[0]))
    # Sync 1 (update 2) copies; syncs 2 and 3 pull halfway towards the fast weights.
    assert trail == [-1.0, -2.0, -3.0, -3.0, -4.0, -4.0]
    assert int(state.syncs) == 3 and int(state.phase) == 0


# ------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("make", "error", "name"),
    [
        (lambda: O.lookahead(O.sgd(0.1), alpha=1.5), ValueError, "alpha"),
        (lambda: O.lookahead(O.sgd(0.1), alpha=-0.1), ValueError, "alpha"),
        (lambda: O.lookahead(O.sgd(0.1), alpha="a"), TypeError, "alpha"),
        (lambda: O.lookahead(O.sgd(0.1), k=0), ValueError, "k"),
        (lambda: O.lookahead(O.sgd(0.1), k=2.5), TypeError, "k"),
        (lambda: O.lookahead(O.sgd, k=2), TypeError, "tx"),
        (lambda: O.average(O.sgd(0.1), decay=1.01), ValueError, "decay"),
        (lambda: O.average(O.sgd(0.1), decay=float("nan")), ValueError, "decay"),
        (lambda: O.average(O.sgd(0.1), every=0), ValueError, "every"),
        (lambda: O.average(O.sgd(0.1), start=-1), ValueError, "start"),
        (lambda: O.average(O.sgd(0.1), start=2**31 - 1, every=2), ValueError, "start"),
        (lambda: O.average(O.sgd(0.1), every=True), TypeError, "every"),
    ],
)
def test_bad_arguments_are_refused_by_name(make, error, name):
    with pytest.raises(error, match=name):
        make()


@pytest.mark.parametrize("opt", [O.lookahead(O.sgd(0.1)), O.average(O.sgd(0.1), decay=0.9)])
def test_update_needs_params_and_matching_grads(opt):
    p = {"w": jnp.zeros(2)}
    state = opt.init(p)
    with pytest.raises(ValueError, match="needs params"):
        opt.update({"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match="'v'"):
        opt.update({"v": jnp.ones(2)}, state, p)


def test_averaged_params_says_what_is_missing():
    with pytest.raises(ValueError, match="no transformation in this state averages"):
        O.averaged_params(O.adam(0.1).init(jnp.zeros(2)))
    both = O.chain(O.average(O.sgd(0.1)), O.average(O.sgd(0.1)))
    with pytest.raises(ValueError, match="several transformations"):
        O.averaged_params(both.init(jnp.zeros(2)))
    # Under partition: the averaged leaves by path, those of the labels that average.
    half = O.partition({"a": O.average(O.sgd(0.1)), "b": O.sgd(0.1)}, O.rules(("a", "w"), ("b",)))
    found = O.averaged_params(half.init({"w": jnp.zeros(2), "v": jnp.zeros(1)}))
    assert sorted(found) == ["w"]


# ------------------------------------------------------------------------- composition


def _params():
    return {"h0": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "out": {"w": jnp.ones((2, 1))}}


def _grads(k, p):
    return jax.tree.map(lambda x: jnp.cos(x * (k + 1)) + 0.1 * k, p)


def _run(opt, steps, p=None, jit=True):
    p = _params() if p is None else p
    update = jax.jit(opt.update) if jit else opt.update
    state = opt.init(p)
    for k in range(steps):
        u, state = update(_grads(k, p), state, p)
        p = optax.apply_updates(p, u)
    return p, state


def _mean_of(inner, steps, every=1, start=0, p=None):
    """The plain mean of the parameters after the averaged updates (SWA's definition)."""
    p = _params() if p is None else p
    state = inner.init(p)
    kept = []
    for k in range(steps):
        u, state = inner.update(_grads(k, p), state, p)
        p = optax.apply_updates(p, u)
        if k >= start and (k + 1 - start) % every == 0:
            kept.append(p)
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *kept)


def _close(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol)


def test_average_around_a_chain_is_the_mean_of_the_chains_parameters():
    inner = O.chain(O.clip_by_global_norm(1.0), O.adamw(0.05))
    p, state = _run(O.average(inner, every=2, start=3), 11)
    _close(O.averaged_params(state), _mean_of(inner, 11, every=2, start=3))
    assert int(state.n_averaged) == 4  # after updates 4, 6, 8, 10
    # The parameters are the inner transformation's, unchanged.
    _close(p, _run(inner, 11)[0], rtol=0)


def test_hyperparams_and_averaged_params_see_through_every_wrapper():
    inner = O.adamw(S.linear(0.1, 0.0, 10), groups={"*/b": {"weight_decay": 0.0}})
    opt = O.chain(
        O.clip_by_global_norm(1.0),
        O.skip_nonfinite(O.lookahead(O.average(inner, decay=0.5), k=2)),
    )
    _, state = _run(opt, 3)
    hp = O.hyperparams(state)
    assert float(hp["lr"]["default"]) == pytest.approx(0.08) and hp["max_norm"] == 1.0
    assert hp["weight_decay"]["*/b"] == 0.0
    assert jax.tree.structure(O.averaged_params(state)) == jax.tree.structure(_params())


def test_lookahead_around_a_partition_syncs_every_leaf():
    label = O.rules(("m", "**", 2), ("v",))
    inner = O.partition({"m": O.sgd(0.1, momentum=0.9), "v": O.adam(0.01)}, label)
    opt = O.lookahead(inner, alpha=0.5, k=2)
    p, state = _run(opt, 4)
    # After a sync the parameters are the slow weights (to the rounding of the sum).
    _close(p, state.slow, rtol=1e-7)
    assert sorted(state.inner.inner["m"].momentum_buffer) == ["h0/w", "out/w"]
    assert O.from_config(json.loads(json.dumps(opt.to_config()))) == opt


def test_average_inside_a_partition_by_path():
    label = O.rules(("m", "**", 2), ("v",))
    opt = O.partition({"m": O.average(O.sgd(0.1)), "v": O.average(O.adam(0.01), decay=0.9)}, label)
    _, state = _run(opt, 3)
    averaged = O.averaged_params(state)
    assert sorted(averaged) == ["h0/b", "h0/w", "out/w"]
    plain = O.partition({"m": O.sgd(0.1), "v": O.sgd(0.1)}, label)
    whole = O.averaged_params(_run(O.average(plain), 3)[1])
    _close(averaged["h0/w"], whole["h0"]["w"])


def test_accumulate_around_lookahead_counts_optimizer_updates():
    opt = O.accumulate(O.lookahead(O.sgd(0.1), alpha=0.5, k=2), 2)
    p = _params()
    state = opt.init(p)
    for k in range(8):
        u, state = opt.update(_grads(k, p), state, p)
        p = optax.apply_updates(p, u)
    # 8 micro-batches are 4 updates: two syncs.
    assert int(state.inner.syncs) == 2
    _close(p, state.inner.slow, rtol=1e-7)


def test_skip_nonfinite_leaves_the_average_untouched():
    opt = O.skip_nonfinite(O.average(O.sgd(0.1), decay=0.9))
    p = _params()
    state = opt.init(p)
    u, state = opt.update(_grads(0, p), state, p)
    before = state
    poisoned = jax.tree.map(lambda g: g * jnp.nan, _grads(1, p))
    u, state = opt.update(poisoned, state, p)
    for a, b in zip(jax.tree.leaves(state.inner), jax.tree.leaves(before.inner), strict=True):
        np.testing.assert_array_equal(a, b)


def test_groups_inside_average_match_the_bare_optimizer():
    inner = O.adam(0.01, groups={"out/**": {"lr": 0.1}})
    p, _ = _run(O.average(inner), 4)
    _close(p, _run(inner, 4)[0], rtol=0)


@pytest.mark.parametrize("jit", [False, True])
def test_eager_and_jit_agree(jit):
    opt = O.lookahead(O.average(O.adam(0.01), decay=0.8, every=2), alpha=0.4, k=3)
    p, state = _run(opt, 7, jit=jit)
    q, other = _run(opt, 7, jit=not jit)
    _close((p, state), (q, other), rtol=1e-6)


def test_bfloat16_params_keep_copies_in_their_dtype():
    p = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _params())
    for opt in (O.lookahead(O.sgd(0.1), k=1), O.average(O.sgd(0.1), decay=0.5)):
        out, state = _run(opt, 2, p=p)
        copy = state.slow if isinstance(opt, O.lookahead) else O.averaged_params(state)
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves((out, copy)))


@pytest.mark.parametrize(
    "opt",
    [
        O.lookahead(O.chain(O.clip_by_global_norm(1.0), O.adamw(S.cosine(0.01, 8))), k=3),
        O.average(O.nadam(0.01, groups={"*/b": {"b1": 0.5}}), decay=0.9, every=2, start=1),
    ],
    ids=["lookahead", "average"],
)
def test_checkpoint_resume_is_bit_identical(opt, tmp_path):
    step = jax.jit(opt.step)
    p = _params()
    state = opt.init(p)
    for k in range(4):
        p, state = step(_grads(k, p), state, p)
    checkpoint.save(tmp_path, 4, p, state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state)
    rp, rs = restored.params, restored.opt_state
    for k in range(4, 8):
        p, state = step(_grads(k, p), state, p)
        rp, rs = step(_grads(k, rp), rs, rp)
    for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves((rp, rs)), strict=True):
        assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_copies_are_sharded_like_the_parameters():
    mesh = jax.make_mesh((1,), ("model",))
    sharded = NamedSharding(mesh, P("model"))
    p = jax.tree.map(lambda x: jax.device_put(x, sharded), _params())
    opt = O.lookahead(O.average(O.adam(0.01), decay=0.9))
    shardings = O.state_shardings(opt, p)
    assert shardings.slow["h0"]["w"] == sharded
    assert shardings.inner.averaged["out"]["w"] == sharded
    assert shardings.inner.inner.mu["h0"]["b"] == sharded
    assert shardings.phase == NamedSharding(mesh, P())


# ------------------------------------------------------------------------ the figures


def _optax_gaps() -> dict[str, float]:
    """How optax's nearest counterparts differ, on the closed-loop problem (float64)."""
    data = C.problem()
    init = nest({n: jnp.asarray(v) for n, v in data.init.items()})
    args = tuple(jnp.asarray(a) for a in (data.xa, data.xb, data.y))
    grad = jax.jit(jax.grad(lsq_loss))
    flat = jax.jit(lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)]))

    def gap(a, b):
        a, b = np.asarray(flat(a)), np.asarray(flat(b))
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    out = {}
    # Lookahead around the same inner Adam: timm's convention against optax's.
    ours, theirs = O.lookahead(O.adam(0.01), 0.5, 6), optax.lookahead(O.adam(0.01), 6, 0.5)
    p, s = init, ours.init(init)
    q = optax.LookaheadParams.init_synced(init)
    t = theirs.init(q)
    for k in range(C.STEPS):
        u, s = ours.update(grad(p, *args), s, p)
        p = optax.apply_updates(p, u)
        v, t = theirs.update(grad(q.fast, *args), t, q)
        q = optax.apply_updates(q, v)
        if k + 1 in (6, C.STEPS):
            out[f"lookahead params after {k + 1}"] = gap(q.fast, p)
            out[f"lookahead slow after {k + 1}"] = gap(q.slow, s.slow)
    # A parameter EMA by hand with optax.incremental_update, from the initial
    # parameters, against AveragedModel's (which copies at the first update).
    for decay in (0.9, 0.99):
        opt = O.average(O.sgd(0.05, momentum=0.9), decay=decay)
        p, s = init, opt.init(init)
        ema = init
        for _ in range(C.STEPS):
            u, s = opt.update(grad(p, *args), s, p)
            p = optax.apply_updates(p, u)
            ema = optax.incremental_update(p, ema, 1 - decay)
        out[f"incremental_update ema {decay} after {C.STEPS}"] = gap(ema, O.averaged_params(s))
    # optax.ema averages the updates: in front of SGD it changes the trajectory.
    sgd = O.sgd(0.05)
    mixed = optax.chain(optax.ema(0.9), sgd)
    opt = O.average(sgd, decay=0.9)
    p, s, q, m = init, opt.init(init), init, mixed.init(init)
    for _ in range(C.STEPS):
        u, s = opt.update(grad(p, *args), s, p)
        p = optax.apply_updates(p, u)
        v, m = mixed.update(grad(q, *args), m, q)
        q = optax.apply_updates(q, v)
    out[f"optax.ema params vs sgd params after {C.STEPS}"] = gap(q, p)
    out[f"optax.ema params vs averaged after {C.STEPS}"] = gap(q, O.averaged_params(s))
    return out


if __name__ == "__main__":
    # The figures in the README: the worst gap per dtype against live torch
    # and timm, and optax's counterparts.
    #   PYTHONPATH=. python tests/optimizers/test_averaging.py
    worst: dict[str, float] = {}
    for case, dtype in RUNS:
        with jax.enable_x64(dtype == "float64"):
            errors = _errors(case, dtype, lambda p, c=case, d=dtype: _reference(c, p, d))
        print(f"{case:38s} {dtype}  {max(errors.values()):.2g}")
        worst[dtype] = max(worst.get(dtype, 0.0), *errors.values())
    print("worst:", {k: f"{v:.2g}" for k, v in worst.items()})
    with jax.enable_x64(True):
        for name, value in _optax_gaps().items():
            print(f"{name:48s} {value:.3g}")
