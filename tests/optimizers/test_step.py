"""`step`: the new parameters in one call, one native loop per leaf on CPU.

Wherever the native kernel runs, `step` must give bit for bit what `update`
followed by `optax.apply_updates` gives when XLA compiles it; elsewhere it is
that computation itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import optimizers as O
from cadence.optimizers import _native

from .examples import EVERYTHING, EXTRA, OPTIMIZERS

# The configurations with a native kernel (float32/float64): every optimizer
# that keeps a buffer (plain SGD's one loop over (param, grad) is a single
# pass already).
# (A whole-leaf rule, Adafactor, has no single-pass loop.)
NATIVE = {name for name, opt in OPTIMIZERS.items() if opt.elementwise} - {"sgd"}
# The clipping coefficient multiplies each gradient inside the kernel, once;
# XLA recomputes the product in each moment's loop and fuses it there into a
# multiply-add (one rounding less) where the C++ compiler cannot, since the
# product has two readers. Agreement is then to float32 rounding.
ROUNDED_DIFFERENTLY = {"chain"}

_NATIVE_CALL = re.compile(r"@cadence_kernel_[0-9a-f]+\(")
_NORM_CALL = re.compile(r"@cadence_norm_partials\(")
_ARRAY_COPY = re.compile(r"= \w+\[\d[\d,]*\]\S* copy\(")


def tree(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    # Leaf sizes that exercise the kernels' vector loops and their remainders.
    shapes = {"encoder": {"w": (33, 31), "b": (7,)}, "head": {"w": (4, 4), "b": ()}}
    return {
        k: {n: jnp.asarray(rng.standard_normal(s), dtype) for n, s in d.items()}
        for k, d in shapes.items()
    }


def gradients(k, dtype=jnp.float32):
    rng = np.random.default_rng(100 + k)
    scale = 10.0 ** rng.uniform(-3, 1)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * scale, dtype), tree())


def run(opt, dtype, *, method, jit, steps=3, extra=None):
    """Params and state after `steps` of `opt`, by "step" or by "update" + apply."""
    extra = extra or {}
    params = tree(dtype)
    state = opt.init(params)

    def by_update(g, state, params):
        updates, state = opt.update(g, state, params, **extra)
        return optax.apply_updates(params, updates), state

    def by_step(g, state, params):
        return opt.step(g, state, params, **extra)

    fn = by_step if method == "step" else by_update
    fn = jax.jit(fn) if jit else fn
    for k in range(steps):
        params, state = fn(gradients(k, dtype), state, params)
    return params, state


def assert_same(ours, ref):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def same_as_update(opt, dtype, steps=3):
    """`step` equals the jitted `update` + `apply_updates`, bit for bit."""
    ours = run(opt, dtype, method="step", jit=True, steps=steps)
    assert_same(ours, run(opt, dtype, method="update", jit=True, steps=steps))


def native_calls(opt, params, *, pattern=_NATIVE_CALL, **extra):
    """How many optimizer kernels (or, with `pattern`, other native calls) a jitted step makes."""
    text = jax.jit(lambda g, s, p: opt.step(g, s, p, **extra)).lower(
        params, opt.init(params), params
    )
    return len(pattern.findall(text.as_text()))


def _have_compiler() -> bool:
    return shutil.which((os.environ.get("CXX") or "c++").split()[0]) is not None


def test_kernels_build_where_there_is_a_compiler():
    if not _have_compiler():
        pytest.skip("no C++ compiler; step uses XLA's loops")
    assert _native.available()


_PROBE = """
import json, jax, jax.numpy as jnp
from cadence import optimizers as O
from cadence.optimizers import _native
opt = O.adamw(1e-2)
p = {"w": jnp.ones(5)}
text = jax.jit(opt.step).lower(p, opt.init(p), p).as_text()
new, _ = jax.jit(opt.step)(p, opt.init(p), p)
print(json.dumps({"available": _native.available(), "native": "@cadence_" in text,
                  "w": [float(x) for x in new["w"]]}))
"""


def probe(tmp_path, **env):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=os.environ | {"CADENCE_CACHE_DIR": str(tmp_path)} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_build_into_a_fresh_cache(tmp_path):
    if not _have_compiler():
        pytest.skip("no C++ compiler")
    built, _ = probe(tmp_path)
    assert built["available"] and built["native"]
    # One library, renamed into place: no temporary left behind.
    assert [f.suffix for f in tmp_path.iterdir()] == [".so"]
    fallback, _ = probe(tmp_path, CADENCE_NATIVE="0")
    assert not fallback["available"] and not fallback["native"]
    assert fallback["w"] == built["w"]


def test_a_failing_compiler_falls_back_to_xla(tmp_path):
    # The build fails (here: `false --version`); step still runs, on XLA's loops.
    result, stderr = probe(tmp_path, CXX=shutil.which("false") or "false")
    assert not result["native"]
    assert "building a CPU kernel failed" in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_step_equals_update_then_apply(name, jit):
    # An optimizer's eager `step` is compiled (and the native kernel rounds as
    # XLA's compiled loops do), so it matches the jitted reference; XLA's own
    # eager path rounds differently (no fused multiply-adds between separate
    # operations). (flatten's example wraps an AdamW, whose step is native;
    # partition's transformations are optimizers; master_weights and loss_scale
    # call their optimizer's step.)
    opt, extra = EVERYTHING[name], EXTRA.get(name)
    wrapping = {"flatten", "partition", "master_weights", "loss_scale"}
    compiled = isinstance(opt, O.Optimizer) or name in NATIVE | wrapping
    ours = run(opt, jnp.float32, method="step", jit=jit, extra=extra)
    ref = run(opt, jnp.float32, method="update", jit=jit or compiled, extra=extra)
    if name in ROUNDED_DIFFERENTLY:
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        return
    assert_same(ours, ref)


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_float64_step_equals_update_then_apply(name, x64):
    same_as_update(OPTIMIZERS[name], jnp.float64)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_native_kernel_runs_exactly_where_expected(name):
    if not _native.available():
        pytest.skip("no native kernels here")
    n = native_calls(OPTIMIZERS[name], tree())
    assert n == (4 if name in NATIVE else 0)


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_donated_step_updates_in_place(name):
    opt = OPTIMIZERS[name]
    params = tree()
    state = opt.init(params)

    def train_step(params, state, grads):
        # Donated buffers go to the outputs in order: params, then state.
        return opt.step(grads, state, params)

    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    entry = compiled.as_text()[compiled.as_text().find("\nENTRY") :]
    assert _ARRAY_COPY.findall(entry) == []
    # Nothing parameter-sized is allocated: the kernels write the donated arrays.
    assert compiled.memory_analysis().temp_size_in_bytes < 33 * 31 * 4


# bfloat16 state under float32 parameters: the math in float32, each buffer
# rounded as stored (`keep`) before the update reads it.
BF16_STATE = {
    "sgd": O.sgd(0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adamw": O.adamw(1e-2),
    "adam": O.adam(1e-2, weight_decay=0.01),
    "rmsprop": O.rmsprop(1e-2, momentum=0.9, centered=True, weight_decay=0.01),
    "lion": O.lion(1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("name", sorted(BF16_STATE))
def test_bfloat16_state_runs_natively_and_equals_update(name):
    opt = dataclasses.replace(BF16_STATE[name], state_dtype=jnp.bfloat16)
    if _native.available():
        assert native_calls(opt, tree()) == 4
    same_as_update(opt, jnp.float32)


@pytest.mark.parametrize(
    "opt, dtype",
    [
        (O.sgd(0.1), jnp.float32),  # no buffer: XLA's loop is one pass already
        (O.adamw(1e-2), jnp.bfloat16),  # bfloat16 parameters
        (O.rmsprop(1e-2, momentum=0.9, centered=True), jnp.bfloat16),
    ],
    ids=["sgd-no-momentum", "adamw-bf16", "rmsprop-bf16"],
)
def test_other_configurations_use_xla(opt, dtype):
    assert native_calls(opt, tree(dtype)) == 0
    same_as_update(opt, dtype, steps=2)


@pytest.mark.parametrize(
    "opt",
    [O.adam(1e-2, amsgrad=True, weight_decay=0.1), O.adagrad(1e-2, lr_decay=0.1)],
    ids=["amsgrad", "adagrad"],
)
def test_kernels_come_from_the_python_definition(opt):
    # No C++ was written for these: their kernels are generated from `kernel`.
    if not _native.available():
        pytest.skip("no native kernels here")
    assert native_calls(opt, tree()) == 4
    same_as_update(opt, jnp.float32)


def test_mixed_widths_under_x64(x64):
    # Under x64 the hyperparameters are float64, and XLA computes float32
    # parameters' updates in float64: the generated kernel does the same.
    if not _native.available():
        pytest.skip("no native kernels here")
    for opt, dtype in [
        (O.adamw(1e-2), jnp.float32),
        (O.adamw(1e-2), jnp.float64),
        (O.adamw(1e-2, state_dtype=jnp.bfloat16), jnp.float64),
    ]:
        assert native_calls(opt, tree(dtype)) == 4
        same_as_update(opt, dtype, steps=2)


def test_vmap_over_independent_runs():
    opt = O.adamw(1e-2)
    params = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), tree())
    g = jax.tree.map(lambda p: jnp.stack([p, -p]), gradients(0))
    state = jax.vmap(opt.init)(params)
    new, _ = jax.vmap(opt.step)(g, state, params)
    for i in range(2):
        take = lambda t, i=i: jax.tree.map(lambda x: x[i], t)  # noqa: E731
        one, _ = jax.jit(opt.step)(take(g), opt.init(take(params)), take(params))
        for a, b in zip(jax.tree.leaves(take(new)), jax.tree.leaves(one), strict=True):
            np.testing.assert_array_equal(a, b)


def test_gradient_through_a_step():
    # Differentiating through the update (meta-learning) follows XLA's formulation.
    opt = O.sgd(0.1, momentum=0.9)
    params = tree()
    state = opt.init(params)
    g = gradients(0)

    def loss(method, g):
        if method == "step":
            new, _ = opt.step(g, state, params)
        else:
            updates, _ = opt.update(g, state, params)
            new = optax.apply_updates(params, updates)
        return sum(jnp.sum(x**2) for x in jax.tree.leaves(new))

    ours = jax.jit(jax.grad(lambda g: loss("step", g)))(g)
    ref = jax.jit(jax.grad(lambda g: loss("update", g)))(g)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_other_platforms_lower_xla_loops():
    # Exported for a GPU, the step holds no CPU custom call.
    opt = O.adamw(1e-2)
    params = tree()
    exported = jax.export.export(jax.jit(opt.step), platforms=["cuda"])(
        params, opt.init(params), params
    )
    assert "cadence_" not in exported.mlir_module()
    assert "stablehlo.sqrt" in exported.mlir_module()


_EXPORT_PROBE = """
import json, jax, jax.numpy as jnp
from cadence import optimizers as O
opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(1e-2))
p = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
exported = jax.export.export(jax.jit(opt.step), platforms=["cuda"])(p, opt.init(p), p)
print(json.dumps({"custom_calls": exported.mlir_module().count("cadence_")}))
"""


def test_exporting_for_a_gpu_builds_nothing(tmp_path):
    # A GPU user never pays for a host build: the kernels are compiled only
    # when a program is lowered for a CPU.
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT_PROBE],
        env=os.environ | {"CADENCE_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"custom_calls": 0}
    assert not (tmp_path / "cache").exists()


def _tell_apart():
    """`on_cpu` over two formulations that give different numbers, counting XLA's traces."""
    traced = []

    def xla(x):
        traced.append("xla")
        return {"y": x + 2}

    return _native.on_cpu(lambda x: {"y": x + 1}, xla), traced


def test_on_cpu_traces_xla_only_where_it_lowers():
    run, traced = _tell_apart()
    x = jnp.zeros(3)
    jax.jit(run).lower(x).compile()
    assert traced == []  # a CPU lowers the native formulation alone
    text = jax.jit(run).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert traced == ["xla"] and "2.0" in text
    both = jax.export.export(jax.jit(run), platforms=["cpu", "cuda"])(x).mlir_module()
    assert "1.0" in both and "2.0" in both


def test_on_cpu_runs_native_everywhere_on_a_cpu():
    run, traced = _tell_apart()
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(run(x)["y"], x + 1)  # eagerly
    np.testing.assert_array_equal(jax.jit(run)(x)["y"], x + 1)
    np.testing.assert_array_equal(jax.vmap(run)(jnp.stack([x, x]))["y"], [x + 1, x + 1])
    assert traced == []
    # Derivatives follow XLA's formulation (here the same slope).
    assert jax.grad(lambda x: run(x)["y"].sum())(x).tolist() == [1.0, 1.0, 1.0]
    assert traced


def test_step_needs_params():
    opt = O.sgd(0.1)
    with pytest.raises(TypeError, match="sgd.step: params are required"):
        opt.step(tree(), opt.init(tree()), None)


def test_chain_step_runs_the_last_optimizer_natively():
    if not _native.available():
        pytest.skip("no native kernels here")
    opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(1e-2))
    assert native_calls(opt, tree()) == 4
    # The four leaves' norms: one call.
    assert native_calls(opt, tree(), pattern=_NORM_CALL) == 1
    with pytest.raises(ValueError, match="chain.step: expected a ChainState"):
        opt.step(tree(), O.adamw(1e-2).init(tree()), tree())


@pytest.mark.parametrize("norm_type", [1.0, 2.0, float("inf")])
def test_native_norm_partials_match_xla(norm_type):
    if not _native.available():
        pytest.skip("no native kernels here")
    from cadence.optimizers._transforms import global_norm

    rng = np.random.default_rng(7)
    # 40 small leaves (sizes cover the 8-lane remainder) around one large one,
    # which XLA sums: calls of at most 16 small leaves, 16 + 4 on each side.
    leaves = [
        jnp.asarray(rng.standard_normal(n) * 10.0 ** (n % 5 - 2), jnp.float32)
        for n in [*range(1, 21), (1 << 16) + 1, *range(21, 41)]
    ]
    native = jax.jit(lambda t: global_norm(t, norm_type, native=True))
    text = native.lower(leaves).as_text()
    assert len(_NORM_CALL.findall(text)) == 4
    ours, xla = native(leaves), jax.jit(lambda t: global_norm(t, norm_type))(leaves)
    # float64 accumulation against XLA's float32 tree: a few float32 ulps at most.
    np.testing.assert_allclose(ours, xla, rtol=3e-7 if norm_type != float("inf") else 0)
    exact = np.linalg.norm(
        [np.linalg.norm(np.asarray(x, np.float64), norm_type) for x in leaves], norm_type
    )
    assert abs(float(ours) - exact) <= abs(float(xla) - exact) + 1e-6 * exact
    # A NaN anywhere makes the norm NaN (and clipping then poisons the step, as in torch).
    leaves[30] = leaves[30].at[3].set(jnp.nan)
    assert np.isnan(native(leaves))


def test_native_norm_in_a_clipped_step_matches_update():
    if not _native.available():
        pytest.skip("no native kernels here")
    opt = O.chain(O.clip_by_global_norm(0.5), O.sgd(0.1, momentum=0.9))
    params = tree()
    grads = gradients(1)
    by_step = jax.jit(opt.step)(grads, opt.init(params), params)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    np.testing.assert_allclose(by_step[1].inner[0].norm, state.inner[0].norm, rtol=1e-6)
    applied = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(by_step[0]), jax.tree.leaves(applied), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
