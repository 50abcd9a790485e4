"""Tree helpers every layer shares: parameter paths, and `Leaves`, a subset of a tree by path.

The lowest layer of the optimizers package: it imports nothing of cadence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, final

import jax

__all__ = ["INNER_FIELDS", "Leaves", "distinct_arrays", "inner_states", "is_traced", "path_str"]


def path_str(path: Sequence[Any]) -> str:
    """A key path joined with '/': dict keys, sequence indices, attribute names."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


@final
class Leaves(dict):
    """The leaves one transformation of a `partition` owns: ``{path: leaf}``.

    A dict keyed by each parameter's '/'-joined path, so the paths a
    transformation sees (in its groups, its errors, `hyperparams`) are those
    of the whole tree.
    """

    __slots__ = ()


def _leaves_flatten(x: Leaves) -> tuple[list[tuple[Any, Any]], tuple[str, ...]]:
    keys = tuple(sorted(x))
    return [(jax.tree_util.DictKey(k), x[k]) for k in keys], keys


jax.tree_util.register_pytree_with_keys(
    Leaves, _leaves_flatten, lambda keys, values: Leaves(zip(keys, values, strict=True))
)


def is_traced(tree: Any) -> bool:
    """Whether any leaf of `tree` is a tracer (the call runs under `jit`, `vmap`, ...)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def distinct_arrays(tree: Any) -> Any:
    """`tree` with no array object in two leaves (a repeated one is copied).

    An optimizer's record of hyperparameters shares one array among the
    groups that do not override it; a step that donates the state would
    donate that array twice, which XLA refuses. Traced leaves are left alone:
    a compiled function's outputs are distinct buffers already.
    """
    seen: set[int] = set()

    def once(x: Any) -> Any:
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return x
        if id(x) in seen:
            return jax.numpy.array(x, copy=True)
        seen.add(id(x))
        return x

    return jax.tree.map(once, tree)


# Fields through which a state holds another transformation's state: ours
# (`inner`), optax's inject_hyperparams (`inner_state`) and MultiSteps
# (`inner_opt_state`); a dict there (`partition`'s `inner`, or optax
# multi_transform's `inner_states`) holds one state per label.
INNER_FIELDS = ("inner", "inner_state", "inner_opt_state", "inner_states")


def inner_states(state: Any) -> Iterator[Any]:
    """The transformation states directly inside `state`, outermost first.

    A wrapper's inner state, each label's state of a partition, each member
    of a chain; nothing for a leaf optimizer's state. Walks that look for one
    kind of state through any nesting (`averaged_params`,
    `schedule_free_eval_params`) recurse on this.
    """
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        for name in INNER_FIELDS:
            if name in state._fields:
                inner = getattr(state, name)
                if isinstance(inner, dict):
                    yield from inner.values()
                else:
                    yield inner
    elif isinstance(state, dict):
        yield from state.values()
    elif isinstance(state, (tuple, list)):
        yield from state
