"""`partition`: each parameter to one transformation, chosen by a label function.

The standard Muon recipe needs it: Muon orthogonalises the 2-D hidden
matrices, AdamW takes embeddings, heads, biases and norms. Each
transformation sees only its own leaves, as a `Leaves` mapping from the
parameter's path to the leaf, so its state covers only them (optax's
`multi_transform` keeps a masked placeholder for every other leaf), its
parameter groups match the same paths as on the whole tree, and its buffers
are still recognised as belonging to their parameters for sharding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, final

import jax
import numpy as np

from ._base import Transformation, as_transformation, path_str, register, set_field
from ._groups import matches
from ._trees import Leaves

__all__ = ["Leaves", "PartitionState", "partition", "rules"]


class PartitionState(NamedTuple):
    """`partition` state: each transformation's state over its own leaves, by label."""

    inner: dict[str, Any]


@final
@dataclasses.dataclass(frozen=True)
class rules:
    """A serializable label function: the first rule that matches a leaf gives its label.

    Each rule is ``(label, pattern="**", ndim=None)``: `pattern` is a glob on
    the parameter's path, as in parameter groups (``*`` within one path
    component, ``**`` across them), and `ndim` the number of dimensions the
    leaf must have (an int, or a tuple of ints), if given.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> label = O.rules(("adamw", "embed/**"), ("muon", "**", 2), ("adamw",))
        >>> label("embed/w", jnp.zeros((8, 4))), label("h0/w", jnp.zeros((4, 4)))
        ('adamw', 'muon')
        >>> label("h0/b", jnp.zeros(4))
        'adamw'
    """

    items: tuple[tuple[str, str, tuple[int, ...] | None], ...]

    def __init__(self, *items: Sequence[Any]) -> None:
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str) or not isinstance(item, Sequence) or not 1 <= len(item) <= 3:
                raise TypeError(
                    f"rules: rule {i} must be (label, pattern='**', ndim=None), got {item!r}"
                )
            label = item[0]
            pattern = item[1] if len(item) > 1 else "**"
            ndim = item[2] if len(item) > 2 else None
            if not isinstance(label, str) or not label:
                raise TypeError(
                    f"rules: rule {i}'s label must be a non-empty string, got {label!r}"
                )
            if not isinstance(pattern, str):
                raise TypeError(f"rules: rule {i}'s pattern must be a string, got {pattern!r}")
            if ndim is not None:
                dims = (ndim,) if isinstance(ndim, int) else ndim
                if not isinstance(dims, Sequence) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
                ):
                    raise TypeError(
                        f"rules: rule {i}'s ndim must be an int >= 0 or a tuple of them, "
                        f"got {ndim!r}"
                    )
                ndim = tuple(dims)
            out.append((label, pattern, ndim))
        set_field(self, "items", tuple(out))

    def __call__(self, path: str, leaf: Any) -> str | None:
        for label, pattern, ndim in self.items:
            if matches(pattern, path) and (ndim is None or np.ndim(leaf) in ndim):
                return label
        return None

    def to_config(self) -> list[list[Any]]:
        """The rules as JSON-safe lists ``[label, pattern, ndim]``."""
        return [
            [label, pattern, None if ndim is None else list(ndim)]
            for label, pattern, ndim in self.items
        ]

    def __repr__(self) -> str:
        return f"rules({', '.join(map(repr, self.items))})"


@final
@dataclasses.dataclass(frozen=True, eq=True, init=False, repr=False)
class partition(Transformation):
    """Send each parameter to one transformation, by a label function of (path, leaf).

    Each transformation's state covers only its own leaves, which it sees as
    a `Leaves` dict keyed by their paths. A leaf the label function gives no
    label (None), or a label that names no transformation, is a `ValueError`
    naming its path. `label_fn` is any function ``(path, leaf) -> label``;
    to save the optimizer's config (checkpoints), give it as `rules`, the
    serializable form.

    Args:
        transforms: ``{label: transformation}`` (cadence or optax).
        label_fn: ``(path, leaf) -> label``, or `rules` (serializable).

    Example:
        The standard Muon recipe: Muon for 2-D hidden matrices, AdamW for
        embeddings, the head, biases and norms.

        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.partition(
        ...     {"muon": O.sgd(0.02, momentum=0.95), "adamw": O.adamw(3e-4)},
        ...     O.rules(("adamw", "embed/**"), ("adamw", "head/**"), ("muon", "**", 2), ("adamw",)),
        ... )
        >>> params = {"embed": {"w": jnp.ones((8, 4))}, "h0": {"w": jnp.ones((4, 4)),
        ...           "b": jnp.zeros(4)}, "head": {"w": jnp.ones((4, 2))}}
        >>> state = opt.init(params)
        >>> sorted(state.inner["muon"].momentum_buffer)
        ['h0/w']
        >>> O.from_config(opt.to_config()) == opt
        True
    """

    transforms: dict[str, Any]
    label_fn: Callable[[str, Any], Any]

    def __init__(self, transforms: Mapping[str, Any], label_fn: Callable[[str, Any], Any]) -> None:
        if not isinstance(transforms, Mapping) or not transforms:
            raise TypeError(
                f"partition: transforms must be a non-empty dict {{label: transformation}}, "
                f"got {transforms!r}"
            )
        for label in transforms:
            if not isinstance(label, str):
                raise TypeError(f"partition: labels must be strings, got {label!r}")
        if not callable(label_fn):
            raise TypeError(
                "partition: label_fn must be a function (path, leaf) -> label, or O.rules(...), "
                f"got {label_fn!r}"
            )
        held = {
            k: as_transformation("partition", f"transforms[{k!r}]", t)
            for k, t in transforms.items()
        }
        set_field(self, "transforms", held)
        set_field(self, "label_fn", label_fn)

    def __hash__(self) -> int:
        return hash((tuple(self.transforms.items()), self.label_fn))

    # ------------------------------------------------------------- routing

    def _split(self, owner: str, tree: Any) -> tuple[list[str], list[str], Any]:
        """Each leaf's path and label, and the tree's structure."""
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        paths, labels = [], []
        seen: set[str] = set()
        for path, leaf in flat:
            name = path_str(path)
            if name in seen:
                raise ValueError(f"{owner}: two parameters have the path {name!r}")
            seen.add(name)
            label = self.label_fn(name, leaf)
            if label is None:
                raise ValueError(
                    f"{owner}: the label function gives no label for the parameter at {name!r}; "
                    f"every parameter needs one of {sorted(self.transforms)}"
                )
            if label not in self.transforms:
                raise ValueError(
                    f"{owner}: the parameter at {name!r} is labelled {label!r}, which names no "
                    f"transformation (labels: {sorted(self.transforms)})"
                )
            paths.append(name)
            labels.append(label)
        return paths, labels, treedef

    @staticmethod
    def _pick(leaves: list[Any], paths: list[str], labels: list[str], label: str) -> Leaves:
        return Leaves(
            (p, x) for p, x, lab in zip(paths, leaves, labels, strict=True) if lab == label
        )

    # ---------------------------------------------------------------- API

    def init(self, params: Any) -> PartitionState:
        paths, labels, treedef = self._split("partition.init", params)
        leaves = treedef.flatten_up_to(params)
        return PartitionState(
            {
                label: tx.init(self._pick(leaves, paths, labels, label))
                for label, tx in self.transforms.items()
            }
        )

    def _run(
        self, method: str, grads: Any, state: Any, params: Any, extra: dict
    ) -> tuple[Any, Any]:
        owner = f"partition.{method}"
        if not isinstance(state, PartitionState) or set(state.inner) != set(self.transforms):
            raise ValueError(
                f"{owner}: expected a PartitionState with the labels {sorted(self.transforms)}; "
                "call init first"
            )
        paths, labels, treedef = self._split(owner, params if params is not None else grads)
        gleaves = treedef.flatten_up_to(grads)
        pleaves = treedef.flatten_up_to(params) if params is not None else None
        out: dict[str, Any] = {}
        new: dict[str, Any] = {}
        for label, tx in self.transforms.items():
            sub_g = self._pick(gleaves, paths, labels, label)
            sub_p = None if pleaves is None else self._pick(pleaves, paths, labels, label)
            if method == "step":
                result, new[label] = tx.step(sub_g, state.inner[label], sub_p, **extra)
            else:
                result, new[label] = tx.update(sub_g, state.inner[label], sub_p, **extra)
            out.update(result)
        return treedef.unflatten([out[p] for p in paths]), PartitionState(new)

    def update(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        return self._run("update", updates, state, params, extra)

    def step(self, grads: Any, state: Any, params: Any, **extra: Any) -> tuple[Any, Any]:
        """Each transformation's `step` on its own leaves (one pass per leaf on CPU)."""
        if params is None:
            raise TypeError("partition.step: params are required (step returns the new params)")
        return self._run("step", grads, state, params, extra)

    def _config(self, where: str) -> dict[str, Any]:
        if not isinstance(self.label_fn, rules):
            raise ValueError(
                f"to_config: {where}.label_fn is a Python function, which has no config; "
                "give the labels as O.rules(...) to save them"
            )
        return {
            "type": "partition",
            "transforms": {
                k: t._config(f"{where}.transforms[{k!r}]") for k, t in self.transforms.items()
            },
            "rules": self.label_fn.to_config(),
        }

    def __repr__(self) -> str:
        return f"partition({self.transforms!r}, {self.label_fn!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (partition, (self.transforms, self.label_fn))


def _flatten(p: partition) -> tuple[list[Any], Any]:
    labels = tuple(p.transforms)
    return [p.transforms[k] for k in labels], (labels, p.label_fn)


def _unflatten(aux: Any, children: Any) -> partition:
    labels, label_fn = aux
    return partition(dict(zip(labels, children, strict=True)), label_fn)


jax.tree_util.register_pytree_node(partition, _flatten, _unflatten)
register(partition)
