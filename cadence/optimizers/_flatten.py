"""`flatten`: an optimizer whose buffers are one vector per dtype instead of one array per leaf.

Every array that crosses a `jit` boundary costs: a few microseconds per
output each call on a CPU, and XLA's compile time grows faster than linearly
with the number of parameters and outputs of the program. An AdamW state
holds two arrays per parameter leaf, so on a model of thousands of small
leaves the step is mostly that boundary (benchmarks/README.md, shape (c)).
`flatten` keeps each buffer (``mu``, ``nu``, ...) as one vector per dtype, and
leaves the parameters and gradients alone: unlike ``optax.flatten`` it
concatenates nothing at each step.

`step` updates the vectors in place: on a one-device CPU, one native call per
run of up to `_CHUNK` consecutive leaves that share their scalars (the
kernels of `Optimizer.step`, reading each leaf's buffers at its offset);
elsewhere and for configurations without a kernel, XLA slices each leaf's
buffers out of the vectors and writes them back with
``dynamic_update_slice``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _native
from ._base import CHILD, Transformation, check_tree, dtype_of, field, path_str, transformation_type
from ._optimizer import (
    Optimizer,
    native_call,
    native_fits,
    native_kernel,
    xla_leaf_step,
)

__all__ = ["FlattenState", "flatten"]

# Leaves per native call. One call per leaf makes XLA compile a chain of
# thousands of in-place calls through the same vectors, which grows
# quadratically; large groups give calls with hundreds of operands, which
# compile slowly too. 16 was the fastest to compile at 1000-5000 leaves.
_CHUNK = 16


class FlattenState(NamedTuple):
    """`flatten` state: the inner optimizer's state, each buffer a dict ``{dtype name: vector}``."""

    inner: Any


class _Layout(NamedTuple):
    """Where each leaf's buffers live: the vector's dtype name and the offset in it."""

    shapes: list[tuple[int, ...]]
    segments: list[str]
    offsets: list[int]
    sizes: dict[str, int]


def _layout(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any]) -> _Layout:
    """Leaves packed in tree order into one vector per buffer dtype."""
    segments, offsets, sizes = [], [], {}
    for shape, dtype in zip(shapes, dtypes, strict=True):
        name = jnp.dtype(dtype).name
        segments.append(name)
        offsets.append(sizes.get(name, 0))
        sizes[name] = sizes.get(name, 0) + int(np.prod(shape, dtype=np.int64))
    return _Layout([tuple(s) for s in shapes], segments, offsets, sizes)


def _slice(v: jax.Array, offset: Any, shape: tuple[int, ...]) -> jax.Array:
    """A leaf's buffer: ``prod(shape)`` elements of `v` from `offset`."""
    return jax.lax.dynamic_slice(v, (offset,), (math.prod(shape),)).reshape(shape)


def _xla_flat_leaf(
    opt: Optimizer,
    order: tuple[str, ...],
    p: jax.Array,
    g: jax.Array,
    vectors: list[jax.Array],
    s: dict[str, Any],
    offset: Any,
    decay: bool,
) -> tuple[jax.Array, list[jax.Array]]:
    """`xla_leaf_step` on the leaf's slices of `vectors`, written back in place."""
    bufs = {n: _slice(v, offset, p.shape) for n, v in zip(order, vectors, strict=True)}
    p, new = xla_leaf_step(opt, p, g, bufs, s, decay)
    vectors = [
        jax.lax.dynamic_update_slice(v, new[n].ravel(), (offset,))
        for n, v in zip(order, vectors, strict=True)
    ]
    return p, vectors


@transformation_type
class flatten(Transformation):
    """Keep `tx`'s per-parameter buffers as one vector per dtype: fast steps on many small leaves.

    The numbers are `tx`'s, bit for bit; only the state's layout changes: each
    buffer field (``mu``, ``nu``, ...) is a dict ``{dtype name: vector}``
    holding every leaf's buffer in tree order. Parameters and gradients stay
    as they are. A jitted step then passes two arrays per leaf instead of
    four (AdamW), which on a CPU is most of the step's time for models with
    thousands of small leaves, and compiles several times faster. Use it with
    `step` (`update` works, through slices of the vectors).

    The vectors are replicated, not sharded like the parameters: `init`
    refuses parameters split over several devices (leave those unflattened).

    Args:
        tx: a cadence optimizer (`sgd`, `adam`, `adamw`, `rmsprop`,
            `adagrad`, `lion`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.flatten(O.adamw(0.1))
        >>> params = {"b": jnp.zeros(2), "w": jnp.ones((2, 2))}
        >>> state = opt.init(params)
        >>> state.inner.mu["float32"].shape
        (6,)
        >>> params, state = jax.jit(opt.step)(params, state, params)
        >>> params["w"][0]
        Array([0.899, 0.899], dtype=float32)
    """

    tx: Any = field(CHILD)

    def _validate(self) -> None:
        if not isinstance(self.tx, Optimizer):
            raise TypeError(
                f"flatten: tx must be a cadence optimizer (sgd, adam, adamw, rmsprop, adagrad, "
                f"lion), got {type(self.tx).__name__}"
            )

    # -------------------------------------------------------------- layout

    def _buffer_dtypes(self, leaves: Sequence[Any]) -> list[Any]:
        return [self.tx.state_dtype or dtype_of(p) for p in leaves]

    def _check(self, owner: str, state: Any, grads: Any, params: Any) -> tuple[Any, _Layout]:
        """The inner state and the layout of `state`'s vectors, checked against the leaves."""
        if not isinstance(state, FlattenState) or not isinstance(state.inner, self.tx.State):
            raise TypeError(
                f"{owner}: expected a FlattenState around a {self.tx.State.__name__}, got "
                f"{type(state).__name__}; call init first"
            )
        if params is not None:
            check_tree(owner, grads, params, "params")
        leaves = jax.tree.leaves(params if params is not None else grads)
        dtypes = self._buffer_dtypes(leaves)
        if params is None:
            # The gradients' dtypes need not be the parameters': a state with
            # one vector per buffer holds every leaf there.
            kinds = {k for n in self.tx._buffer_names() for k in (getattr(state.inner, n) or {})}
            if len(kinds) == 1:
                dtypes = [kinds.pop()] * len(leaves)
        layout = _layout([jnp.shape(x) for x in leaves], dtypes)
        for name in self.tx._buffer_names():
            vectors = getattr(state.inner, name)
            if vectors is None:
                continue
            found = {k: tuple(jnp.shape(v)) for k, v in vectors.items()}
            if found != {k: (n,) for k, n in layout.sizes.items()}:
                raise ValueError(
                    f"{owner}: the state's {name!r} vectors {found} do not fit these parameters "
                    f"({layout.sizes} elements by dtype); call init again"
                )
        return state.inner, layout

    def _views(self, inner: Any, treedef: Any, layout: _Layout, abstract: bool = False) -> Any:
        """`inner` with each buffer as per-leaf slices of its vectors (or their shapes)."""
        fields = {}
        for name in self.tx._buffer_names():
            vectors = getattr(inner, name)
            if vectors is None:
                continue
            leaves = []
            for shape, seg, off in zip(layout.shapes, layout.segments, layout.offsets, strict=True):
                v = vectors[seg]
                if abstract:
                    leaves.append(jax.ShapeDtypeStruct(shape, v.dtype))
                else:
                    leaves.append(_slice(v, off, shape))
            fields[name] = treedef.unflatten(leaves)
        return inner._replace(**fields)

    def _pack(self, old: Any, new: Any, layout: _Layout) -> Any:
        """`new` (per-leaf buffers) written into `old`'s vectors, in place."""
        fields = {}
        for name in self.tx._buffer_names():
            vectors = getattr(old, name)
            if vectors is None:
                continue
            vectors = dict(vectors)
            for x, seg, off in zip(
                jax.tree.leaves(getattr(new, name)), layout.segments, layout.offsets, strict=True
            ):
                vectors[seg] = jax.lax.dynamic_update_slice(vectors[seg], x.ravel(), (off,))
            fields[name] = vectors
        return new._replace(**fields)

    # ----------------------------------------------------------------- API

    def _check_shardings(self, params: Any) -> None:
        """Refuse parameters split over several devices (their state would be gathered)."""
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            sharding = getattr(p, "sharding", None)
            if (
                isinstance(p, jax.Array)
                and not isinstance(p, jax.core.Tracer)
                and len(sharding.device_set) > 1
                and not sharding.is_fully_replicated
            ):
                raise ValueError(
                    f"flatten: params at {path_str(path)!r} are split over "
                    f"{len(sharding.device_set)} devices; flatten keeps the state in replicated "
                    "vectors, which would gather them (leave sharded parameters unflattened)"
                )

    def init(self, params: Any) -> FlattenState:
        """The inner optimizer's initial state, its buffers packed into vectors."""
        self._check_shardings(params)
        inner = self.tx.init(params)
        leaves = jax.tree.leaves(params)
        layout = _layout([jnp.shape(p) for p in leaves], self._buffer_dtypes(leaves))
        fields = {}
        for name in self.tx._buffer_names():
            buffers = getattr(inner, name)
            if buffers is None:
                continue
            parts: dict[str, list[jax.Array]] = {k: [] for k in layout.sizes}
            for b, seg in zip(jax.tree.leaves(buffers), layout.segments, strict=True):
                parts[seg].append(jnp.ravel(b))
            fields[name] = {k: jnp.concatenate(v) for k, v in parts.items()}
        return FlattenState(inner._replace(**fields))

    def update(
        self, updates: Any, state: Any, params: Any = None, **extra: Any
    ) -> tuple[Any, FlattenState]:
        """`tx.update` on slices of the vectors; the new buffers are written back in place."""
        inner, layout = self._check("flatten.update", state, updates, params)
        treedef = jax.tree.structure(updates)
        views = self._views(inner, treedef, layout)
        deltas, new = self.tx.update(updates, views, params, **extra)
        return deltas, FlattenState(self._pack(inner, new, layout))

    def step(self, grads: Any, state: Any, params: Any, **extra: Any) -> tuple[Any, FlattenState]:
        """`tx.step` with the buffers updated in place in their vectors.

        Example:
            >>> import jax.numpy as jnp
            >>> from cadence import optimizers as O
            >>> opt = O.flatten(O.sgd(0.5, momentum=0.9))
            >>> params = [jnp.ones(2), jnp.ones(1)]
            >>> params, state = opt.step([jnp.ones(2), jnp.ones(1)], opt.init(params), params)
            >>> params[1], state.inner.momentum_buffer["float32"]
            (Array([0.5], dtype=float32), Array([1., 1., 1.], dtype=float32))
        """
        del extra
        return self._step(grads, state, params, None)

    def _step(self, grads: Any, state: Any, params: Any, scale: jax.Array | None) -> Any:
        """`step` on ``grads * scale`` (a clipping coefficient that `chain` defers here)."""
        owner = "flatten.step"
        if params is None:
            raise TypeError(f"{owner}: params are required (step returns the new params)")
        inner, layout = self._check(owner, state, grads, params)
        gleaves, treedef = jax.tree.flatten(grads)
        opt = self.tx
        # Shapes stand in for the buffers: the kernels never slice the vectors.
        run = opt._prepare(owner, grads, self._views(inner, treedef, layout, abstract=True), params)
        order = tuple(run.present)
        vectors = {n: dict(getattr(inner, n)) for n in order}
        leaf = functools.partial(_xla_flat_leaf, opt, order)
        if run.traced:
            # Leaves of one shape share one trace (as in `Optimizer.update`).
            leaf = jax.jit(leaf, static_argnums=(5,))

        def scalars(i: int) -> dict[str, Any]:
            return run.scalars[i] if scale is None else run.scalars[i] | {"grad_scale": scale}

        out: list[Any] = [None] * len(gleaves)
        # Consecutive leaves with one kernel, scalars and vector go in one call.
        chunks: list[tuple[Any, list[int]]] = []
        for k, (g, p, i) in enumerate(zip(run.grads, run.params, run.index, strict=True)):
            p, g, s = jnp.asarray(p), jnp.asarray(g), scalars(i)
            kernel = native_kernel(opt, order, s, run.decays[i])
            bufs = {n: run.buffers[n][k] for n in order}
            if kernel is not None and native_fits(p, g, bufs, s, kernel[1]):
                key = (kernel, i, layout.segments[k])
                if chunks and chunks[-1][0] == key and len(chunks[-1][1]) < _CHUNK:
                    chunks[-1][1].append(k)
                else:
                    chunks.append((key, [k]))
                continue
            # No kernel for this leaf: XLA's loops on its slices.
            seg = layout.segments[k]
            out[k], vecs = leaf(
                p, g, [vectors[n][seg] for n in order], s, layout.offsets[k], run.decays[i]
            )
            for n, v in zip(order, vecs, strict=True):
                vectors[n][seg] = v

        for (kernel, i, seg), ks in chunks:
            offsets = [layout.offsets[k] for k in ks]
            decay = run.decays[i]

            def native(ps, gs, vecs, s, kernel=kernel, offsets=offsets):
                return native_call(kernel, ps, gs, vecs, s, offsets)

            def xla(ps, gs, vecs, s, offsets=offsets, decay=decay):
                new_ps = []
                for p, g, off in zip(ps, gs, offsets, strict=True):
                    p, vecs = leaf(p, g, vecs, s, off, decay)
                    new_ps.append(p)
                return new_ps, vecs

            ps = [jnp.asarray(run.params[k]) for k in ks]
            gs = [jnp.asarray(run.grads[k]) for k in ks]
            new_ps, vecs = _native.on_cpu(native, xla)(
                ps, gs, [vectors[n][seg] for n in order], scalars(i)
            )
            for k, p in zip(ks, new_ps, strict=True):
                out[k] = p
            for n, v in zip(order, vecs, strict=True):
                vectors[n][seg] = v

        new_inner = run.finish(inner, {})._replace(**vectors)
        return treedef.unflatten(out), FlattenState(new_inner)

    def __repr__(self) -> str:
        return f"flatten({self.tx!r})"
