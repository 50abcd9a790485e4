"""Parameter groups: per-parameter hyperparameters chosen by glob patterns on paths.

A parameter's path is its key path joined with '/' (dict keys, sequence
indices, dataclass and NamedTuple field names): ``{"encoder": {"w": ...}}``
has the path ``encoder/w``. In a pattern, ``*`` matches within one path
component, ``**`` across components (``encoder/**``, ``**/bias``) and ``?``
one character; everything else is literal. The first matching pattern wins.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, final

import jax
import jax.numpy as jnp

from cadence import schedules as S

from ._base import as_float, is_zero, normalize_hyper, path_str

__all__ = ["DEFAULT", "Groups"]

# The key under which `hyperparams` reports the parameters no pattern matched.
DEFAULT = "default"

# A group setting (``{"head/**": {"lr": 0.1, "own_step": True}}``): the group's
# leaves count their own steps from the update at which they joined the
# optimizer (torch's per-parameter ``step`` after ``add_param_group``), kept
# per group in the state's record under this key; schedules keep the
# optimizer's count.
OWN_STEP = "own_step"


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression for a glob pattern on '/'-joined paths."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole components
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def matches(pattern: str, path: str) -> bool:
    """Whether a glob pattern matches a whole '/'-joined path.

    Example:
        >>> from cadence.optimizers._groups import matches
        >>> matches("*/bias", "dense/bias"), matches("*/bias", "enc/dense/bias")
        (True, False)
        >>> matches("encoder/**", "encoder/layer0/w"), matches("**/bias", "bias")
        (True, True)
    """
    return compile_pattern(pattern).fullmatch(path) is not None


@final
@dataclasses.dataclass(frozen=True)
class Groups:
    """Parameter groups, immutable and hashable; prints as the dict it was built from.

    Patterns and hyperparameter names are static; the values are pytree leaves
    (or schedules), like the optimizer's own hyperparameters, except that the
    names in `static_zero` are static while they are 0 (see
    `transformation_type`).
    """

    patterns: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    values: tuple[tuple[Any, ...], ...]
    static_zero: frozenset[str] = frozenset()
    own_step: frozenset[str] = frozenset()  # patterns whose leaves count their own steps

    @classmethod
    def build(
        cls,
        owner: str,
        groups: Mapping[str, Mapping[str, Any]],
        checks: dict[str, str],
        static_zero: frozenset[str] = frozenset(),
    ) -> Groups:
        """Validate a user's ``{pattern: {name: value}}`` dict."""
        if not isinstance(groups, Mapping):
            raise TypeError(f"{owner}: groups must be a dict of dicts, got {groups!r}")
        patterns, names, values, own_step = [], [], [], set()
        for pattern, group in groups.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"{owner}: groups' patterns must be non-empty strings, got {pattern!r}"
                )
            if pattern == DEFAULT:
                raise ValueError(
                    f"{owner}: in groups, {DEFAULT!r} is reserved for the parameters no "
                    "pattern matches"
                )
            if not isinstance(group, Mapping):
                raise TypeError(f"{owner}: groups[{pattern!r}] must be a dict, got {group!r}")
            if OWN_STEP in group:
                flag = group[OWN_STEP]
                if not isinstance(flag, bool):
                    raise TypeError(
                        f"{owner}: groups[{pattern!r}][{OWN_STEP!r}] must be True or False, "
                        f"got {flag!r}"
                    )
                if flag:
                    own_step.add(pattern)
                group = {k: v for k, v in group.items() if k != OWN_STEP}
            for name in group:
                if name not in checks:
                    raise ValueError(
                        f"{owner}: unknown hyperparameter {name!r} in groups[{pattern!r}]; "
                        f"groups can set {', '.join(checks)}"
                    )
            patterns.append(pattern)
            names.append(tuple(group))
            values.append(
                tuple(
                    normalize_hyper(owner, f"groups[{pattern!r}][{name!r}]", v, checks[name])
                    for name, v in group.items()
                )
            )
        return cls(
            tuple(patterns),
            tuple(names),
            tuple(values),
            frozenset(static_zero),
            frozenset(own_step),
        )

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for pattern, names, values in zip(self.patterns, self.names, self.values, strict=True):
            yield pattern, dict(zip(names, values, strict=True))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """The groups as given: ``{pattern: settings}``, with ``own_step`` where set."""
        return {p: g | ({OWN_STEP: True} if p in self.own_step else {}) for p, g in self.items()}

    def __repr__(self) -> str:
        return repr(self.as_dict())


def _flatten(groups: Groups) -> tuple[list[Any], Any]:
    leaves, zeros = [], []
    for names, values in zip(groups.names, groups.values, strict=True):
        for name, value in zip(names, values, strict=True):
            if name in groups.static_zero and is_zero(value):
                zeros.append(value)
            else:
                leaves.append(value)
                zeros.append(None)
    aux = (groups.patterns, groups.names, groups.static_zero, tuple(zeros), groups.own_step)
    return leaves, aux


def _unflatten(aux: Any, leaves: Any) -> Groups:
    patterns, names, static_zero, zeros, own_step = aux
    leaves = iter(leaves)
    flat = [next(leaves) if z is None else z for z in zeros]
    values, i = [], 0
    for group in names:
        values.append(tuple(flat[i : i + len(group)]))
        i += len(group)
    return Groups(patterns, names, tuple(values), static_zero, own_step)


jax.tree_util.register_pytree_node(Groups, _flatten, _unflatten)


def is_variable(x: Any) -> bool:
    """Whether `x` wraps a parameter's value, as flax NNX's ``Variable`` does.

    ``nnx.Optimizer`` calls ``init`` on a tree of Variables (whose paths end in
    ``.../bias/value``) and ``update`` on the plain arrays (``.../bias``); a
    Variable's own key is not part of the parameter's path, so one pattern
    means the same parameter in both calls. Recognised by its interface, so
    that flax stays an optional client.
    """
    return callable(getattr(x, "get_value", None)) and callable(getattr(x, "set_value", None))


def leaf_paths(tree: Any) -> list[str]:
    """Every leaf's '/'-joined path, without the key of a Variable that holds it."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]:
        out += [path_str(path)] * (len(jax.tree.leaves(x)) if is_variable(x) else 1)
    return out


# Packages whose frames a warning skips to point at the user's line.
_LIBRARIES = frozenset({"cadence", "jax", "jaxlib", "flax", "optax", "equinox", "orbax"})


def user_stacklevel() -> int:
    """The `stacklevel` that points a warning, issued by the caller, at the user's code."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in (
        _LIBRARIES
    ):
        frame, level = frame.f_back, level + 1
    return level


def assign(owner: str, groups: Groups | None, tree: Any, *, warn: bool = False) -> list[int]:
    """The group of each leaf of `tree`: 0 for the default, i + 1 for pattern i.

    With `warn`, a pattern that claims no leaf raises a UserWarning naming it.
    """
    paths = leaf_paths(tree)
    if groups is None:
        return [0] * len(paths)
    out = []
    claimed = [0] * len(groups.patterns)
    for path in paths:
        index = 0
        for i, pattern in enumerate(groups.patterns):
            if matches(pattern, path):
                index = i + 1
                claimed[i] += 1
                break
        out.append(index)
    if warn:
        for pattern, n in zip(groups.patterns, claimed, strict=True):
            if n == 0:
                shadowed = any(matches(pattern, p) for p in paths)
                why = "only parameters an earlier pattern took" if shadowed else "no parameter"
                warnings.warn(
                    f"{owner}: group pattern {pattern!r} matches {why}",
                    stacklevel=user_stacklevel(),
                )
    return out


def evaluate(x: Any, count: jax.Array) -> jax.Array:
    """A hyperparameter at the update count, in the default float dtype (float32 or wider)."""
    if isinstance(x, S.Schedule):
        return as_float(x(count))
    return as_float(x)


def group_values(
    defaults: dict[str, Any], groups: Groups | None, count: jax.Array
) -> list[dict[str, jax.Array]]:
    """Evaluated hyperparameters per group (index 0: the default group)."""
    base = {name: evaluate(x, count) for name, x in defaults.items()}
    out = [base]
    if groups is not None:
        for _, group in groups.items():
            out.append(base | {name: evaluate(x, count) for name, x in group.items()})
    return out


class Record(dict):
    """A state's record of hyperparameter values: a dict where optax's names find cadence's.

    ``record["learning_rate"]``, ``"learning_rate" in record`` and so
    ``optax.tree_utils.tree_get(state, "learning_rate")`` find ``lr``, which is
    stored once. As a pytree it keeps its insertion order (a dict's is sorted),
    so the group patterns stay in their first-match order through `jit`.
    """

    ALIASES: ClassVar[dict[str, str]] = {"learning_rate": "lr"}

    def _key(self, key: Any) -> Any:
        if not dict.__contains__(self, key) and key in self.ALIASES:
            return self.ALIASES[key]
        return key

    def __getitem__(self, key: Any) -> Any:
        return dict.__getitem__(self, self._key(key))

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default


jax.tree_util.register_pytree_with_keys(
    Record,
    lambda r: ([(jax.tree_util.DictKey(k), v) for k, v in r.items()], tuple(r)),
    lambda keys, values: Record(zip(keys, values, strict=True)),
)


def record(
    values: list[dict[str, jax.Array]],
    groups: Groups | None,
    offsets: list[jax.Array] | None = None,
) -> Record:
    """The state's record of the hyperparameters used: by name, then by group pattern.

    With `offsets` (groups with ``own_step``): also each group's step offset,
    the optimizer's count when its leaves joined, under `OWN_STEP`.
    """
    if groups is None:
        return Record(values[0])
    keys = (DEFAULT, *groups.patterns)
    out = Record(
        (name, Record((k, v[name]) for k, v in zip(keys, values, strict=True)))
        for name in values[0]
    )
    if offsets is not None:
        out[OWN_STEP] = Record(zip(keys, offsets, strict=True))
    return out


def step_offsets(owner: str, groups: Groups | None, recorded: Any) -> list[jax.Array] | None:
    """Each group's step offset from a state's record, or None where no group has its own step."""
    if groups is None or not groups.own_step:
        return None
    offsets = recorded.get(OWN_STEP) if isinstance(recorded, Mapping) else None
    keys = (DEFAULT, *groups.patterns)
    if not isinstance(offsets, Mapping) or set(offsets) != set(keys):
        raise ValueError(
            f"{owner}: the state was made for a different configuration (its groups' own "
            "steps do not match the optimizer's); call init again or use add_param_group"
        )
    return [offsets[k] for k in keys]


def zero_offsets(groups: Groups | None) -> list[jax.Array] | None:
    """The step offsets of a fresh state: every group starts at update 0."""
    if groups is None or not groups.own_step:
        return None
    return [jnp.zeros([], jnp.int32) for _ in range(1 + len(groups.patterns))]


def pick(values: Mapping[str, Any], path: str) -> Any:
    """From a record's ``{pattern: value}``, the value of the parameter at `path` (first match)."""
    for pattern, value in values.items():
        if pattern != DEFAULT and matches(pattern, path):
            return value
    return values[DEFAULT]
