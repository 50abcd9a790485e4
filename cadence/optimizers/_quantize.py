"""8-bit blockwise optimizer state: bitsandbytes' dynamic maps and its CPU rounding.

A moment of a leaf with at least `MIN_SIZE` elements is stored as one uint8
code per element and one float32 absmax per block of `BLOCK` consecutive
elements (row-major, the last block possibly short): the value of an element
is ``code_map[code] * absmax[block]``. The maps are bitsandbytes'
``create_dynamic_map``: signed for moments of either sign (a first moment),
unsigned for non-negative ones (a second moment, a sum of squares), with most
of their 256 values packed near zero.

Rounding follows bitsandbytes' CPU quantizer (``quantize_blockwise`` on CPU,
which `Adam8bit` and `AdamW8bit` call there): the value divided by its block's
absmax (a product with the reciprocal) is first rounded to a grid of 65536
points over [-1, 1], and that point to the nearest code (ties to the lower).
Through the grid, values within 1.5e-5 of the absmax land on the code nearest
+-1.5e-5 (a zero first moment becomes 2.1e-5 of its block's absmax, as in
bitsandbytes), where the nearest code would be closer. A block whose absmax is
0 stores code 0.

The lowest layer of the optimizers package with `_trees`: it imports nothing
of cadence.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

__all__ = ["BLOCK", "MIN_SIZE", "Quantized", "dequantize", "dynamic_map", "quantize"]

BLOCK = 256  # elements per absmax (bitsandbytes' blockwise optimizers)
MIN_SIZE = 4096  # smaller leaves keep float32 state (bitsandbytes' min_8bit_size)
EIGHT_BIT = "8bit"  # the `state_dtype` that selects this storage

_GRID = 65536  # points of bitsandbytes' CPU rounding grid over [-1, 1]


class Quantized(NamedTuple):
    """One leaf's 8-bit buffer: a code per element, a float32 absmax per block of 256."""

    codes: jax.Array  # uint8, the leaf's shape
    absmax: jax.Array  # float32, (ceil(size / 256),)


def is_quantized(x: Any) -> bool:
    return isinstance(x, Quantized)


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32 on CPU: each half from its end, with one rounding (FMA)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    # float64 holds step * i exactly; the sum rounds once, as the fused multiply-add.
    low = (np.float64(start32) + np.float64(step) * i).astype(np.float32)
    high = (np.float64(end32) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
    return np.where(i < steps // 2, low, high)


@functools.cache
def dynamic_map(signed: bool) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map(signed)`` (7 exponent bits, 8 bits): 256 sorted float32.

    Each decade 10^-6 .. 10^0 holds the midpoints of an even split of
    [0.1, 1] (twice as many for the unsigned map, which has no negative
    half), in float32 as bitsandbytes computes them with torch; then 0 and 1.

    Example:
        >>> from cadence.optimizers._quantize import dynamic_map
        >>> m = dynamic_map(signed=True)
        >>> m.shape, float(m[0]), float(m[-1]), float(dynamic_map(signed=False)[0])
        ((256,), -0.992968738079071, 1.0, 0.0)
    """
    values: list[np.ndarray] = []
    for i in range(7):
        bounds = _linspace(0.1, 1.0, 2**i + 1 if signed else 2 ** (i + 1) + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2)
        scale = np.float32(10.0 ** (i - 6))
        values.append(scale * means)
        if signed:
            values.append(-scale * means)
    values.append(np.array([0.0, 1.0], np.float32))
    out = np.sort(np.concatenate(values).astype(np.float32))
    out.setflags(write=False)
    return out


@functools.cache
def _grid_codes(signed: bool) -> np.ndarray:
    """The code of each point of the rounding grid: the nearest code to its value (ties lower)."""
    codes = dynamic_map(signed)
    midpoints = np.float32(0.5) * (codes[:-1] + codes[1:])
    points = np.float32(-1.0) + (np.float32(2.0) * np.arange(_GRID, dtype=np.float32)) / np.float32(
        _GRID - 1
    )
    out = np.searchsorted(midpoints, points, side="left").astype(np.uint8)  # midpoints below
    out.setflags(write=False)
    return out


def _explicit_spec(x: jax.Array) -> P | None:
    """The partitioning `x`'s type carries on a mesh with Explicit axes, else None.

    Blocks run over the flattened leaf, a reshape that Explicit sharding
    types cannot express: such a leaf is blocked replicated, and its codes
    put back on its layout. Under Auto axes XLA lays the blocks out itself.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or not any(t == AxisType.Explicit for t in mesh.axis_types):
        return None
    return sharding.spec if any(e is not None for e in sharding.spec) else None


def quantize(x: jax.Array, signed: bool) -> Quantized:
    """`x` (float32) as codes of `dynamic_map(signed)` and a float32 absmax per block of 256."""
    x = jnp.asarray(x, jnp.float32)
    values = x
    spec = _explicit_spec(x)
    if spec is not None:
        x = jax.sharding.reshard(x, P())
    n = x.size
    blocks = -(-n // BLOCK)
    flat = jnp.pad(x.reshape(-1), (0, blocks * BLOCK - n)).reshape(blocks, BLOCK)
    absmax = jnp.max(jnp.abs(flat), axis=1)
    zero = absmax == 0
    inverse = 1.0 / jnp.where(zero, 1.0, absmax)
    scaled = jnp.clip(flat * inverse[:, None], -1.0, 1.0)
    point = jnp.floor((scaled + 1.0) * 0.5 * np.float32(_GRID - 1) + 0.5).astype(jnp.int32)
    code = jnp.asarray(_grid_codes(signed))[point]
    code = jnp.where(zero[:, None], jnp.uint8(0), code).reshape(-1)[:n].reshape(x.shape)
    if spec is not None:
        code = jax.sharding.reshard(code, spec)
    elif isinstance(code, jax.core.Tracer):
        # Under Auto axes the flattening hides the leaf's layout from XLA's
        # propagation: the codes are tied to the values they encode.
        code, _ = shard_alike(code, values)
    return Quantized(code, absmax)


def dequantize(q: Quantized, signed: bool) -> jax.Array:
    """The float32 values of a `Quantized` buffer: ``code_map[codes] * absmax`` by block."""
    codes = q.codes
    spec = _explicit_spec(codes)
    if spec is not None:
        codes = jax.sharding.reshard(codes, P())
    n = codes.size
    blocks = q.absmax.shape[0]
    values = jnp.asarray(dynamic_map(signed))[codes.reshape(-1).astype(jnp.int32)]
    values = jnp.pad(values, (0, blocks * BLOCK - n)).reshape(blocks, BLOCK)
    out = (values * q.absmax[:, None]).reshape(-1)[:n].reshape(codes.shape)
    return out if spec is None else jax.sharding.reshard(out, spec)


def stores_8bit(shape: tuple[int, ...]) -> bool:
    """Whether a leaf of `shape` keeps 8-bit state (bitsandbytes' ``min_8bit_size``)."""
    return int(np.prod(shape, dtype=np.int64)) >= MIN_SIZE
