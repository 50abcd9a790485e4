"""Per-leaf p-norm partials that cost one collective on a sharded tree.

torch's total gradient norm is the p-norm of the per-leaf p-norms, and each
leaf's norm needs its whole sum. Left to XLA's partitioner, every leaf sharded
over a different set of mesh axes is reduced by its own all-reduce (three on a
data x model mesh). Here the per-leaf partial sums are computed on each
device's shards, stacked into one vector and combined by a single all-reduce
over every device, so the step has one collective of one float per leaf
whatever the layout; the per-leaf roots are then taken as torch takes them.

A replicated shard would be counted once per copy, so each distinct shard is
counted only on the first device that holds it. The layout is only known when
XLA partitions the program (under `jit` with automatic sharding a tracer does
not carry it), so the rule is a `custom_partitioning` callback; on one device
it is never invoked and the plain per-leaf reductions run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _native
from ._base import float_dtype

__all__ = ["finish", "leaf_partials", "native_partials", "partial_sum"]

_AXIS = "cadence_devices"


def partial_sum(x: jax.Array, p: float) -> jax.Array:
    """The reduction of one leaf that its p-norm is the root of (the max for ``inf``).

    In JAX's default float dtype (float32, or float64 under x64).
    """
    x = jnp.abs(x)
    if p == math.inf:
        s = jnp.max(x, initial=0.0)
    elif p == 1:
        s = jnp.sum(x)
    elif p == 2:
        s = jnp.sum(x * x)
    else:
        s = jnp.sum(x**p)
    return s.astype(float_dtype())


def finish(s: jax.Array, p: float) -> jax.Array:
    """The p-norm from `partial_sum`'s value."""
    if p in (1, math.inf):
        return s
    if p == 2:
        return jnp.sqrt(s)
    return s ** (1 / p)


def _stacked(p: float, *leaves: jax.Array) -> jax.Array:
    return jnp.stack([partial_sum(x, p) for x in leaves])


def _first_holders(sharding: Any, shape: tuple[int, ...], devices: Sequence[Any]) -> np.ndarray:
    """Per device: whether it is the first in `devices` to hold its shard of the array."""
    index = sharding.devices_indices_map(shape)
    seen: set[Any] = set()
    out = []
    for d in devices:
        key = tuple((s.start, s.stop, s.step) for s in index[d]) if d in index else None
        out.append(key is not None and key not in seen)
        seen.add(key)
    return np.array(out)


def _partition(p: float, mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
    del mesh, result_shape
    shardings = tuple(a.sharding for a in arg_shapes)
    # Partition ids follow the program's device assignment, which every
    # operand shares; a one-axis mesh in that order makes `axis_index` the id.
    devices = list(shardings[0]._device_assignment)
    flat = Mesh(np.array(devices, dtype=object), (_AXIS,))
    masks = [
        None if p == math.inf else _first_holders(s, a.shape, devices)
        for s, a in zip(shardings, arg_shapes, strict=True)
    ]

    def lower(*shards: jax.Array) -> jax.Array:
        me = jax.lax.axis_index(_AXIS)
        sums = []
        for x, mask in zip(shards, masks, strict=True):
            s = partial_sum(x, p)
            if mask is not None and not mask.all():
                s = jnp.where(jnp.asarray(mask)[me], s, jnp.zeros_like(s))
            sums.append(s)
        stacked = jnp.stack(sums)
        reduce = jax.lax.pmax if p == math.inf else jax.lax.psum
        return reduce(stacked, _AXIS)

    return flat, lower, NamedSharding(flat, PartitionSpec()), shardings


def _infer(p: float, mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
    del p, arg_shapes, result_shape
    return NamedSharding(mesh, PartitionSpec())


def _rule(p: float, mesh: Any, operand_types: Any, result_types: Any) -> Any:
    # Every operand dimension may stay sharded (it is reduced away); the
    # result, one value per leaf, is replicated.
    del p, mesh, result_types
    operands, reduced = [], []
    for t in operand_types:
        names = [f"d{len(reduced) + i}" for i in range(len(t.shape))]
        reduced += names
        operands.append(" ".join(names))
    return ", ".join(operands) + " -> leaf", {
        "reduction_factors": tuple(reduced),
        "need_replication_factors": ("leaf",),
    }


@functools.cache
def _combined(p: float) -> Any:
    partitioned = custom_partitioning(_stacked, static_argnums=(0,))
    partitioned.def_partition(
        partition=_partition, infer_sharding_from_operands=_infer, sharding_rule=_rule
    )

    @custom_vmap
    def combined(*leaves: jax.Array) -> jax.Array:
        return partitioned(p, *leaves)

    @combined.def_vmap
    def _batched(axis_size: int, in_batched: Sequence[bool], *leaves: jax.Array) -> Any:
        # custom_partitioning has no batching rule: under vmap the leaves are
        # reduced by XLA's own partitioning, one collective per layout.
        del axis_size
        axes = [0 if b else None for b in in_batched]
        return jax.vmap(functools.partial(_stacked, p), in_axes=axes)(*leaves), True

    # Nor a differentiation rule: tangents come from the plain reductions.
    @jax.custom_jvp
    def differentiable(*leaves: jax.Array) -> jax.Array:
        return combined(*leaves)

    @differentiable.defjvp
    def _jvp(primals: Sequence[jax.Array], tangents: Sequence[jax.Array]) -> Any:
        _, tangent = jax.jvp(functools.partial(_stacked, p), tuple(primals), tuple(tangents))
        return differentiable(*primals), tangent

    return differentiable


# Leaves per native call (as in `flatten`: long operand lists compile slowly).
_CHUNK = 16
# Larger leaves are summed by XLA: its vectorized float32 reduction outruns
# the kernel's float64 one, and a few large leaves cost little to compile.
_NATIVE_MAX = 1 << 16


def native_partials(leaves: Sequence[jax.Array], p: float) -> jax.Array | None:
    """`partial_sum` of every leaf as one vector, small leaves by native calls on a one-device CPU.

    None where the kernel does not apply (several devices, no compiler, a p
    other than 1, 2 and inf, leaves other than float32 and float64); a
    program lowered off a CPU runs XLA's sums instead. The
    kernel's sums accumulate in float64, so they may differ from XLA's in the
    last bits.
    """
    out_dtype = jnp.dtype(float_dtype())
    dtypes = {jnp.dtype(x.dtype) for x in leaves}
    if (
        not leaves
        or p not in (1, 2, math.inf)
        or not dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)}
        or any(jnp.promote_types(d, out_dtype) != out_dtype for d in dtypes)
        # With several devices the leaves may be sharded: `leaf_partials`
        # sums them in one all-reduce, which the kernel's XLA twin would not.
        or jax.device_count() != 1
        or not _native.available()
    ):
        return None
    kind = 0 if p == math.inf else int(p)

    def call(xs: list[jax.Array]) -> jax.Array:
        return jax.ffi.ffi_call(
            _native.NORMS,
            jax.ShapeDtypeStruct((len(xs),), out_dtype),
            vmap_method="sequential",
        )(*xs, kind=np.int64(kind))

    def native(chunks: list[list[jax.Array]]) -> list[jax.Array]:
        return [call(xs) for xs in chunks]

    def xla(chunks: list[list[jax.Array]]) -> list[jax.Array]:
        return [jnp.stack([partial_sum(x, p) for x in xs]) for xs in chunks]

    # Runs of small leaves of one dtype go to the kernel; a large leaf keeps
    # XLA's reduction, which is faster there and costs one loop to compile.
    parts: list[jax.Array | None] = []
    chunks: list[list[jax.Array]] = []
    chunk: list[jax.Array] = []
    for x in [*leaves, None]:
        small = x is not None and x.size <= _NATIVE_MAX
        if chunk and (not small or x.dtype != chunk[0].dtype or len(chunk) == _CHUNK):
            chunks.append(chunk)
            parts.append(None)
            chunk = []
        if small:
            chunk.append(x)
        elif x is not None:
            parts.append(partial_sum(x, p)[None])
    # One formulation for every chunk: XLA's is traced only off a CPU.
    sums = iter(_native.on_cpu(native, xla)(chunks) if chunks else [])
    return jnp.concatenate([next(sums) if part is None else part for part in parts])


def leaf_partials(leaves: Sequence[jax.Array], p: float) -> list[jax.Array]:
    """`partial_sum` of every leaf, complete over all of its shards (float32 or wider)."""
    if not leaves:
        return []
    if jax.device_count() == 1:
        # Nothing can be sharded: the plain reductions, no custom call at all.
        return [partial_sum(x, p) for x in leaves]
    stacked = _combined(p)(*leaves)
    return [stacked[i] for i in range(len(leaves))]
