"""`add_param_group`: torch's ``optimizer.add_param_group`` for a running cadence optimizer.

One walk through the optimizer and its state together, with a rule per
transformation type (`RULES`): an `Optimizer` gains a group for the new
leaves, whose buffers and shared scalars start fresh and whose step counts
from the current update; a wrapper grows what it holds per leaf and passes
the walk to the optimizer inside.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ._base import Transformation, as_float, compute_dtype, dtype_of
from ._groups import (
    DEFAULT,
    OWN_STEP,
    Groups,
    assign,
    group_values,
    leaf_paths,
    matches,
    record,
)
from ._optimizer import Optimizer
from ._transforms import ChainState, chain, clip_by_global_norm, clip_by_value
from ._wrappers import (
    AccumulateState,
    accumulate,
    reduce_on_plateau,
    skip_nonfinite,
)

__all__ = ["add_param_group"]

_OWNER = "add_param_group"


@dataclasses.dataclass(frozen=True)
class _Growth:
    """What every rule needs: the new parameter tree, the old and new paths, the settings."""

    params: Any
    old: tuple[str, ...]
    new: tuple[str, ...]
    settings: dict[str, Any]


def add_param_group(
    opt: Transformation, state: Any, params: Any, settings: Mapping[str, Any] | None = None
) -> tuple[Transformation, Any]:
    """Add parameters to a running optimizer: torch's ``optimizer.add_param_group``.

    `params` is the whole new parameter tree: the leaves the state already
    covers, and the new ones (unfrozen layers, a grown model). The returned
    optimizer has one more parameter group, matching exactly the new leaves'
    paths, with `settings` (``{"lr": ..., "weight_decay": ...}``, like one
    torch param group's options; the optimizer's defaults where absent). The
    returned state keeps every existing leaf's buffers, the count and the
    other groups' scalars as they were; the new leaves start fresh, as in
    torch: their buffers at their initial values and their own step from 0
    (so Adam's bias corrections start again at step 1 for them), while
    schedules keep the optimizer's count (the new group's lr schedule is
    evaluated at the global update). The grown optimizer's `to_config`
    records that group (``"own_step": true``), so a checkpoint rebuilds it.

    Supported: every `Optimizer` rule (sgd, adam, adamw, nadam, asgd, rprop,
    ... and your own), `chain` (settings go to each optimizer in it),
    `accumulate`, `skip_nonfinite`, `reduce_on_plateau`, `clip_by_global_norm`
    and `clip_by_value`. Anything else (`partition`, `flatten`, `shard_state`,
    optax transformations) is a `ValueError`.

    Args:
        opt: the optimizer (a cadence transformation).
        state: its current state.
        params: the new parameter tree, old leaves and new ones.
        settings: the new leaves' hyperparameters (a number, schedule or
            callable each); None for the optimizer's defaults.

    Returns:
        ``(optimizer, state)`` to continue with.

    Raises:
        ValueError: no new leaf, a leaf of the state missing from `params` or
            with another shape, a new path with a glob character (``*``,
            ``?``), an unsupported transformation, or an optimizer that keeps
            no per-parameter state while `settings` is given (its state does
            not tell which leaves are new).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.adam(0.1)
        >>> params = {"body": jnp.ones(2)}
        >>> state = opt.init(params)
        >>> _, state = opt.update({"body": jnp.ones(2)}, state, params)
        >>> params = params | {"head": jnp.zeros(3)}  # unfreeze the head
        >>> opt, state = O.add_param_group(opt, state, params, {"lr": 0.01})
        >>> opt.groups
        {'head': {'lr': 0.01, 'own_step': True}}
        >>> state.mu["head"], int(state.count)
        (Array([0., 0., 0.], dtype=float32), 1)
    """
    if not isinstance(opt, Transformation):
        raise TypeError(f"{_OWNER}: opt must be a cadence transformation, got {opt!r}")
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping) or OWN_STEP in settings:
        raise ValueError(
            f"{_OWNER}: settings must be a dict of hyperparameters, like one torch param "
            f"group's options, got {settings!r}"
        )
    _check_supported(opt)
    old = _old_paths(opt, state)
    paths = leaf_paths(params)
    if len(set(paths)) != len(paths):
        raise ValueError(f"{_OWNER}: two parameters have the same path")
    if old is None:
        if settings:
            raise ValueError(
                f"{_OWNER}: {type(opt).__name__}'s state keeps nothing per parameter, so "
                "it does not tell the new parameters from the old; with the default "
                "settings (settings=None) nothing changes: keep the optimizer and state"
            )
        old = tuple(paths)
    missing = sorted(set(old) - set(paths))
    if missing:
        raise ValueError(
            f"{_OWNER}: params lack {missing[0]!r}, which the state holds; "
            "add_param_group adds parameters, it does not remove them"
        )
    new = tuple(p for p in paths if p not in set(old))
    if not new and settings:
        raise ValueError(f"{_OWNER}: params hold no parameter the state does not already cover")
    for path in new:
        if "*" in path or "?" in path:
            raise ValueError(
                f"{_OWNER}: the new parameter path {path!r} holds a glob character; "
                "a group cannot match it exactly"
            )
    if not new:
        return opt, state
    return _grow(opt, state, _Growth(params, old, new, dict(settings)))


def _rule(opt: Any) -> Callable[[Any, Any, _Growth], tuple[Any, Any]]:
    for kind, rule in RULES.items():
        if isinstance(opt, kind):
            return rule
    raise ValueError(
        f"{_OWNER}: {type(opt).__name__} is not supported (supported: every Optimizer, "
        "chain, accumulate, skip_nonfinite, reduce_on_plateau, clip_by_global_norm, "
        "clip_by_value)"
    )


def _check_supported(opt: Any) -> None:
    """Refuse, before changing anything, a nest holding a transformation without a rule."""
    _rule(opt)
    children = opt.txs if isinstance(opt, chain) else ()
    if _rule(opt) is _grow_inner:
        children = (opt.tx,)
    for child in children:
        _check_supported(child)


def _grow(opt: Any, state: Any, growth: _Growth) -> tuple[Any, Any]:
    return _rule(opt)(opt, state, growth)


# ---------------------------------------------------------------------- paths


def _old_paths(opt: Any, state: Any) -> tuple[str, ...] | None:
    """The leaves the state covers, from the first per-leaf tree in it (None if it has none)."""
    if isinstance(opt, Optimizer):
        for name in opt._buffer_names():
            buffers = getattr(state, name, None)
            if buffers is not None:
                return tuple(leaf_paths(buffers))
        return None
    if isinstance(opt, chain) and isinstance(state, ChainState):
        for tx, s in zip(opt.txs, state.inner, strict=False):
            found = _old_paths(tx, s)
            if found is not None:
                return found
        return None
    if isinstance(opt, accumulate) and isinstance(state, AccumulateState):
        return tuple(leaf_paths(state.grads))
    inner = getattr(opt, "tx", None)
    if inner is not None and hasattr(state, "inner"):
        return _old_paths(inner, state.inner)
    return None


def _merge(old: Any, fresh: Any, old_paths: tuple[str, ...]) -> Any:
    """`fresh`'s tree with the old leaves' values taken from `old`, by path."""
    by_path = dict(zip(old_paths, jax.tree.leaves(old), strict=True))
    flat, treedef = jax.tree.flatten(fresh)
    merged = []
    for path, x in zip(leaf_paths(fresh), flat, strict=True):
        if path in by_path:
            kept = by_path[path]
            if jnp.shape(kept) != jnp.shape(x):
                raise ValueError(
                    f"{_OWNER}: the parameter at {path!r} has changed shape (its state has "
                    f"{jnp.shape(kept)}, the new one needs {jnp.shape(x)})"
                )
            merged.append(kept)
        else:
            merged.append(x)
    return treedef.unflatten(merged)


# ---------------------------------------------------------------------- rules


def _new_patterns(growth: _Growth) -> list[str]:
    """Patterns matching exactly the new leaves: ``prefix/**`` when that takes no old leaf."""
    if len(growth.new) == 1:
        return list(growth.new)
    parts = [p.split("/") for p in growth.new]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if common:
        candidate = "/".join(common) + "/**"
        if not any(matches(candidate, p) for p in growth.old):
            return [candidate]
    return list(growth.new)


def _group_list(groups: Groups | None, recorded: Any) -> list[dict[str, Any]]:
    """A record's values per group (default first), for `groups`."""
    if groups is None:
        return [{k: v for k, v in recorded.items() if k != OWN_STEP}]
    keys = (DEFAULT, *groups.patterns)
    names = [k for k in recorded if k != OWN_STEP]
    return [{n: recorded[n][k] for n in names} for k in keys]


def _grow_optimizer(opt: Optimizer, state: Any, growth: _Growth) -> tuple[Any, Any]:
    if not isinstance(state, opt.State):
        raise ValueError(
            f"{_OWNER}: expected a {opt.State.__name__} for {type(opt).__name__}, "
            f"got {type(state).__name__}"
        )
    patterns = _new_patterns(growth)
    old_groups = opt.groups.as_dict() if opt.groups is not None else {}
    taken = sorted(set(patterns) & set(old_groups))
    if taken:
        raise ValueError(f"{_OWNER}: the optimizer already has a group {taken[0]!r}")
    # The new patterns first: an old pattern (``**/bias``) must not take a new leaf.
    groups = {p: growth.settings | {OWN_STEP: True} for p in patterns} | old_groups
    grown = dataclasses.replace(opt, groups=groups)
    with warnings.catch_warnings():
        # A pattern of the old optimizer that claims no leaf warned at its init already.
        warnings.simplefilter("ignore")
        fresh = grown.init(growth.params)
    # Per group, in the grown order: the old groups' values, fresh ones for the new
    # (their hyperparameters now: torch creates their state at their first step).
    keys = (DEFAULT, *grown.groups.patterns)
    old_keys = (DEFAULT, *(opt.groups.patterns if opt.groups is not None else ()))
    where = {k: old_keys.index(k) if k in old_keys else None for k in keys}
    now = group_values(grown._defaults(), grown.groups, state.count)
    index = assign(_OWNER, grown.groups, growth.params)
    fields = {}
    fixed = ("count", "hyperparams", *opt.shared)
    for name in (n for n in opt.State._fields if n not in fixed):
        old, new = getattr(state, name), getattr(fresh, name)
        if new is not None:
            new = _initial(grown, name, new, growth.params, [now[i] for i in index])
        fields[name] = new if old is None or new is None else _merge(old, new, growth.old)
    for name in opt.shared:
        old = getattr(state, name)
        fields[name] = tuple(
            as_float(grown.init_shared(now[i])[name]) if where[k] is None else old[where[k]]
            for i, k in enumerate(keys)
        )
    old_values = _group_list(opt.groups, state.hyperparams)
    values = [now[i] if where[k] is None else old_values[where[k]] for i, k in enumerate(keys)]
    # Step offsets: the old groups' as they were (0 where none was kept), the
    # count for the new one (a copy: one array in two places cannot be donated).
    old_offsets = state.hyperparams.get(OWN_STEP, {}) if opt.groups is not None else {}
    count = jnp.array(state.count, jnp.int32, copy=True)
    offsets = [
        count if where[k] is None else jnp.asarray(old_offsets.get(k, 0), jnp.int32) for k in keys
    ]
    return grown, fresh._replace(
        count=state.count, hyperparams=record(values, grown.groups, offsets), **fields
    )


def _initial(opt: Optimizer, name: str, fresh: Any, params: Any, values: list[dict]) -> Any:
    """A buffer's initial values from each leaf's hyperparameters `values`, laid out as `fresh`."""

    def one(x: Any, p: Any, hp: dict) -> Any:
        value = opt.init_buffer(name, jnp.shape(p), x.dtype, hp)
        sharding = getattr(x, "sharding", None)
        return jax.device_put(value, sharding) if sharding is not None else value

    flat, treedef = jax.tree.flatten(fresh)
    leaves = treedef.flatten_up_to(params)
    return treedef.unflatten([one(*a) for a in zip(flat, leaves, values, strict=True)])


def _grow_chain(opt: chain, state: Any, growth: _Growth) -> tuple[Any, Any]:
    if not isinstance(state, ChainState) or len(state.inner) != len(opt.txs):
        raise ValueError(f"{_OWNER}: expected a ChainState of {len(opt.txs)} states")
    pairs = [_grow(tx, s, growth) for tx, s in zip(opt.txs, state.inner, strict=True)]
    return chain(*(tx for tx, _ in pairs)), ChainState(tuple(s for _, s in pairs))


def _grow_inner(opt: Any, state: Any, growth: _Growth) -> tuple[Any, Any]:
    """A wrapper holding one optimizer in ``tx``, its state in ``inner``."""
    tx, inner = _grow(opt.tx, state.inner, growth)
    replaced = {"inner": inner}
    if isinstance(opt, accumulate):
        # The new leaves' running sums start at 0 (in the sums' dtype).
        fresh = jax.tree.map(
            lambda p: jnp.zeros(jnp.shape(p), compute_dtype(dtype_of(p))), growth.params
        )
        replaced["grads"] = _merge(state.grads, fresh, growth.old)
    return dataclasses.replace(opt, tx=tx), state._replace(**replaced)


def _unchanged(opt: Any, state: Any, growth: _Growth) -> tuple[Any, Any]:
    """A transformation that keeps nothing per leaf (clipping)."""
    del growth
    return opt, state


# Transformation type -> how it grows (the first that matches).
RULES: dict[type, Callable[[Any, Any, _Growth], tuple[Any, Any]]] = {
    Optimizer: _grow_optimizer,
    chain: _grow_chain,
    accumulate: _grow_inner,
    skip_nonfinite: _grow_inner,
    reduce_on_plateau: _grow_inner,
    clip_by_global_norm: _unchanged,
    clip_by_value: _unchanged,
}
