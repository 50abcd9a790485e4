"""ZeRO-1: `shard_state` partitions the optimizer state over a data-parallel mesh axis."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, final

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._base import CHILD, STR, Transformation, field
from ._sharding import buffer_owners, constrain, gathered, known_sharding, zero_spec

__all__ = ["shard_state"]


@final
@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class shard_state(Transformation):
    """ZeRO-1: partition the optimizer state over a data-parallel mesh axis.

    Data parallelism replicates the parameters on every device of the `axis`
    axis, and with them, by default, the optimizer state. Wrapped in
    `shard_state`, each per-parameter buffer is split along its largest
    dimension that the axis size divides (a buffer with none stays
    replicated), so each device keeps ``1 / mesh.shape[axis]`` of the state.
    In the compiled step each device updates its slice of the state from its
    slice of the gradients (slicing a replicated array costs no
    communication), and the parameter updates are all-gathered back to the
    parameters' layout. The numerics are those of the wrapped optimizer.

    Parameters already sharded over other mesh axes keep that sharding and
    are split over `axis` too when a dimension allows it. Under `jit` with
    Auto mesh axes the parameters' layout is not known while tracing, so
    their other dimensions are left to XLA; pass
    ``out_shardings=O.state_shardings(opt, params)`` to pin them.

    It must be the outermost transformation (``shard_state(chain(...))``).
    Its state is the wrapped optimizer's, with the same structure, and its
    `to_config` is the wrapped optimizer's (a mesh has no JSON form):
    checkpoints with and without it are interchangeable; restore with
    ``shardings={"opt_state": O.state_shardings(opt, params)}``.

    Args:
        tx: the optimizer to partition (any cadence or optax transformation).
        mesh: the device mesh.
        axis: the data-parallel axis of `mesh` to partition over.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> opt = O.shard_state(O.adamw(1e-3), mesh, axis="data")
        >>> params = {"w": jnp.ones((4, 2))}
        >>> updates, state = opt.update(params, opt.init(params), params)
        >>> O.from_config(opt.to_config()) == opt.tx
        True
    """

    tx: Any = field(CHILD)
    mesh: Any = field("mesh")
    axis: str = field(STR, "data")

    def _validate(self) -> None:
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"shard_state: mesh must be a jax.sharding.Mesh, got {self.mesh!r}")
        if self.axis not in self.mesh.axis_names:
            raise ValueError(
                f"shard_state: axis {self.axis!r} is not an axis of the mesh "
                f"(axes: {', '.join(map(repr, self.mesh.axis_names))})"
            )

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def _sharding_for(self, shape: tuple[int, ...], param: Any) -> NamedSharding:
        """A buffer's sharding, for a parameter with sharding `param` (None: not known here)."""
        spec = None
        if isinstance(param, NamedSharding):
            if dict(param.mesh.shape) != dict(self.mesh.shape):
                raise ValueError(
                    f"shard_state: a parameter is on mesh {dict(param.mesh.shape)}, not on "
                    f"shard_state's mesh {dict(self.mesh.shape)}"
                )
            spec = param.spec
        elif param is not None:
            spec = P()  # a single-device or other parameter: treated as replicated
        return NamedSharding(self.mesh, zero_spec(tuple(shape), spec, self.mesh, self.axis))

    def update(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        # Two layouts pin the step: the new state keeps its partitioned layout
        # and the updates take the parameters' layout. Between them XLA's
        # propagation runs the elementwise math on each device's slice
        # (slicing a replicated gradient is free) and all-gathers the updates.
        # A layout this trace cannot see (Auto mesh axes) is the one `init`
        # chose from the shape: split along the same dimension, the other
        # dimensions left to XLA.
        old, treedef = jax.tree.flatten(state)
        owners = buffer_owners(state, updates)
        out, state = self.tx.update(updates, state, params, **extra)
        new, new_treedef = jax.tree.flatten(state)
        if new_treedef == treedef:
            placed = []
            for x, o, i in zip(new, old, owners, strict=True):
                if i is None:
                    placed.append(constrain(x, NamedSharding(self.mesh, P())))
                elif np.shape(x) == np.shape(o):
                    placed.append(self._pin(x, known_sharding(o), lambda spec: spec))
                else:
                    placed.append(x)
            new = placed
        outs, gdef = jax.tree.flatten(out)
        refs = gdef.flatten_up_to(updates if params is None else params)
        to_gathered = functools.partial(gathered, axis=self.axis)
        out = gdef.unflatten(
            [self._pin(u, known_sharding(r), to_gathered) for u, r in zip(outs, refs, strict=True)]
        )
        return out, new_treedef.unflatten(new)

    def _pin(self, x: Any, known: Any, guess: Callable[[P], P]) -> Any:
        """`x` on its `known` sharding, or on the guess made from its shape."""
        if known is not None:
            return constrain(x, known)
        if not isinstance(x, jax.core.Tracer):
            return x
        spec = zero_spec(np.shape(x), None, self.mesh, self.axis)
        return constrain(x, NamedSharding(self.mesh, guess(spec)))

    def to_config(self) -> dict[str, Any]:
        """The wrapped optimizer's config: the partitioning is placement, not numerics."""
        return self.tx.to_config()

    def _config(self, where: str) -> dict[str, Any]:
        return self.tx._config(where)

    def __repr__(self) -> str:
        return f"shard_state({self.tx!r}, mesh={self.mesh!r}, axis={self.axis!r})"


jax.tree_util.register_dataclass(shard_state, data_fields=["tx"], meta_fields=["mesh", "axis"])
