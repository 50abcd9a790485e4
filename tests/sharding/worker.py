"""Multi-device runs for the sharding tests, executed in fresh Python processes.

The test process has already initialised jax with one CPU device; these runs
need several, which jax only reads from ``XLA_FLAGS`` before it starts.

    python -m tests.sharding.worker spmd                 # 2-D mesh checks, JSON on stdout
    python -m tests.sharding.worker zero                 # ZeRO-1 checks, JSON on stdout
    python -m tests.sharding.worker flatten              # flatten on a mesh, JSON on stdout
    python -m tests.sharding.worker train DIR OUT START STOP [PROCESS_ID PORT]

`train` runs steps START..STOP of the data x model training run on 8 devices:
one process with 8 devices, or (with PROCESS_ID and PORT) one of two
processes with 4 devices each joined by `jax.distributed`. START > 0
restores step START from the checkpoint in DIR; the run saves step STOP
there, and writes its final parameters and state to OUT (an .npz).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

if __name__ == "__main__":  # not when pytest imports this module for doctests
    # Devices: 8 in one process, or 4 in each of 2 (`train ... PROCESS_ID PORT`).
    devices = 4 if sys.argv[1:2] == ["train"] and len(sys.argv) == 8 else 8
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from cadence import checkpoint  # noqa: E402
from cadence import optimizers as O  # noqa: E402
from cadence import schedules as S  # noqa: E402
from cadence.optimizers._transforms import global_norm  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# A two-layer MLP sharded over both mesh axes (FSDP over data, tensor
# parallel over model).
SPECS = {"w1": P("data", "model"), "b1": P("model"), "w2": P("model", "data"), "b2": P()}

OPTIMIZERS = {
    "sgd": O.sgd(0.1, momentum=0.9),
    "adam": O.adam(1e-2),
    "adamw": O.adamw(1e-2, weight_decay=0.1),
    "rmsprop": O.rmsprop(1e-2),
    "adagrad": O.adagrad(1e-2, initial_accumulator_value=0.1),
    "lion": O.lion(1e-3, weight_decay=0.1),
    "chain": O.chain(O.clip_by_global_norm(1.0), O.adamw(1e-2, weight_decay=0.1)),
    "nadam": O.nadam(1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "adafactor": O.adafactor(1e-2, weight_decay=0.1),
    "adopt": O.adopt(1e-2, weight_decay=0.1, decoupled=True),
    "lamb": O.lamb(1e-2, weight_decay=0.1),
    "lars": O.lars(0.1, momentum=0.9, weight_decay=0.1, trust_coeff=0.01),
    "asgd": O.asgd(1e-2, lambd=1e-2, t0=2.0, weight_decay=0.1),
    "rprop": O.rprop(1e-2),
}

# Muon takes 2-D leaves only: it is checked on the two matrices.
MATRIX_OPTIMIZERS = {"muon": O.muon(1e-2)}
MATRICES = ("w1", "w2")

SCHEDULE = S.warmup(S.cosine(2e-2, 20, end=1e-3), 3)


def host_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w1": (rng.normal(size=(16, 32)) * 0.3).astype(np.float32),
        "b1": np.zeros(32, np.float32),
        "w2": (rng.normal(size=(32, 8)) * 0.3).astype(np.float32),
        "b2": np.zeros(8, np.float32),
    }


def host_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(32, 16)).astype(np.float32)
    return x, np.tanh(x @ np.full((16, 8), 0.1, np.float32)).astype(np.float32)


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return jnp.mean((h @ params["w2"] + params["b2"][None, :] - y) ** 2)


def auto_mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> jax.sharding.Mesh:
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def put(tree: Any, shardings: Any) -> Any:
    """Global arrays from host data, each device (of any process) taking its slice."""
    return jax.tree.map(
        lambda a, s: jax.make_array_from_callback(a.shape, s, lambda index: a[index]),
        tree,
        shardings,
    )


def train_step(optimizer: Any) -> Any:
    def step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step)


def optimizer_step(optimizer: Any) -> Any:
    def step(grads, state, params):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def collectives(hlo: str) -> dict[str, list[str]]:
    """The result shapes of each kind of collective in compiled HLO text."""
    out: dict[str, list[str]] = {}
    for kind in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute"):
        pattern = rf"= (\([^)]*\)|\S+) {kind}(?:-start)?\("
        out[kind] = re.findall(pattern, hlo)
    return out


def path_of(path: Any) -> str:
    return jax.tree_util.keystr(path)


def spec_of(sharding: Any) -> str:
    return str(sharding.spec) if isinstance(sharding, NamedSharding) else repr(sharding)


def mismatches(tree: Any, expected: Any) -> list[str]:
    """Paths whose array's sharding differs from the expected sharding."""
    out = []
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for (path, x), want in zip(flat, jax.tree.leaves(expected), strict=True):
        if not x.sharding.is_equivalent_to(want, x.ndim):
            out.append(f"{path_of(path)}: {spec_of(x.sharding)} != {spec_of(want)}")
    return out


def follows_params(state: Any, params: Any, mesh: Any) -> list[str]:
    """Independent of `state_shardings`: buffers like their parameter, scalars replicated.

    A buffer that reduces its parameter to size 1 along some dimensions
    (Adafactor's row and column moments, its one-element placeholders) keeps
    the parameter's partitioning of the other dimensions.
    """
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = path[-1].key if isinstance(path[-1], jax.tree_util.DictKey) else None
        if x.ndim and isinstance(params.get(name), jax.Array):
            param = params[name]
            want = param.sharding
            if x.shape != param.shape:
                spec = list(want.spec) + [None] * (param.ndim - len(want.spec))
                kept = (
                    a if d == q else None
                    for a, d, q in zip(spec, x.shape, param.shape, strict=True)
                )
                want = NamedSharding(mesh, P(*kept))
        else:
            want = NamedSharding(mesh, P())
        if not x.sharding.is_equivalent_to(want, x.ndim):
            out.append(f"{path_of(path)}: {spec_of(x.sharding)} != {spec_of(want)}")
    return out


def max_diff(a: Any, b: Any) -> float:
    diffs = [
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return max(diffs)


def bitwise(a: Any, b: Any) -> bool:
    return all(
        np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# --------------------------------------------------------------------------
# spmd: a data x model mesh, every optimizer.


def spmd() -> dict[str, Any]:
    mesh = auto_mesh((2, 4), ("data", "model"))
    shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
    host = host_params()
    params = put(host, shardings)
    single = jax.devices()[0]
    rng = np.random.default_rng(7)
    grads_host = [
        jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), host) for _ in range(2)
    ]
    report: dict[str, Any] = {}
    every = (OPTIMIZERS | MATRIX_OPTIMIZERS).items()
    full = (shardings, params, host, grads_host)
    for name, opt in every:
        shardings, params, host, grads_host = full
        if name in MATRIX_OPTIMIZERS:
            shardings, params, host = ({k: t[k] for k in MATRICES} for t in full[:3])
            grads_host = [{k: g[k] for k in MATRICES} for g in full[3]]
        r: dict[str, Any] = {}
        expected = O.state_shardings(opt, shardings)
        # The same layouts (P() and P(None) on a vector are one layout: bare
        # shardings give a parameter the rank of its spec, so a replicated
        # vector's one-element placeholder comes out P() there).
        ranks = [x.ndim for x in jax.tree.leaves(jax.eval_shape(opt.init, params))]
        same = zip(
            jax.tree.leaves(expected),
            jax.tree.leaves(O.state_shardings(opt, params)),
            ranks,
            strict=True,
        )
        r["bare_vs_arrays"] = all(a == b or a.is_equivalent_to(b, n) for a, b, n in same)
        states = {
            "eager": opt.init(params),
            "jit": jax.jit(opt.init)(params),
            "eval_shape": jax.jit(opt.init, out_shardings=expected)(params),
        }
        r["abstract_structure"] = jax.tree.structure(
            jax.eval_shape(opt.init, params)
        ) == jax.tree.structure(states["eager"])
        r["placement"] = {
            mode: mismatches(s, expected) + follows_params(s, params, mesh)
            for mode, s in states.items()
        }
        # (Placed by out_shardings: a plain jit of init replicates Adafactor's
        # row and column moments, whose layout it cannot tie to the params'.)
        state = states["eval_shape"]
        compiled = jax.jit(optimizer_step(opt)).lower(params, state, params).compile()
        r["collectives"] = collectives(compiled.as_text())
        # The compiled step runs on the sharded arrays and keeps their layout.
        p, s = params, state
        p_ref = jax.device_put(host, single)
        s_ref = jax.jit(opt.init)(p_ref)
        step_ref = jax.jit(optimizer_step(opt))
        for g in grads_host:
            p, s = compiled(put(g, shardings), s, p)
            p_ref, s_ref = step_ref(jax.device_put(g, single), s_ref, p_ref)
        r["layout_kept"] = mismatches(p, shardings) + mismatches(s, expected)
        r["max_diff"] = max_diff((p, s), (p_ref, s_ref))
        # `step` with several devices: XLA's loops (a custom call would be
        # gathered), the same collectives and numbers as update + apply.
        by_step = jax.jit(lambda g, s, p, opt=opt: opt.step(g, s, p))
        by_step = by_step.lower(params, state, params).compile()
        r["step_collectives"] = collectives(by_step.as_text())
        r["step_native_calls"] = by_step.as_text().count('custom_call_target="cadence_')
        g = put(grads_host[0], shardings)
        r["step_vs_update"] = max_diff(by_step(g, state, params), compiled(g, state, params))
        report[name] = r
    shardings, params, host, grads_host = full

    # A whole training step (forward, backward, update) on a batch split over
    # data, against one device.
    opt = OPTIMIZERS["chain"]
    batch = NamedSharding(mesh, P("data"))
    p, s = params, opt.init(params)
    p_ref = jax.device_put(host, single)
    s_ref = opt.init(p_ref)
    step = train_step(opt)
    for t in range(3):
        x, y = host_batch(t)
        p, s = step(p, s, *put((x, y), (batch, batch)))
        p_ref, s_ref = step(p_ref, s_ref, *jax.device_put((x, y), single))
    report["train"] = {
        "max_diff": max_diff((p, s), (p_ref, s_ref)),
        "layout_kept": mismatches(p, shardings),
    }

    # The global norm alone: one all-reduce whatever the layouts and p, the
    # value of torch's formula, and vmap and grad through it.
    layouts = SPECS | {"both": P(("data", "model")), "rows": P("data"), "scalar": P()}
    norm_host = {k: rng.normal(size=np.shape(v)).astype(np.float32) for k, v in host.items()}
    norm_host |= {
        "both": rng.normal(size=16).astype(np.float32),
        "rows": rng.normal(size=(4, 3)).astype(np.float32),
        "scalar": np.float32(-2.5),
    }
    tree = put(norm_host, {k: NamedSharding(mesh, s) for k, s in layouts.items()})
    report["norms"] = {}
    for p_ in (1.0, 2.0, 3.0, float("inf")):
        fn = jax.jit(lambda t, p_=p_: global_norm(t, p_))
        leaf_norms = [
            np.linalg.norm(np.ravel(x).astype(np.float64), p_) for x in norm_host.values()
        ]
        report["norms"][str(p_)] = {
            "collectives": collectives(fn.lower(tree).compile().as_text()),
            "value": float(fn(tree)),
            "eager": float(global_norm(tree, p_)),
            "one_device": float(fn(jax.device_put(norm_host, single))),
            "torch_formula": float(np.linalg.norm(leaf_norms, p_)),
        }
    grad = jax.jit(jax.grad(global_norm))
    report["norms"]["grad_diff"] = max_diff(grad(tree), grad(jax.device_put(norm_host, single)))
    stacked = jnp.stack([jnp.asarray(norm_host["w1"]), -jnp.asarray(norm_host["w1"]) / 2])
    bias = jnp.asarray(norm_host["b1"])
    batched = jax.vmap(lambda w: global_norm({"w": w, "b": bias}))(stacked)
    report["norms"]["vmap"] = np.asarray(batched).tolist()
    report["norms"]["vmap_expected"] = [
        float(np.sqrt(np.sum((f * norm_host["w1"]) ** 2) + np.sum(norm_host["b1"] ** 2)))
        for f in (1.0, 0.5)
    ]

    # The wrappers, and parameters without a sharding (replicated state).
    odd = params | {"n": np.ones(3, np.float32)}
    report["wrappers"] = {}
    for name, opt in {
        "accumulate": O.accumulate(O.sgd(0.1, momentum=0.9), 2),
        "skip_nonfinite": O.skip_nonfinite(O.adamw(1e-3)),
        "reduce_on_plateau": O.reduce_on_plateau(O.rmsprop(1e-2, centered=True)),
        "clip_by_value": O.chain(O.clip_by_value(1.0), O.lion(1e-3)),
    }.items():
        expected = O.state_shardings(opt, odd)
        report["wrappers"][name] = {
            mode: mismatches(s, expected) + follows_params(s, odd, mesh)
            for mode, s in {"eager": opt.init(odd), "jit": jax.jit(opt.init)(odd)}.items()
        }

    # optax inside a cadence chain follows too (alone, optax's jitted init does not).
    inner = O.chain(optax.adam(1e-3))
    report["optax_in_chain"] = follows_params(jax.jit(inner.init)(params), params, mesh)
    report["optax_alone"] = follows_params(jax.jit(optax.adam(1e-3).init)(params), params, mesh)

    # Explicit mesh axes: the tracers carry the shardings.
    explicit = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(explicit):
        eshardings = {k: NamedSharding(explicit, s) for k, s in SPECS.items()}
        eparams = put(host, eshardings)
        opt = OPTIMIZERS["chain"]
        expected = O.state_shardings(opt, eshardings)
        report["explicit"] = {
            mode: mismatches(s, expected) + follows_params(s, eparams, explicit)
            for mode, s in {"eager": opt.init(eparams), "jit": jax.jit(opt.init)(eparams)}.items()
        }
        p, s = eparams, opt.init(eparams)
        p, s = jax.jit(optimizer_step(opt))(put(grads_host[0], eshardings), s, p)
        report["explicit"]["layout_kept"] = mismatches(p, eshardings) + mismatches(s, expected)
    return report


# --------------------------------------------------------------------------
# zero: ZeRO-1 over an 8-way data axis.


def device0_bytes(tree: Any) -> int:
    device = jax.devices()[0]
    return sum(
        shard.data.nbytes
        for x in jax.tree.leaves(tree)
        for shard in x.addressable_shards
        if shard.device == device
    )


def buffers(state: Any) -> Any:
    """The per-parameter buffers of a state (its leaves with a rank)."""
    return [x for x in jax.tree.leaves(state) if x.ndim]


def zero() -> dict[str, Any]:
    mesh = auto_mesh((8,), ("data",))
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    host = host_params()
    params0 = put(host, {k: replicated for k in host})
    report: dict[str, Any] = {}
    for name in ("adamw", "chain"):
        base = OPTIMIZERS[name]
        opt = O.shard_state(base, mesh, axis="data")
        expected = O.state_shardings(opt, params0)
        r: dict[str, Any] = {}
        states = {
            "eager": opt.init(params0),
            "jit": jax.jit(opt.init)(params0),
            "eval_shape": jax.jit(opt.init, out_shardings=expected)(params0),
        }
        r["placement"] = {mode: mismatches(s, expected) for mode, s in states.items()}
        r["specs"] = {
            path_of(path): spec_of(x.sharding)
            for path, x in jax.tree_util.tree_flatten_with_path(states["eager"])[0]
            if x.ndim
        }
        plain_state = base.init(params0)
        r["bytes"] = {
            "plain_buffers": device0_bytes(buffers(plain_state)),
            "zero_buffers": device0_bytes(buffers(states["eager"])),
            "plain_total": device0_bytes(plain_state),
            "zero_total": device0_bytes(states["eager"]),
        }
        runs = {}
        for label, tx, state in (("plain", base, plain_state), ("zero", opt, states["jit"])):
            step = train_step(tx)
            p, s = params0, state
            for t in range(10):
                p, s = step(p, s, *put(host_batch(t), (batch, batch)))
            runs[label] = (p, s)
            if label == "zero":
                x, y = put(host_batch(0), (batch, batch))
                r["collectives"] = collectives(step.lower(p, s, x, y).compile().as_text())
                r["layout_kept"] = mismatches(p, {k: replicated for k in host}) + mismatches(
                    s, expected
                )
        r["max_diff"] = max_diff(runs["plain"][0], runs["zero"][0])
        r["bitwise"] = bitwise(runs["plain"][0], runs["zero"][0])
        report[name] = r
    # The rules of the newer optimizers (Muon on the matrices): factored
    # moments split along their kept dimensions, placeholders replicated.
    for name, base in (
        ("nadam", OPTIMIZERS["nadam"]),
        ("adafactor", OPTIMIZERS["adafactor"]),
        ("muon", MATRIX_OPTIMIZERS["muon"]),
    ):
        keys = MATRICES if name == "muon" else tuple(host)
        p0 = {k: params0[k] for k in keys}
        opt = O.shard_state(base, mesh, axis="data")
        expected = O.state_shardings(opt, p0)
        state = opt.init(p0)
        r = {"placement": mismatches(state, expected)}
        r["specs"] = {
            path_of(path): spec_of(x.sharding)
            for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
            if x.ndim
        }
        runs = {}
        for label, tx, s in (("plain", base, base.init(p0)), ("zero", opt, state)):
            step = jax.jit(optimizer_step(tx))
            p = p0
            for t in range(5):
                g = jax.tree.map(lambda a, t=t: jnp.cos(a * (t + 1)), p)
                p, s = step(g, s, p)
            runs[label] = (p, s)
        r["layout_kept"] = mismatches(runs["zero"][1], expected)
        r["max_diff"] = max_diff(runs["plain"][0], runs["zero"][0])
        report[f"more_{name}"] = r
    return report


# --------------------------------------------------------------------------
# flatten: refuses split parameters, takes replicated ones.


def flatten() -> dict[str, Any]:
    mesh = auto_mesh((2, 4), ("data", "model"))
    host = host_params()
    opt = O.flatten(O.adam(1e-2))
    report: dict[str, Any] = {"sharded": None}  # init's error message
    try:
        opt.init(put(host, {k: NamedSharding(mesh, s) for k, s in SPECS.items()}))
    except ValueError as e:
        report["sharded"] = str(e)
    # Replicated parameters: with several devices, XLA's slices of the vectors.
    params = put(host, dict.fromkeys(host, NamedSharding(mesh, P())))
    step = jax.jit(lambda o, g, s, p: o.step(g, s, p))
    (p, s), (p_ref, s_ref) = (step(o, params, o.init(params), params) for o in (opt, opt.tx))
    report["vector"] = {k: list(v.shape) for k, v in s.inner.mu.items()}
    mu_ref = jnp.concatenate([x.ravel() for x in jax.tree.leaves(s_ref.mu)])
    report["bitwise"] = bitwise((p, s.inner.mu["float32"]), (p_ref, mu_ref))
    return report


# --------------------------------------------------------------------------
# train: the multi-process (or single-process reference) run with checkpoints.


def train(directory: str, out: str, start: int, stop: int) -> None:
    mesh = auto_mesh((2, 4), ("data", "model"))
    shardings = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
    batch = NamedSharding(mesh, P("data"))
    opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(SCHEDULE, weight_decay=0.1))
    if start == 0:
        params = put(host_params(), shardings)
        state = opt.init(params)
    else:
        like = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            host_params(),
            shardings,
        )
        restored = checkpoint.restore(
            directory,
            step=start,
            params_like=like,
            shardings={"params": shardings, "opt_state": O.state_shardings(opt, like)},
        )
        assert restored.optimizer == opt, restored.optimizer
        params, state = restored.params, restored.opt_state
        wrong = mismatches(state, O.state_shardings(opt, like)) + mismatches(params, shardings)
        assert not wrong, wrong
    step = train_step(opt)
    for t in range(start, stop):
        params, state = step(params, state, *put(host_batch(t), (batch, batch)))
    checkpoint.save(directory, stop, params, state, optimizer=opt)
    from jax.experimental import multihost_utils

    leaves = [
        np.asarray(multihost_utils.process_allgather(x, tiled=True))
        for x in jax.tree.leaves((params, state))
    ]
    if jax.process_index() == 0:
        np.savez(out, *leaves)


def main(argv: list[str]) -> int:
    command = argv[0]
    if command in ("spmd", "zero", "flatten"):
        assert jax.device_count() == 8, jax.devices()
        report = {"spmd": spmd, "zero": zero, "flatten": flatten}[command]()
        print(json.dumps(report))
        return 0
    if command == "train":
        directory, out, start, stop = argv[1], argv[2], int(argv[3]), int(argv[4])
        if len(argv) > 5:
            process_id, port = int(argv[5]), int(argv[6])
            jax.distributed.initialize(
                f"127.0.0.1:{port}",
                num_processes=2,
                process_id=process_id,
                initialization_timeout=60,
            )
        assert jax.device_count() == 8, jax.devices()
        train(directory, out, start, stop)
        return 0
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
