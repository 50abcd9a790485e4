"""Optimizer state placed like the parameters, `state_shardings`, and ZeRO-1's `shard_state`.

Every `init` of a cadence transformation goes through `placing` (applied by
`Transformation` to each subclass that defines ``init``), which places the
state it returns by three rules:

- a per-parameter buffer gets the sharding of its parameter. A buffer is
  recognised by the structure of the state, not by its name: a subtree with
  the parameters' tree structure and leaf shapes (moments, accumulators,
  gradient sums, an optax transformation's ``mu``) holds one buffer per
  parameter, in order;
- every other leaf (counts, norms, hyperparameter records) is replicated on
  the parameters' mesh;
- under `shard_state`, the per-parameter buffers are partitioned over a data
  axis instead (ZeRO-1).

How depends on where `init` runs. Eagerly, with parameters on several
devices, the whole `init` runs as one `jit` whose ``out_shardings`` are these
placements, so no buffer is ever built whole on one device. Under `jit` or
`eval_shape` with `Auto` mesh axes, a tracer does not know its sharding, so
each buffer is tied to its parameter with `shard_alike` and XLA's sharding
propagation gives it the parameter's layout (optax's ``zeros_like`` buffers
are constants with no tie to the parameters, which is why
``jax.jit(optax.adamw(1e-3).init)`` replicates them). With `Explicit` axes
the tracer's type carries the sharding, and buffers are `reshard`-ed to it.

Only the outermost `init` of a nest (a `chain`, a wrapper) places: the state
is complete there, and the inner `init` calls run as written.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType, Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P

from ._quantize import is_quantized
from ._trees import Leaves, path_str

__all__ = ["placing", "state_shardings", "zero_spec"]

# The transformation whose `init` is running outermost (None outside any init).
_OUTERMOST: contextvars.ContextVar[Any] = contextvars.ContextVar("cadence_init", default=None)

_U = P.UNCONSTRAINED


def _is_zero(opt: Any) -> bool:
    """Whether `opt` is a `shard_state` (ZeRO-1), which lays buffers out itself.

    Known by its `_sharding_for` method: this layer sits below the
    transformations and does not import them.
    """
    return callable(getattr(opt, "_sharding_for", None))


# --------------------------------------------------------------------------
# The hook on every `init`.


def placing(init: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Wrap a transformation's ``init`` so that the outermost call places its state."""

    @functools.wraps(init)
    def placed(self: Any, params: Any) -> Any:
        outer = _OUTERMOST.get()
        if outer is not None:
            if _is_zero(self):
                raise ValueError(
                    f"shard_state must be the outermost transformation, but it is inside "
                    f"{type(outer).__name__}: wrap the whole optimizer, e.g. "
                    "shard_state(chain(...), mesh)"
                )
            return init(self, params)
        token = _OUTERMOST.set(self)
        try:
            return _init_placed(self, functools.partial(init, self), params)
        finally:
            _OUTERMOST.reset(token)

    return placed


def _raw_init(opt: Any) -> Callable[[Any], Any]:
    """`opt.init` without the placement (for abstract evaluation)."""
    fn = type(opt).init
    return functools.partial(getattr(fn, "__wrapped__", fn), opt)


def _init_placed(opt: Any, init: Callable[[Any], Any], params: Any) -> Any:
    leaves = jax.tree.leaves(params)
    if any(isinstance(p, jax.core.Tracer) for p in leaves):
        return _place_traced(opt, init(params), params)
    spread = any(_is_spread(p) for p in leaves)
    if not spread and not _is_zero(opt):
        return init(params)
    # Inside the jit below the parameters are tracers, which carry no
    # sharding: transformations that depend on it check the arrays here.
    checks = jax.tree.leaves(opt, is_leaf=lambda x: hasattr(x, "_check_shardings"))
    for tx in checks:
        if hasattr(tx, "_check_shardings"):
            tx._check_shardings(params)
    param_shardings = [getattr(p, "sharding", None) for p in leaves]
    shardings = _shardings(opt, params, param_shardings)
    with _mesh_context(_mesh_of(opt, param_shardings)):
        return jax.jit(init, out_shardings=shardings)(params)


def _is_spread(x: Any) -> bool:
    """An array on a mesh of more than one device (or on other processes' devices)."""
    return (
        isinstance(x, jax.Array)
        and isinstance(x.sharding, NamedSharding)
        and len(x.sharding.device_set) > 1
    )


def _mesh_of(opt: Any, shardings: list[Any]) -> Mesh | None:
    """The mesh the state lives on: shard_state's, else the first parameter's."""
    if _is_zero(opt):
        return opt.mesh
    for sharding in shardings:
        if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh):
            return sharding.mesh
    return None


def _explicit(mesh: Any) -> bool:
    return mesh is not None and any(t == AxisType.Explicit for t in mesh.axis_types)


@contextlib.contextmanager
def _mesh_context(mesh: Mesh | None) -> Iterator[None]:
    """Explicit mesh axes need the mesh set while jit traces; Auto axes do not."""
    if _explicit(mesh) and jax.sharding.get_abstract_mesh().empty:
        with jax.set_mesh(mesh):
            yield
    else:
        yield


# --------------------------------------------------------------------------
# Which state leaves belong to which parameter.


def buffer_owners(state: Any, params: Any) -> list[int | None]:
    """For each leaf of `state`: the index of the parameter leaf it is a buffer of, or None."""
    pleaves, ptree = jax.tree.flatten(params)
    shapes = [np.shape(p) for p in pleaves]

    def per_param(x: Any) -> bool:
        # An 8-bit buffer (codes and block absmax) counts as one leaf of its
        # parameter's shape: its codes.
        if jax.tree.structure(x, is_leaf=is_quantized) != ptree:
            return False
        return all(
            _follows(np.shape(_codes(leaf)), shape)
            for leaf, shape in zip(jax.tree.leaves(x, is_leaf=is_quantized), shapes, strict=True)
        )

    # A `partition`'s transformations hold their leaves' buffers by path.
    index = {
        path_str(p): i for i, (p, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0])
    }

    def subset(x: Any) -> bool:
        return isinstance(x, Leaves) and all(
            k in index and _follows(np.shape(_codes(v)), shapes[index[k]]) for k, v in x.items()
        )

    owners: list[int | None] = []
    for unit in jax.tree.leaves(state, is_leaf=lambda x: per_param(x) or subset(x)):
        if per_param(unit):
            for i, leaf in enumerate(jax.tree.leaves(unit, is_leaf=is_quantized)):
                owners.extend([i] * len(jax.tree.leaves(leaf)))
        elif subset(unit):
            for k in sorted(unit):
                owners.extend([index[k]] * len(jax.tree.leaves(unit[k])))
        else:
            owners.append(None)
    return owners


def _codes(x: Any) -> Any:
    """An 8-bit buffer's codes (laid out like its parameter); any other buffer as it is."""
    return x.codes if is_quantized(x) else x


def _follows(shape: tuple[int, ...], param: tuple[int, ...]) -> bool:
    """Whether a buffer of `shape` can be laid out like a parameter of shape `param`.

    A buffer of the parameter's shape (a moment), a reduction of it with kept
    dimensions of size 1 (Adafactor's row and column moments), or an empty
    placeholder (a buffer this leaf does not use).
    """
    if math.prod(shape) == 0:
        return True
    return len(shape) == len(param) and all(d in (1, q) for d, q in zip(shape, param, strict=True))


def derived(sharding: Any, param: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """The layout of a buffer of `shape` owned by a parameter of shape `param` with `sharding`.

    A dimension the buffer shares with the parameter keeps the parameter's
    partitioning; a reduced (size-1) dimension, and an empty placeholder, are
    replicated.
    """
    if shape == param or not isinstance(sharding, NamedSharding):
        return sharding
    if math.prod(shape) == 0 or len(shape) != len(param):
        return NamedSharding(sharding.mesh, P())
    entries = list(sharding.spec) + [None] * (len(param) - len(sharding.spec))
    kept = [e if d == q else None for e, d, q in zip(entries, shape, param, strict=True)]
    return NamedSharding(sharding.mesh, P(*kept))


def _abstract_state(opt: Any, params: Any) -> Any:
    """The state's shapes and dtypes, from shapes and dtypes alone."""
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(np.shape(p), _dtype(p)), params)
    token = _OUTERMOST.set(opt)
    try:
        return jax.eval_shape(_raw_init(opt), abstract)
    finally:
        _OUTERMOST.reset(token)


def _dtype(p: Any) -> Any:
    return p.dtype if hasattr(p, "dtype") else jnp.result_type(p)


def _shardings(opt: Any, params: Any, param_shardings: list[Any]) -> Any:
    """The state's sharding tree, given the parameter leaves' shardings (None: none)."""
    state = _abstract_state(opt, params)
    leaves, treedef = jax.tree.flatten(state)
    owners = buffer_owners(state, params)
    mesh = _mesh_of(opt, param_shardings)
    if mesh is not None:
        other = NamedSharding(mesh, P())
    else:  # no mesh: single-device parameters; scalars go where the first one is
        other = next((s for s in param_shardings if s is not None), None)
    pshapes = [np.shape(p) for p in jax.tree.leaves(params)]
    out = []
    for x, i in zip(leaves, owners, strict=True):
        # A parameter without a sharding (a NumPy array, a number) is replicated.
        param = other if i is None or param_shardings[i] is None else param_shardings[i]
        if i is not None:
            param = derived(param, pshapes[i], tuple(x.shape))
        if i is not None and _is_zero(opt):
            out.append(opt._sharding_for(x.shape, param))
        else:
            out.append(param)
    return treedef.unflatten(out)


def state_shardings(opt: Any, param_shardings: Any) -> Any:
    """The shardings of ``opt.init(params)``'s state, for parameters with `param_shardings`.

    Per-parameter buffers (moments, accumulators) get their parameter's
    sharding, everything else (counts, hyperparameter records, norms) is
    replicated on the same mesh, and under `shard_state` the per-parameter
    buffers are partitioned over its data axis. Works for every optimizer,
    `chain` and wrapper, and for optax transformations inside them. Use it
    for ``jax.jit(opt.init, out_shardings=...)``, for a train step's
    ``in_shardings``/``out_shardings``, and for `cadence.checkpoint.restore`.

    Args:
        opt: the optimizer (any cadence transformation).
        param_shardings: a pytree with the parameters' structure whose leaves
            are shardings, or arrays / `jax.ShapeDtypeStruct`s carrying their
            sharding (then the shapes are exact, which `shard_state` needs).

    Returns:
        A pytree with the state's structure whose leaves are shardings.

    Raises:
        ValueError: for `shard_state` given bare shardings (it needs shapes).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import NamedSharding, PartitionSpec as P
        >>> from cadence import optimizers as O
        >>> mesh = jax.make_mesh((1,), ("model",))
        >>> sharding = NamedSharding(mesh, P("model"))
        >>> params = {"w": jax.device_put(jnp.zeros(4), sharding)}
        >>> shardings = O.state_shardings(O.adam(1e-3), params)
        >>> shardings.mu["w"] == sharding, shardings.count == NamedSharding(mesh, P())
        (True, True)
    """
    leaves, treedef = jax.tree.flatten(param_shardings)
    abstract, shardings = [], []
    for x in leaves:
        if isinstance(x, Sharding):
            if _is_zero(opt):
                raise ValueError(
                    "state_shardings: shard_state needs the parameters' shapes to choose how to "
                    "split their buffers; pass arrays or jax.ShapeDtypeStruct(shape, dtype, "
                    "sharding=...) instead of bare shardings"
                )
            abstract.append(jax.ShapeDtypeStruct(_placeholder_shape(x), jnp.float32))
            shardings.append(x)
        elif hasattr(x, "shape") and hasattr(x, "dtype"):
            abstract.append(jax.ShapeDtypeStruct(np.shape(x), x.dtype))
            shardings.append(getattr(x, "sharding", None))
        else:
            raise TypeError(
                f"state_shardings: param_shardings leaves must be shardings, arrays or "
                f"ShapeDtypeStructs, got {type(x).__name__}"
            )
    return _shardings(opt, treedef.unflatten(abstract), shardings)


def _placeholder_shape(sharding: Sharding) -> tuple[int, ...]:
    """A shape the sharding divides (its rank is all that matters without real shapes)."""
    if isinstance(sharding, NamedSharding):
        return tuple(math.prod(sharding.mesh.shape[a] for a in _names(e)) for e in sharding.spec)
    return ()


def _names(entry: Any) -> tuple[str, ...]:
    """The mesh axes in one PartitionSpec entry."""
    if entry is None or entry is _U:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


# --------------------------------------------------------------------------
# Placement under a trace.


def _place_traced(opt: Any, state: Any, params: Any) -> Any:
    pleaves = jax.tree.leaves(params)
    leaves, treedef = jax.tree.flatten(state)
    zero = opt if _is_zero(opt) else None
    out = []
    for x, i in zip(leaves, buffer_owners(state, params), strict=True):
        if not isinstance(x, jax.core.Tracer):
            out.append(x)
        elif i is None:
            out.append(constrain(x, NamedSharding(zero.mesh, P())) if zero else x)
        elif zero is not None:
            known = known_sharding(pleaves[i])
            if known is not None:
                known = derived(known, np.shape(pleaves[i]), x.shape)
            out.append(constrain(x, zero._sharding_for(x.shape, known)))
        elif x.shape != np.shape(pleaves[i]):
            # A reduced buffer cannot be tied to its parameter by shape; it
            # is placed where the parameter's layout is known here.
            p = pleaves[i]
            known = known_sharding(p) if isinstance(p, jax.core.Tracer) or _is_spread(p) else None
            out.append(x if known is None else constrain(x, derived(known, np.shape(p), x.shape)))
        else:
            out.append(_follow(x, pleaves[i]))
    return treedef.unflatten(out)


def known_sharding(p: Any) -> Any:
    """The sharding of `p` when it is known here, else None.

    A concrete array knows it; a tracer only under Explicit mesh axes (its
    type carries them); under Auto axes the layout is XLA's to choose.
    """
    if not isinstance(p, jax.core.Tracer):
        return getattr(p, "sharding", None)
    sharding = jax.typeof(p).sharding
    mesh = sharding.mesh
    if not mesh.empty and all(t == AxisType.Explicit for t in mesh.axis_types):
        return sharding
    return None


def _follow(x: jax.Array, p: Any) -> jax.Array:
    """`x` (same shape as `p`) laid out like `p`."""
    if not isinstance(x, jax.core.Tracer):
        sharding = getattr(p, "sharding", None)
        if isinstance(p, jax.Array) and isinstance(x, jax.Array) and x.sharding != sharding:
            return jax.device_put(x, sharding)
        return x
    if not isinstance(p, jax.core.Tracer):
        return constrain(x, p.sharding) if _is_spread(p) else x
    sharding = jax.typeof(p).sharding
    types = sharding.mesh.axis_types
    if sharding.mesh.empty or any(t == AxisType.Manual for t in types):
        return x  # one device, or inside shard_map: nothing to place
    if any(t == AxisType.Explicit for t in types) and jax.typeof(x).sharding.spec != sharding.spec:
        x = jax.sharding.reshard(x, sharding.spec)
    if any(t == AxisType.Auto for t in types):
        x, _ = shard_alike(x, p)
    return x


def constrain(x: jax.Array, sharding: Sharding) -> jax.Array:
    """`x` on `sharding`: moved eagerly, constrained under a trace."""
    if not isinstance(x, jax.core.Tracer):
        return jax.device_put(x, sharding)
    if isinstance(sharding, NamedSharding) and _explicit(sharding.mesh):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


# --------------------------------------------------------------------------
# ZeRO-1.


def zero_spec(shape: tuple[int, ...], spec: P | None, mesh: Mesh, axis: str) -> P:
    """`spec` with the largest dimension that the size of `axis` divides also split over `axis`.

    The dimension depends on the shape alone, so that a step traced without
    knowing the parameters' layout picks the same one. `spec` None means
    that layout is unknown (Auto axes under a trace): the other dimensions
    are left to XLA. A buffer already split over `axis`, with no dimension
    the axis size divides, or whose dimension is already split too finely,
    keeps `spec`.
    """
    n = mesh.shape[axis]
    entries = list(spec) if spec is not None else [_U] * len(shape)
    entries += [None] * (len(shape) - len(entries))
    if n == 1 or any(axis in _names(e) for e in entries):
        return P(*entries)
    dims = [d for d in range(len(shape)) if shape[d] > 0 and shape[d] % n == 0]
    if not dims:
        return P(*entries)
    d = max(dims, key=lambda d: shape[d])  # the first of the largest
    names = _names(entries[d])
    if shape[d] % (math.prod(mesh.shape[a] for a in names) * n):
        return P(*entries)
    entries[d] = (*names, axis) if names else axis
    return P(*entries)


def gathered(spec: P, axis: str) -> P:
    """`spec` with `axis` removed (the layout of an update computed on `spec`'s slices)."""
    out = []
    for e in spec:
        names = tuple(a for a in _names(e) if a != axis)
        out.append(e if e is _U else (names if len(names) > 1 else (names[0] if names else None)))
    return P(*out)
