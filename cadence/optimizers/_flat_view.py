"""All parameters as one vector, torch's flat view for `lbfgs` (``_gather_flat_grad``).

torch's LBFGS concatenates every parameter (and every gradient) into one
vector and adds steps to the parameters through views of it. `FlatView`
does the same for a parameter tree: leaves in `jax.tree.leaves` order, in
one dtype (the leaves' promoted, float32 at least). The vector joins leaves
of any layout, so it is replicated: under Explicit mesh axes each leaf is
resharded to replicated before it joins, and each leaf cut from the vector
goes back to its parameter's layout.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ._base import compute_dtype, dtype_of, path_str

__all__ = ["FlatView", "flat_layout"]


def flat_layout(owner: str, params: Any) -> tuple[jnp.dtype, int]:
    """The flat vector's dtype and length; refuses a leaf that is not floating-point."""
    dtypes, n = [], 0
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = dtype_of(p)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{owner}: params at {path_str(path)!r} have dtype {dtype}; "
                "lbfgs needs floating-point parameters"
            )
        dtypes.append(dtype)
        n += math.prod(np.shape(p))
    return compute_dtype(jnp.result_type(*dtypes) if dtypes else jnp.float32), n


def _explicit(x: Any) -> NamedSharding | None:
    """The layout a traced `x` carries in its type (Explicit mesh axes), else None."""
    if not isinstance(x, jax.core.Tracer):
        return None
    sharding = jax.typeof(x).sharding
    if sharding.mesh.empty or AxisType.Explicit not in sharding.mesh.axis_types:
        return None
    return sharding


def _replicated(x: jax.Array) -> jax.Array:
    sharding = _explicit(x)
    if sharding is None or all(s is None for s in sharding.spec):
        return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))


def _laid_out_like(x: jax.Array, p: Any) -> jax.Array:
    sharding = _explicit(p)
    if sharding is None or sharding == _explicit(x):
        return x
    return jax.sharding.reshard(x, sharding)


class FlatView:
    """The flat view of trees shaped like `params`, in `dtype`."""

    def __init__(self, params: Any, dtype: Any) -> None:
        self.leaves, self.treedef = jax.tree.flatten(params)
        self.dtype = dtype
        self.shapes = [np.shape(p) for p in self.leaves]

    def flatten(self, tree: Any) -> jax.Array:
        """One vector of the tree's leaves (parameters or gradients)."""
        leaves = self.treedef.flatten_up_to(tree)
        parts = [jnp.ravel(_replicated(jnp.asarray(x))).astype(self.dtype) for x in leaves]
        return jnp.concatenate(parts) if parts else jnp.zeros(0, self.dtype)

    def unflatten(self, x: jax.Array) -> Any:
        """The parameter tree a vector holds, each leaf in its parameter's dtype."""
        out, offset = [], 0
        for p, shape in zip(self.leaves, self.shapes, strict=True):
            size = math.prod(shape)
            out.append(x[offset : offset + size].reshape(shape).astype(dtype_of(p)))
            offset += size
        return self.treedef.unflatten(out)

    def deltas(self, x: jax.Array) -> Any:
        """What takes the parameters to the vector `x`, each in its parameter's layout."""
        new = self.treedef.flatten_up_to(self.unflatten(x))
        out = [_laid_out_like(a, p) - jnp.asarray(p) for a, p in zip(new, self.leaves, strict=True)]
        return self.treedef.unflatten(out)
