"""JAX rows: the whole step as users jit it, compiled ahead of time and inspected.

Each runner owns its params and state (donation consumes them) and shares the
gradients, which are never donated.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._timing import Runner


def make_step(tx: Any) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``step(params, state, grads) -> (params, state)``: update, then apply."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def make_native_step(tx: Any) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``step(params, state, grads) -> (params, state)`` through ``tx.step`` (cadence only)."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        return tx.step(grads, state, params)

    return step


def identity(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
    """The same signature doing nothing: what crossing the jit boundary costs alone."""
    del grads
    return params, state


def to_jax(tree: dict[str, np.ndarray], dtype: str) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v, dtype=dtype) for k, v in tree.items()}


# An instruction of the entry computation: `%name = type op(`.
_INSTR = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][\w-]*)\(", re.MULTILINE)


def _nonscalar(type_str: str) -> bool:
    return re.search(r"\[\d", type_str) is not None


def analyse(compiled: Any, n_params: int) -> dict[str, Any]:
    """What XLA made of the step: bytes it expects to move, kernels, temporaries, copies."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    accessed = (cost or {}).get("bytes accessed")
    mem = compiled.memory_analysis()
    text = compiled.as_text()
    entry = text[text.find("\nENTRY") :]
    ops = [(t, op) for t, op in _INSTR.findall(entry)]
    # XLA's cost model does not see inside a custom call: no byte count then.
    native = any(op == "custom-call" for _, op in ops)
    return {
        "xla_bytes_per_param": accessed / n_params if accessed is not None and not native else None,
        "temp_bytes_per_param": mem.temp_size_in_bytes / n_params if mem is not None else None,
        # Array-sized kernels the step launches (scalar bookkeeping excluded):
        # XLA's loops and custom calls (cadence's native kernels).
        "fusions": sum(op == "fusion" and _nonscalar(t) for t, op in ops),
        "custom_calls": sum(op == "custom-call" for t, op in ops),
        "copies": sum(op == "copy" and _nonscalar(t) for t, op in ops),
    }


def runner(
    name: str,
    library: str,
    fn: Callable[[Any, Any, Any], tuple[Any, Any]],
    init: Callable[[Any], Any],
    params_np: dict[str, np.ndarray],
    grads: dict[str, jax.Array],
    dtype: str,
    donate: bool,
) -> Runner:
    """Jit `fn`, compile it for these arrays (timed), and wrap it as a `Runner`."""
    params = to_jax(params_np, dtype)
    state = init(params)
    n_params = sum(int(np.prod(p.shape)) for p in params.values())
    jitted = jax.jit(fn, donate_argnums=(0, 1) if donate else ())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        lowered = jitted.lower(params, state, grads)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
    info = analyse(compiled, n_params) | {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "arrays_in": len(jax.tree.leaves((params, state, grads))),
        "donated": donate,
        # jax warns "Some donated buffers were not usable" when a donated
        # input has no output to alias: it then costs a fresh allocation.
        "donation_warnings": sum("donated" in str(w.message) for w in caught),
    }
    return compiled_runner(name, library, jitted, params, state, grads, info)


def compiled_runner(
    name: str, library: str, jitted: Any, params: Any, state: Any, grads: Any, info: dict
) -> Runner:
    """A `Runner` stepping `jitted` (compiled already) on params and state it carries along."""
    box = [params, state]
    del params, state

    def step() -> None:
        # The compile before this filled jit's cache: this call does not recompile.
        box[0], box[1] = jitted(box[0], box[1], grads)

    def sync() -> None:
        # One leaf is enough: every output of one XLA execution becomes ready
        # at once, and each step waits for the previous one's outputs.
        jax.tree.leaves(box[0])[0].block_until_ready()

    return Runner(name, library, step, sync, info)


def state_bytes(tx: Any, params: Any) -> int:
    """Bytes of the optimizer state after one update, from shapes alone (nothing allocated)."""
    state = jax.eval_shape(tx.init, params)
    _, state = jax.eval_shape(tx.update, params, state, params)
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
