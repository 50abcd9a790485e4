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
kernels of `Optimizer.step`, reading each leaf's buffers at its offset).
Elsewhere, and for a vector with a leaf that has no kernel, XLA slices each
leaf's buffers out of the old vectors and writes the new ones into new
vectors (`_assemble`). On a CPU that program is slow (a copy of the donated
vectors, a fresh vector written per step, and one loop compiled per leaf
offset: 4.2x optax's AdamW step on a 148-leaf tree, 18 s to compile), so
`flatten` pays off only where its kernels run.
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
from ._leaf import leaf_fits, native_call, native_kernel, xla_leaf_step
from ._optimizer import Optimizer
from ._trees import is_traced

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


def _assemble(like: jax.Array, pieces: Sequence[jax.Array], offsets: Sequence[int]) -> jax.Array:
    """A new vector like `like` holding ``pieces[i].ravel()`` from ``offsets[i]``.

    XLA's formulation of the whole vector's update: every piece is computed
    from the old vector, and written into a new one (in place, one after the
    other). Writing into the old vector instead would make XLA keep its old
    values with a copy of the whole vector per leaf, since the fused loops
    that read them are scheduled after the writes. Two-byte floats are
    written as bits: XLA's CPU backend would compute a bfloat16 update in
    float32, a pass over the whole vector each.
    """
    bits = jnp.uint16 if like.dtype.itemsize == 2 else like.dtype
    out = jnp.zeros(like.shape, bits)
    for x, offset in zip(pieces, offsets, strict=True):
        x = jax.lax.bitcast_convert_type(x.ravel(), bits)
        out = jax.lax.dynamic_update_slice(out, x, (offset,))
    return jax.lax.bitcast_convert_type(out, like.dtype)


def _xla_flat_leaf(
    opt: Optimizer,
    order: tuple[str, ...],
    p: jax.Array,
    g: jax.Array,
    vectors: list[jax.Array],
    s: dict[str, Any],
    offset: Any,
    decay: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`xla_leaf_step` on the leaf's slices of `vectors`: its new parameter and buffers."""
    bufs = {n: _slice(v, offset, p.shape) for n, v in zip(order, vectors, strict=True)}
    return xla_leaf_step(opt, p, g, bufs, s, decay)


@transformation_type
class flatten(Transformation):
    """Keep `tx`'s per-parameter buffers as one vector per dtype: fast steps on many small leaves.

    The numbers are `tx`'s, bit for bit; only the state's layout changes: each
    buffer field (``mu``, ``nu``, ...) is a dict ``{dtype name: vector}``
    holding every leaf's buffer in tree order. Parameters and gradients stay
    as they are. A jitted step then passes two arrays per leaf instead of
    four (AdamW), which on a CPU is most of the step's time for models with
    thousands of small leaves, and compiles several times faster. Use it with
    `step` on a CPU, for float32 or float64 parameters, where its kernels run
    (`update`, and `step` elsewhere, work through slices of the vectors and
    are several times slower than `tx` on a CPU).

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
        if not (self.tx.state_dtype is None or isinstance(self.tx.state_dtype, str)):
            # One vector per dtype holds every buffer of a leaf in one dtype.
            raise TypeError(
                f"flatten: {type(self.tx).__name__}'s state_dtype by buffer "
                f"({self.tx.state_dtype}) cannot be packed; give one dtype for every buffer"
            )
        if self.tx.state_dtype == "8bit":
            raise TypeError(
                f"flatten: {type(self.tx).__name__}'s 8-bit state (codes and block scales) "
                "cannot be packed into vectors; leave it unflattened"
            )
        if self.tx.reduced:
            # Each leaf's buffers are packed as slices of its parameter's size.
            raise TypeError(
                f"flatten: {type(self.tx).__name__} keeps buffers not shaped like their "
                f"parameters ({', '.join(self.tx.reduced)}), which flatten cannot pack"
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
        """`new` (per-leaf buffers) packed into vectors like `old`'s."""
        fields = {}
        for name in self.tx._buffer_names():
            vectors = getattr(old, name)
            if vectors is None:
                continue
            pieces: dict[str, list[jax.Array]] = {k: [] for k in vectors}
            offsets: dict[str, list[int]] = {k: [] for k in vectors}
            for x, seg, off in zip(
                jax.tree.leaves(getattr(new, name)), layout.segments, layout.offsets, strict=True
            ):
                pieces[seg].append(x)
                offsets[seg].append(off)
            fields[name] = {k: _assemble(v, pieces[k], offsets[k]) for k, v in vectors.items()}
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
        if not is_traced((grads, state, params)):
            # Eagerly compiled, as `Optimizer.step` is: the same rounding as a jitted step.
            return _compiled_step(self, grads, state, params)
        return self._step(grads, state, params, None)

    def _chunks(
        self,
        run: Any,
        order: tuple[str, ...],
        ks: list[int],
        ps: list[jax.Array],
        gs: list[jax.Array],
        groups: list[dict],
    ) -> list[tuple[Any, int, list[int]]] | None:
        """The native calls for the leaves `ks` of one vector, or None if one has no kernel.

        Each call takes up to `_CHUNK` consecutive leaves of one group.
        """
        if not order:
            return None  # without buffers XLA's loop is a single pass already
        chunks: list[tuple[Any, int, list[int]]] = []
        # Every leaf of a group shares its scalars: one kernel per group and dtypes.
        kernels: dict[tuple[Any, ...], Any] = {}
        for k in ks:
            i = run.index[k]
            bufs = {n: run.buffers[n][k] for n in order}
            if not leaf_fits(ps[k], gs[k], bufs):
                return None
            key = (i, ps[k].dtype, tuple(b.dtype for b in bufs.values()))
            if key not in kernels:
                dtypes = [bufs[n].dtype for n in order]
                kernels[key] = native_kernel(
                    self.tx, order, groups[i], run.decays[i], ps[k].dtype, dtypes
                )
            kernel = kernels[key]
            if kernel is None:
                return None
            if chunks and chunks[-1][:2] == (kernel, i) and len(chunks[-1][2]) < _CHUNK:
                chunks[-1][2].append(k)
            else:
                chunks.append((kernel, i, [k]))
        return chunks

    def _step(self, grads: Any, state: Any, params: Any, scale: jax.Array | None) -> Any:
        """`step` on ``grads * scale`` (a clipping coefficient that `chain` defers here)."""
        owner = "flatten.step"
        if params is None:
            raise TypeError(f"{owner}: params are required (step returns the new params)")
        inner, layout = self._check(owner, state, grads, params)
        treedef = jax.tree.structure(grads)
        opt = self.tx
        # Shapes stand in for the buffers: the kernels never slice the vectors.
        run = opt._prepare(owner, grads, self._views(inner, treedef, layout, abstract=True), params)
        order = tuple(run.present)
        vectors = {n: dict(getattr(inner, n)) for n in order}
        leaf = functools.partial(_xla_flat_leaf, opt, order)
        if run.traced:
            # Leaves of one shape share one trace (as in `Optimizer.update`).
            leaf = jax.jit(leaf, static_argnums=(5,))

        groups = run.scaled(scale)
        ps = [jnp.asarray(p) for p in run.params]
        gs = [jnp.asarray(g) for g in run.grads]
        out: list[Any] = [None] * len(run.grads)
        for seg in dict.fromkeys(layout.segments):
            ks = [k for k, name in enumerate(layout.segments) if name == seg]
            offsets = [layout.offsets[k] for k in ks]

            def xla(ps, gs, vecs, groups, ks=ks, offsets=offsets):
                new_ps, pieces = [], []
                for p, g, k in zip(ps, gs, ks, strict=True):
                    i = run.index[k]
                    p, new = leaf(p, g, vecs, groups[i], layout.offsets[k], run.decays[i])
                    new_ps.append(p)
                    pieces.append(new)
                vecs = [
                    _assemble(v, [new[n] for new in pieces], offsets)
                    for n, v in zip(order, vecs, strict=True)
                ]
                return new_ps, vecs

            chunks = self._chunks(run, order, ks, ps, gs, groups)
            args = ([ps[k] for k in ks], [gs[k] for k in ks], [vectors[n][seg] for n in order])
            if chunks is None:
                new_ps, vecs = xla(*args, groups)
            else:

                def native(ps, gs, vecs, groups, ks=ks, chunks=chunks):
                    ps, gs = dict(zip(ks, ps, strict=True)), dict(zip(ks, gs, strict=True))
                    for kernel, i, members in chunks:
                        updated, vecs = native_call(
                            kernel,
                            [ps[k] for k in members],
                            [gs[k] for k in members],
                            vecs,
                            groups[i],
                            [layout.offsets[k] for k in members],
                        )
                        ps.update(zip(members, updated, strict=True))
                    return [ps[k] for k in ks], vecs

                new_ps, vecs = _native.on_cpu(native, xla)(*args, groups)
            for k, p in zip(ks, new_ps, strict=True):
                out[k] = p
            for n, v in zip(order, vecs, strict=True):
                vectors[n][seg] = v

        new_inner = run.finish(inner, {})._replace(**vectors)
        return treedef.unflatten(out), FlattenState(new_inner)

    def __repr__(self) -> str:
        return f"flatten({self.tx!r})"


@jax.jit
def _compiled_step(opt: flatten, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
    """`flatten.step` of an eager call, compiled (one cached program per structure)."""
    return opt._step(grads, state, params, None)
