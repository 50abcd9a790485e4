"""One leaf's update: XLA's formulation, and the single-pass loop generated from it.

`leaf_update` runs an optimizer's `kernel` on one leaf in the compute dtype
(`update`); `xla_leaf_step` adds ``optax.apply_updates`` (`step` as XLA
compiles it); `leaf_step` replaces that, on a CPU, with one native loop that
reads and writes every array once, generated from the same program
(`native_kernel`, `_codegen`) and run through `_native`. `opt` is an
`Optimizer` (this module sits below it: it only calls ``opt.kernel``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _native
from ._base import compute_dtype
from ._codegen import Kernel, generate
from ._quantize import dequantize, is_quantized, quantize

__all__ = [
    "leaf_fits",
    "leaf_step",
    "leaf_update",
    "lerp",
    "native_call",
    "native_kernel",
    "torch_lerp",
    "xla_leaf_step",
]


def lerp(a: jax.Array, b: jax.Array, w: jax.Array) -> jax.Array:
    """torch's ``a.lerp_(b, w)`` for ``w < 0.5`` (its other formula differs only in rounding)."""
    return a + w * (b - a)


def torch_lerp(a: jax.Array, b: jax.Array, w: jax.Array) -> jax.Array:
    """torch's ``a.lerp(b, w)`` for any weight: it switches formulas at ``|w| = 0.5``.

    The second form makes ``w = 1`` give exactly `b` (Adafactor's first
    update, Muon's Nesterov blend with momentum 0.95).
    """
    return jnp.where(jnp.abs(w) < 0.5, a + w * (b - a), b - (b - a) * (1 - w))


def leaf_update(
    opt: Any,
    p: jax.Array | None,
    g: jax.Array,
    bufs: dict[str, jax.Array],
    s: dict[str, Any],
    out_dtype: jnp.dtype,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One leaf: the kernel in the compute dtype, results in the stored dtypes.

    An 8-bit buffer (`Quantized`) is dequantized before the kernel and
    quantized after it, and the update reads its new float32 value, before
    quantization: the
    order of bitsandbytes' 8-bit step (dequantize, update in float32,
    requantize).
    """
    dtype = compute_dtype(g.dtype)
    eight = {n: opt.eight_bit[n] == "signed" for n, b in bufs.items() if is_quantized(b)}
    stored = {n: jnp.dtype(jnp.float32) if n in eight else b.dtype for n, b in bufs.items()}

    def keep(name: str, x: jax.Array) -> jax.Array:
        # A buffer stored narrower than the math (bfloat16 moments) is used
        # as stored, as torch uses its bfloat16 ``exp_avg``: the parameter
        # loop then reads the new buffer instead of recomputing it from the
        # old one, which the buffer's own loop overwrites in place.
        return x.astype(stored[name]).astype(dtype) if stored[name] != dtype else x

    values = {n: dequantize(b, eight[n]) if n in eight else b for n, b in bufs.items()}
    pk = p.astype(dtype) if p is not None else None
    # The arrays arrive in the compute dtype; a rule that depends on the
    # parameter's own dtype (Adafactor's eps1=None: its machine epsilon) reads it here.
    s = {**s, "param_dtype": jnp.dtype(out_dtype)}
    u, new = opt.kernel(
        pk, g.astype(dtype), {n: b.astype(dtype) for n, b in values.items()}, s, keep
    )
    out = {n: quantize(new[n], eight[n]) if n in eight else new[n].astype(stored[n]) for n in bufs}
    return u.astype(out_dtype), out


def xla_leaf_step(
    opt: Any,
    p: jax.Array,
    g: jax.Array,
    bufs: dict[str, jax.Array],
    s: dict[str, Any],
    decay: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One leaf's new parameter and buffers as XLA computes them: `leaf_update` and the sum."""
    if "grad_scale" in s:
        # clip_by_global_norm's own arithmetic, which XLA fuses into the loops.
        g = (g.astype(compute_dtype(g.dtype)) * s["grad_scale"]).astype(g.dtype)
    u, new = leaf_update(opt, p if decay else None, g, bufs, s, p.dtype)
    # optax.apply_updates, leaf by leaf.
    return jnp.asarray(p + u).astype(p.dtype), new


def native_kernel(
    opt: Any,
    bufs: Sequence[str],
    s: dict[str, Any],
    decay: bool,
    dtype: Any,
    state_dtypes: Sequence[Any],
) -> Kernel | None:
    """The single-pass kernel for a leaf of `dtype` with buffers `bufs`, or None.

    Generated from the optimizer's own `kernel` (`_codegen`), once per
    configuration and process; None for an optimizer that is not
    elementwise or whose arithmetic has no exact C++ translation.
    """
    if not opt.elementwise:
        return None
    scalars = tuple((n, jnp.dtype(jnp.result_type(x))) for n, x in s.items() if jnp.shape(x) == ())
    key = (
        type(opt),
        jax.tree.structure(opt),
        tuple(bufs),
        decay,
        jnp.dtype(dtype),
        tuple(jnp.dtype(d) for d in state_dtypes),
        scalars,
    )
    if key not in _KERNELS:
        step = functools.partial(xla_leaf_step, opt, decay=decay)
        kernel = generate(step, dtype, list(zip(bufs, state_dtypes, strict=True)), dict(scalars))
        if kernel is not None:
            _native.register(kernel.target, kernel.symbol, kernel.source)
        _KERNELS[key] = kernel
    return _KERNELS[key]


# Generated kernels by optimizer configuration (see `native_kernel`).
_KERNELS: dict[tuple[Any, ...], Kernel | None] = {}


def native_call(
    kernel: Kernel,
    ps: Sequence[jax.Array],
    gs: Sequence[jax.Array],
    bufs: Sequence[jax.Array],
    s: dict[str, Any],
    offsets: Sequence[int],
) -> tuple[list[jax.Array], list[jax.Array]]:
    """The kernel on leaves `ps` whose buffers start at `offsets` in `bufs`: new params, buffers.

    Every parameter and buffer is updated in place (aliased to its input).
    """
    n, k = len(ps), len(kernel.scalars)
    outs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (*ps, *bufs)]
    # Inputs: scalars, params, grads, buffers.
    aliases = {k + i: i for i in range(n)} | {k + 2 * n + b: n + b for b in range(len(bufs))}
    call = jax.ffi.ffi_call(
        kernel.target, outs, input_output_aliases=aliases, vmap_method="sequential"
    )
    scalars = [s[name] for name in kernel.scalars]
    out = call(*scalars, *ps, *gs, *bufs, offsets=np.asarray(offsets, np.int64))
    return list(out[:n]), list(out[n:])


def leaf_step(
    opt: Any,
    p: jax.Array,
    g: jax.Array,
    bufs: dict[str, jax.Array],
    s: dict[str, Any],
    decay: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One leaf's new parameter and buffers: `xla_leaf_step`, or one native loop."""
    xla = functools.partial(xla_leaf_step, opt, decay=decay)
    # The kernels take the buffers in the state's field order (a dict that
    # went through jit comes back with sorted keys).
    order = tuple(n for n in opt._buffer_names() if n in bufs)
    if not order or not leaf_fits(p, g, bufs):
        # Without buffers XLA's one loop over (param, grad) is a single pass.
        return xla(p, g, bufs, s)
    kernel = native_kernel(opt, order, s, decay, p.dtype, [bufs[n].dtype for n in order])
    if kernel is None:
        return xla(p, g, bufs, s)

    def run(p, g, bufs, s):
        (p,), new = native_call(kernel, [p], [g], [bufs[n] for n in order], s, [0])
        return p, dict(zip(order, new, strict=True))

    return _native.on_cpu(run, xla)(p, g, bufs, s)


def leaf_fits(p: jax.Array, g: jax.Array, bufs: dict[str, jax.Array]) -> bool:
    """Whether a native kernel can take this leaf's arrays.

    The kernels take float32 and float64 parameters with buffers of their
    shape in float32, float64 or bfloat16. bfloat16 parameters stay with XLA:
    where the CPU converts bfloat16 in hardware, XLA's loops were the faster.
    Whether the program runs on one CPU device is decided where it is
    lowered (`_native.on_cpu`).
    """
    dtype = p.dtype
    if any(is_quantized(b) for b in bufs.values()):
        return False  # blockwise quantization is not elementwise: XLA's loops
    if dtype not in (jnp.float32, jnp.float64) or g.dtype != dtype or g.shape != p.shape:
        return False
    state = {jnp.dtype(jnp.float32), jnp.dtype(jnp.float64), jnp.dtype(jnp.bfloat16)}
    if any(b.dtype not in state or b.shape != p.shape for b in bufs.values()):
        return False
    return _native.available()
