"""Pytrees as a checkpoint sees them: pure arrays, paths, and a manifest.

Frameworks wrap arrays in objects: flax NNX's ``nnx.Variable`` (a `Param`, an
optimizer's `OptState`), linen's boxed ``Partitioned``. A checkpoint stores
only the arrays inside (their "pure" tree), so it can be read back without the
framework, and `rewrap` puts restored arrays back into a caller's wrapped tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

# Types that are data, never wrappers, even if some day they grow a `.value`.
_DATA = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, int, float, complex, str)


def _is_wrapper(x: Any) -> bool:
    """Whether `x` is a framework's box around an array (an NNX Variable, ...).

    Detected by shape, not by type, so no framework is imported: an object
    with a `get_value()` method, or a pytree node whose one child is `.value`.
    """
    if x is None or isinstance(x, _DATA):
        return False
    if callable(getattr(x, "get_value", None)):
        return True
    if isinstance(x, (tuple, list, dict)) or not hasattr(x, "value"):
        return False  # a state named tuple may well have a field called `value`
    # A box: a pytree node whose only child is its value.
    children = jax.tree_util.tree_flatten(x, is_leaf=lambda y: y is not x)[0]
    return len(children) == 1 and children[0] is x.value


def _unwrap(x: Any) -> Any:
    get_value = getattr(x, "get_value", None)
    return pure(get_value() if callable(get_value) else x.value)


def pure(tree: Any) -> Any:
    """`tree` with every wrapper replaced by the array (or tree) it holds."""
    return jax.tree_util.tree_map(
        lambda x: _unwrap(x) if _is_wrapper(x) else x, tree, is_leaf=_is_wrapper
    )


def rewrap(like: Any, restored: Any) -> Any:
    """`restored` (a pure tree) in `like`'s structure, wrappers included.

    A wrapper is a pytree node whose children are its value's leaves, so the
    full flattening of `like` lists its arrays in the order of `pure(like)`.
    """
    treedef = jax.tree_util.tree_structure(like)
    leaves = jax.tree_util.tree_leaves(restored)
    if treedef.num_leaves != len(leaves):
        return restored  # a wrapper that is not a pytree node: keep the pure tree
    return jax.tree_util.tree_unflatten(treedef, leaves)


def key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaves(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs; paths are ``prefix/key/...`` strings."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [("/".join([prefix, *(key_name(k) for k in keys)]), x) for keys, x in flat]


def describe(x: Any) -> tuple[list[int], str]:
    if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic)):
        return list(x.shape), str(np.dtype(x.dtype))
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [], str(np.asarray(x).dtype)
    raise TypeError(f"{type(x).__name__} is not an array or a number")


def digest(x: Any) -> str | None:
    """SHA-256 of a leaf's bytes, or None for arrays this process cannot see whole."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    return hashlib.sha256(a.view(np.uint8).reshape(-1)).hexdigest()


def manifest(trees: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Path, shape, dtype and SHA-256 of every leaf of every (pure) tree."""
    out: dict[str, list[dict[str, Any]]] = {}
    for part, tree in trees.items():
        entries = []
        for path, leaf in leaves(tree, part):
            try:
                shape, dtype = describe(leaf)
            except TypeError as e:
                raise TypeError(
                    f"save: {path} must be an array or a number, got {type(leaf).__name__}"
                ) from e
            entries.append({"path": path, "shape": shape, "dtype": dtype, "sha256": digest(leaf)})
        out[part] = entries
    return out


def compare(part: str, like: Any, saved: Sequence[Mapping[str, Any]], step: int) -> None:
    """Raise ValueError at the first leaf where `like` differs from the checkpoint."""
    ours = [(p, *describe(x)) for p, x in leaves(like, part)]
    theirs = [(e["path"], e["shape"], e["dtype"]) for e in saved]
    for (p1, s1, d1), (p2, s2, d2) in zip(ours, theirs, strict=False):
        if p1 != p2:
            raise ValueError(
                f"restore: step {step}: {part} structure differs at {p1!r}: the "
                f"checkpoint has {p2!r} there (shape {tuple(s2)}, {d2})"
            )
        if s1 != s2 or d1 != d2:
            raise ValueError(
                f"restore: step {step}: {p1} is shape {tuple(s2)} {d2} in the checkpoint "
                f"but shape {tuple(s1)} {d1} in {part}_like"
            )
    if len(ours) != len(theirs):
        longer, where = (
            (ours, f"{part}_like") if len(ours) > len(theirs) else (theirs, "checkpoint")
        )
        first = longer[min(len(ours), len(theirs))]
        raise ValueError(
            f"restore: step {step}: {part} structure differs at {first[0]!r}: only the "
            f"{where} has it (shape {tuple(first[1])}, {first[2]}); "
            f"{len(theirs)} leaves saved, {len(ours)} given"
        )


def abstract(like: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs for `like`, placed on `shardings` (or like's own shardings)."""

    def one(x: Any, sharding: Any) -> jax.ShapeDtypeStruct:
        shape, dtype = describe(x)
        if sharding is None and isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=sharding)

    if shardings is None:
        return jax.tree.map(lambda x: one(x, None), like)
    return jax.tree.map(one, like, pure(shardings))


def empty_to_json(tree: Any) -> Any:
    """A tree without leaves (None, (), {}, nested containers) as JSON."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {"dict": {str(k): empty_to_json(v) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        kind = type(tree).__name__ if type(tree) in (list, tuple) else "tuple"
        return {kind: [empty_to_json(v) for v in tree]}
    return None  # another empty pytree node: restored as None


def empty_from_json(data: Any) -> Any:
    if not isinstance(data, dict) or len(data) != 1:
        return None
    ((kind, value),) = data.items()
    if kind == "dict" and isinstance(value, dict):
        return {k: empty_from_json(v) for k, v in value.items()}
    if kind in ("list", "tuple") and isinstance(value, list):
        items = [empty_from_json(v) for v in value]
        return items if kind == "list" else tuple(items)
    return None
