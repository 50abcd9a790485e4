"""`lbfgs` against torch.optim.LBFGS (golden vectors, live torch), and what it promises.

Every case of `tests.reference.lbfgs_cases` runs several outer steps (one
``optimizer.step(closure)`` each); the parameters after each step agree to
1e-10 of the largest parameter in float64 and 1e-5 in float32, and torch's
``n_iter`` and ``func_evals`` exactly. Measured against torch 2.13 with
``PYTHONPATH=. python tests/optimizers/test_lbfgs.py``: worst 2.9e-11 in
float64 (rosenbrock_wolfe_history2), 6.8e-7 in float32 (rosenbrock_fixed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import checkpoint
from cadence import optimizers as O
from cadence import schedules as S
from cadence.optimizers._line_search import strong_wolfe
from tests.optimizers.harness import TOLERANCE, relative_error
from tests.reference import lbfgs_cases as C

GOLDEN = json.loads((Path(C.__file__).parent / C.GOLDEN).read_text())
RUNS = [(case, dtype) for case, c in sorted(C.CASES.items()) for dtype in C.DTYPES if c.runs(dtype)]


def value_fn_of(case: C.Case, dtype: str):
    d = C.data(case.problem)
    return functools.partial(
        C.loss, case.problem, x=jnp.asarray(d.x, dtype), y=jnp.asarray(d.y, dtype), xp=jnp
    )


@functools.cache
def run_cadence(name: str, dtype: str, method: str = "step") -> dict[str, list]:
    """Like `C.run_torch`: the flat parameters, n_iter and func_evals after each step."""
    case = C.CASES[name]
    params = {n: jnp.asarray(v, dtype) for n, v in C.data(case.problem).init.items()}
    value_fn = value_fn_of(case, dtype)
    opt = case.build()
    state = opt.init(params)
    out: dict[str, list] = {"params": [], "n_iter": [], "func_evals": []}
    for _ in range(case.runs(dtype)):
        value, grads = jax.value_and_grad(value_fn)(params)
        if method == "step":
            params, state = opt.step(grads, state, params, value=value, value_fn=value_fn)
        else:
            updates, state = opt.update(grads, state, params, value=value, value_fn=value_fn)
            params = optax.apply_updates(params, updates)
        assert jax.tree.leaves(params)[0].dtype == np.dtype(dtype)
        out["params"].append(C.flat(params))
        out["n_iter"].append(int(state.n_iter))
        out["func_evals"].append(int(state.func_evals))
    return out


def _check(ours: dict, ref: dict, dtype: str, what: str) -> None:
    error = relative_error(np.asarray(ours["params"]), np.asarray(ref["params"], np.float64))
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]}"
    assert ours["n_iter"] == ref["n_iter"], what
    assert ours["func_evals"] == ref["func_evals"], what


@functools.cache
def _reference(name: str, dtype: str) -> dict[str, list]:
    return C.run_torch(C.CASES[name], dtype)


def test_golden_table_covers_every_case():
    assert sorted(GOLDEN["cases"]) == sorted(C.CASES)
    for name, case in C.CASES.items():
        dtypes = [d for d in C.DTYPES if case.runs(d)]
        assert sorted(GOLDEN["cases"][name]) == sorted(dtypes)
        for dtype in dtypes:
            assert len(GOLDEN["cases"][name][dtype]["params"]) == case.runs(dtype)


def test_the_cases_reach_every_path():
    # The table is worth what it exercises: wrapped histories, early stops,
    # a step that returns at once, the line search's budget running out.
    golden = GOLDEN["cases"]
    tolerance = golden["logistic_wolfe_tolerance"]["float64"]["n_iter"]
    assert tolerance[0] < 50 and tolerance[1] == tolerance[0]  # stopped, then returned at once
    assert golden["lsq_max_eval"]["float64"]["func_evals"] == [4, 8, 12]  # max_eval, not max_iter
    history = golden["rosenbrock_wolfe_history2"]["float64"]["n_iter"]
    assert history[-1] > 2 * 2  # more iterations than the history holds


@pytest.mark.parametrize(("name", "dtype"), RUNS)
def test_golden(name, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    _check(run_cadence(name, dtype), GOLDEN["cases"][name][dtype], dtype, name)


@pytest.mark.parametrize(("name", "dtype"), RUNS)
def test_live_reference(name, dtype, request):
    pytest.importorskip("torch")
    if dtype == "float64":
        request.getfixturevalue("x64")
    ref = _reference(name, dtype)
    _check(run_cadence(name, dtype), ref, dtype, f"{name} vs live torch")
    # The golden file is current: it agrees with the live reference.
    _check(GOLDEN["cases"][name][dtype], ref, dtype, f"{name}: golden vs live torch")


def test_step_equals_update_then_apply():
    ours = run_cadence("logistic_wolfe_max_eval", "float32", "step")
    ref = run_cadence("logistic_wolfe_max_eval", "float32", "update")
    np.testing.assert_array_equal(np.asarray(ours["params"]), np.asarray(ref["params"]))
    assert ours["func_evals"] == ref["func_evals"]


@functools.cache
def _line_search_ours() -> dict[str, np.ndarray]:
    """cadence's `strong_wolfe` on every trial, in one vmapped program (float64)."""
    rows = C.trials()
    x = jnp.asarray(np.stack([r[0] for r in rows]))
    t, tolerance, max_ls = (jnp.asarray([r[i] for r in rows]) for i in (1, 2, 3))

    def one(x, t, tolerance, max_ls):
        value_and_grad = jax.value_and_grad(lambda z: C.wavy(z, jnp))
        f, g = value_and_grad(x)
        d = -g
        return strong_wolfe(
            lambda step: value_and_grad(x + step * d), t, d, f, g, g @ d, tolerance, max_ls
        )

    f, _, t, evals = jax.jit(jax.vmap(one))(x, t, tolerance, max_ls)
    return {"f": np.asarray(f), "t": np.asarray(t), "evals": np.asarray(evals)}


def _check_line_search(ours: dict, ref: dict) -> None:
    # Every trial takes torch's branches (the same evaluations); 4 of the 600
    # zoom into brackets 1e-4 wide where sin(40 z) rounds apart in the last
    # bits, and their steps differ by 1e-9 (the rest agree to 1e-10).
    np.testing.assert_array_equal(ours["evals"], ref["evals"])
    np.testing.assert_allclose(ours["t"], ref["t"], rtol=1e-7, atol=1e-14)
    np.testing.assert_allclose(ours["f"], ref["f"], rtol=1e-7, atol=1e-12)
    close = np.isclose(ours["t"], ref["t"], rtol=1e-10, atol=1e-14)
    assert np.count_nonzero(~close) <= 4


def test_line_search_golden(x64):
    _check_line_search(_line_search_ours(), GOLDEN["line_search"])


def test_line_search_live(x64):
    pytest.importorskip("torch")
    ref = C.line_search_torch()
    _check_line_search(_line_search_ours(), ref)
    _check_line_search({k: np.asarray(v) for k, v in GOLDEN["line_search"].items()}, ref)


# --------------------------------------------------------------------------- the library's promises


def rosenbrock(p):
    return (1 - p["x"]) ** 2 + 100 * (p["y"] - p["x"] ** 2) ** 2


START = {"x": jnp.array(-1.5), "y": jnp.array(2.0)}
# One configuration for the tests below, so that they share one compiled update.
OPT = O.lbfgs(
    S.exponential(1.0, 0.5),
    line_search_fn="strong_wolfe",
    history_size=2,
    max_iter=4,
    tolerance_change=1e-8,
)


def steps(opt, params, state, k):
    for _ in range(k):
        value, grads = jax.value_and_grad(rosenbrock)(params)
        params, state = opt.step(grads, state, params, value=value, value_fn=rosenbrock)
    return params, state


def test_converges_where_optax_lbfgs_needs_many_updates():
    # The docstring's figure: five updates each.
    ours = O.lbfgs(line_search_fn="strong_wolfe")
    params, _ = steps(ours, START, ours.init(START), 5)
    assert float(rosenbrock(params)) < 1e-10
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(rosenbrock)

    @jax.jit
    def update(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=rosenbrock
        )
        return optax.apply_updates(params, updates), state

    params, state = START, opt.init(START)
    for _ in range(5):
        params, state = update(params, state)
    assert float(rosenbrock(params)) > 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"max_eval": 0}, "max_eval"),
        ({"history_size": 0}, "history_size"),
        ({"tolerance_grad": -1e-3}, "tolerance_grad"),
        ({"tolerance_change": float("nan")}, "tolerance_change"),
        ({"line_search_fn": "backtracking"}, "line_search_fn"),
        ({"line_search_fn": True}, "line_search_fn"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        O.lbfgs(**kwargs)


def test_max_eval_defaults_to_torchs():
    assert O.lbfgs().max_eval == 25
    assert O.lbfgs(max_iter=7).max_eval == 8
    assert O.lbfgs(max_iter=7, max_eval=3).max_eval == 3


def test_no_parameter_groups():
    with pytest.raises(TypeError, match="groups"):
        O.lbfgs(groups={"x": {"lr": 0.1}})


def test_update_needs_the_loss_and_its_function():
    opt = O.lbfgs()
    state = opt.init(START)
    grads = jax.grad(rosenbrock)(START)
    with pytest.raises(ValueError, match="value_fn=loss_fn"):
        opt.update(grads, state, START)
    with pytest.raises(ValueError, match="value_fn=loss_fn"):
        opt.update(grads, state, START, value_fn=rosenbrock)
    with pytest.raises(ValueError, match="params are required"):
        opt.update(grads, state, value=1.0, value_fn=rosenbrock)
    with pytest.raises(ValueError, match="scalar"):
        opt.update(grads, state, START, value=jnp.ones(2), value_fn=rosenbrock)
    with pytest.raises(ValueError, match="value_fn must return a scalar"):
        opt.update(grads, state, START, value=1.0, value_fn=lambda p: jnp.stack([p["x"], p["y"]]))
    with pytest.raises(ValueError, match="state was made for 3 parameters"):
        opt.update(grads, opt.init({"x": jnp.zeros(3)}), START, value=1.0, value_fn=rosenbrock)


def test_inside_partition_it_is_refused():
    opt = O.partition({"a": O.lbfgs(), "b": O.sgd(0.1)}, O.rules(("a", "x"), ("b",)))
    grads = jax.grad(rosenbrock)(START)
    with pytest.raises(ValueError, match="cannot run inside partition"):
        opt.update(grads, opt.init(START), START, value=1.0, value_fn=rosenbrock)


def test_wrappers_pass_value_fn_on():
    # The wrappers hand value_fn to lbfgs as they hand value (none of these
    # changes the numbers here: a clip that never clips, one micro-batch, no
    # plateau yet, float32 masters of float32 parameters).
    expected, _ = steps(OPT, START, OPT.init(START), 2)
    for wrapped in (
        O.chain(O.clip_by_value(1e6), OPT),
        O.skip_nonfinite(OPT),
        O.accumulate(OPT, 1),
        O.reduce_on_plateau(OPT),
        O.average(OPT, decay=0.9),
        O.master_weights(OPT),
        optax.chain(optax.identity(), OPT),
    ):
        params, state = START, wrapped.init(START)
        for _ in range(2):
            value, grads = jax.value_and_grad(rosenbrock)(params)
            updates, state = wrapped.update(grads, state, params, value=value, value_fn=rosenbrock)
            params = optax.apply_updates(params, updates)
        for k in "xy":
            np.testing.assert_array_equal(params[k], expected[k])


def test_already_optimal_returns_at_once():
    # torch counts the evaluation and returns before its loop: nothing else changes.
    params = {"x": jnp.array(1.0), "y": jnp.array(1.0)}
    state = OPT.init(params)
    value, grads = jax.value_and_grad(rosenbrock)(params)
    updates, new = OPT.update(grads, state, params, value=value, value_fn=rosenbrock)
    assert all(float(u) == 0 for u in jax.tree.leaves(updates))
    assert (int(new.func_evals), int(new.n_iter), int(new.count)) == (1, 0, 1)
    rest = new._replace(func_evals=state.func_evals, count=state.count)
    for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_jit_equals_eager_and_state_is_stable():
    state = OPT.init(START)
    structure = jax.tree.structure(state)
    avals = [jax.typeof(x) for x in jax.tree.leaves(state)]

    @jax.jit
    def train_step(opt, params, state):
        value, grads = jax.value_and_grad(rosenbrock)(params)
        return opt.step(grads, state, params, value=value, value_fn=rosenbrock)

    params, jstate = START, state
    for _ in range(2):
        params, jstate = train_step(OPT, params, jstate)
        assert jax.tree.structure(jstate) == structure
        assert [jax.typeof(x) for x in jax.tree.leaves(jstate)] == avals
    eager, estate = steps(OPT, START, state, 2)
    for k in "xy":
        np.testing.assert_allclose(params[k], eager[k], rtol=1e-5)
    assert int(jstate.func_evals) == int(estate.func_evals)


def test_hyperparams_and_config():
    assert O.from_config(json.loads(json.dumps(OPT.to_config()))) == OPT
    namespace = {n: getattr(S, n) for n in dir(S)} | {n: getattr(O, n) for n in dir(O)}
    assert eval(repr(OPT), namespace) == OPT  # noqa: S307 (our own repr)
    _, state = steps(OPT, START, OPT.init(START), 2)
    assert float(O.hyperparams(state)["lr"]) == 0.5  # the lr of the second update
    assert float(O.hyperparams(state)["tolerance_change"]) == pytest.approx(1e-8)


def test_checkpoint_resumes_bit_identically(tmp_path):
    params, state = steps(OPT, START, OPT.init(START), 2)
    checkpoint.save(tmp_path, 2, params, state, optimizer=OPT)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == OPT
    straight = steps(OPT, params, state, 2)
    resumed = steps(restored.optimizer, restored.params, restored.opt_state, 2)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_shardings_replicate_the_flat_vectors():
    mesh = jax.make_mesh((1,), ("model",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model"))
    params = {"w": jax.device_put(jnp.arange(4.0), sharding), "b": jnp.zeros(())}
    opt = O.lbfgs(history_size=3)
    shardings = O.state_shardings(opt, params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    assert shardings.old_dirs == replicated and shardings.d == replicated
    state = jax.jit(opt.init, out_shardings=shardings)(params)
    assert state.old_dirs.shape == (3, 5)


_TWO_DEVICES = """
import json, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from cadence import optimizers as O
mesh = jax.make_mesh((2,), ("model",))
opt = O.lbfgs(line_search_fn="strong_wolfe", history_size=3, max_iter=5)
x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 6)), jnp.float32)
def loss(p):
    return jnp.sum((x @ p["w"] - 1.0) ** 2) + jnp.sum(p["w"] ** 4)
@jax.jit
def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    return opt.step(grads, state, params, value=value, value_fn=loss)
def run(params, shardings=None):
    init = jax.jit(opt.init, out_shardings=shardings) if shardings else opt.init
    state = init(params)
    for _ in range(3):
        params, state = step(params, state)
    return params, state
w = jnp.linspace(-1.0, 1.0, 6)
sharded = {"w": jax.device_put(w, NamedSharding(mesh, P("model")))}
shardings = O.state_shardings(opt, sharded)
params, state = run(sharded, shardings)
single, _ = run({"w": jax.device_put(w, jax.devices()[0])})
print(json.dumps({
    "devices": len(state.old_dirs.sharding.device_set),
    "replicated": state.old_dirs.sharding.is_fully_replicated,
    "w_sharding": str(params["w"].sharding.spec),
    "gap": float(np.max(np.abs(np.asarray(params["w"]) - np.asarray(single["w"])))),
}))
"""


def test_runs_on_parameters_sharded_over_two_devices():
    # A fresh process with two CPU devices: the parameters stay sharded, the
    # flat history is replicated on the mesh, and the numbers are one device's.
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["devices"] == 2 and out["replicated"]
    assert "model" in out["w_sharding"]
    assert out["gap"] < 1e-5


def test_mixed_dtypes_promote_and_come_back_in_their_own():
    params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(3)}

    def loss(p):
        return jnp.sum(p["a"].astype(jnp.float32) ** 2) + jnp.sum((p["b"] - 2) ** 2)

    opt = O.lbfgs()
    state = opt.init(params)
    assert state.d.dtype == jnp.float32
    value, grads = jax.value_and_grad(loss)(params)
    updates, _ = opt.update(grads, state, params, value=value, value_fn=loss)
    assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
    new = optax.apply_updates(params, updates)
    assert float(loss(new)) < 1e-6


def test_options_dataclass_replace_keeps_validation():
    with pytest.raises(ValueError, match="history_size"):
        dataclasses.replace(O.lbfgs(), history_size=0)


if __name__ == "__main__":
    # The worst gap of each run against live torch, and per dtype:
    # PYTHONPATH=. python tests/optimizers/test_lbfgs.py
    worst = dict.fromkeys(C.DTYPES, 0.0)
    for name, dtype in RUNS:
        with jax.enable_x64(dtype == "float64"):
            ours, ref = run_cadence(name, dtype), _reference(name, dtype)
        error = relative_error(np.asarray(ours["params"]), np.asarray(ref["params"]))
        counts = ours["n_iter"] == ref["n_iter"] and ours["func_evals"] == ref["func_evals"]
        worst[dtype] = max(worst[dtype], error)
        print(f"{name:28s} {dtype}  {error:.2g}  counts {'equal' if counts else 'DIFFER'}")
    print("worst:", {d: f"{e:.2g}" for d, e in worst.items()})
