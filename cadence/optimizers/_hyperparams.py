"""`hyperparams(state)`: the hyperparameter values the last update used (torch's get_last_lr)."""

from __future__ import annotations

from typing import Any

import jax

from ._groups import DEFAULT, OWN_STEP, Record, is_variable, pick
from ._trees import INNER_FIELDS

__all__ = ["hyperparams"]


def hyperparams(state: Any, path: str | None = None) -> Record:
    """The hyperparameter values used by the last update, by argument name.

    Looks through `chain`, `accumulate`, `skip_nonfinite`, `master_weights`,
    `reduce_on_plateau` (whose lr scale it applies to ``lr``), `loss_scale`
    (whose scale it reports as ``loss_scale``), and optax's `chain`, `MultiSteps`,
    `masked`, `inject_hyperparams`, `multi_transform` and `partition` (values
    by label: ``{"lr": {label: value}}``) and `contrib.reduce_on_plateau` placed after
    the optimizer (its scale applied to ``lr``). Where an optimizer has
    parameter groups, each value is a dict by group pattern, with the
    unmatched parameters under ``"default"``; pass `path` to get, always, one
    value per name: the one the parameter at that path used. Before the first
    update it gives the values the first update will use. The values are
    arrays in the state, so this works inside `jit`. optax's name
    ``"learning_rate"`` finds ``lr`` too.

    Args:
        state: an optimizer state.
        path: a parameter's path, joined with '/' (e.g. ``"encoder/w"``); the
            values are then that parameter's, scalars whether or not the
            optimizer has groups.

    Returns:
        ``{name: value}``, e.g. ``{"lr": ..., "b1": ..., "b2": ..., "eps": ...,
        "weight_decay": ...}`` for `adam`.

    Raises:
        ValueError: if two transformations in the state report the same name,
            if optax's `reduce_on_plateau` comes before the optimizer (it then
            scales the gradients, not the lr), or if `path` is given for a
            state by label (`partition`, `multi_transform`).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O, schedules as S
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.sgd(S.linear(0.1, 0.0, 10)))
        >>> params = jnp.zeros(2)
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     _, state = opt.update(jnp.ones(2), state, params)
        >>> {k: round(float(v), 6) for k, v in O.hyperparams(state).items()}
        {'max_norm': 1.0, 'lr': 0.08, 'momentum': 0.0, 'dampening': 0.0, 'weight_decay': 0.0}
        >>> grouped = O.adamw(0.1, groups={"b": {"lr": 0.01}})
        >>> state = grouped.init({"w": jnp.zeros(2), "b": jnp.zeros(2)})
        >>> float(O.hyperparams(state, path="b")["lr"]), float(O.hyperparams(state, "w")["lr"])
        (0.01, 0.1)
    """
    out = Record()
    _collect(state, out, path)
    # nnx.Optimizer keeps its state's arrays in Variables: report the arrays.
    return jax.tree.map(lambda x: x.get_value() if is_variable(x) else x, out, is_leaf=is_variable)


def lr_of(state: Any) -> jax.Array | None:
    """The learning rate the last update used (the default group's), or None."""
    lr = hyperparams(state).get("lr")
    return lr[DEFAULT] if isinstance(lr, dict) else lr


def _merge(out: dict[str, Any], new: dict[str, Any]) -> None:
    for name, value in new.items():
        if name in out:
            raise ValueError(
                f"hyperparams: {name!r} is reported by two transformations in this state"
            )
        out[name] = value


def _is_optax_plateau(state: Any) -> bool:
    """optax.contrib.reduce_on_plateau's state (it scales every update after it)."""
    return type(state).__name__ == "ReduceLROnPlateauState" and {"scale", "plateau_count"} <= set(
        getattr(state, "_fields", ())
    )


def _scaled_lr(found: dict[str, Any], scale: Any) -> None:
    if "lr" in found:
        found["lr"] = jax.tree.map(lambda lr: lr * scale, found["lr"])


def _collect(state: Any, out: dict[str, Any], path: str | None) -> None:
    # A wrapper that scales its inner updates names the field holding the
    # scale of the last one (`reduce_on_plateau`: a protocol, so that this
    # module needs none of the wrappers).
    scale_field = getattr(type(state), "lr_scale_field", None)
    if scale_field is not None:
        inner: dict[str, Any] = {}
        _collect(state.inner, inner, path)
        _scaled_lr(inner, getattr(state, scale_field))
        _merge(out, inner)
        return
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        own: dict[str, Any] = {}
        for name in INNER_FIELDS:
            inner = getattr(state, name, None)
            if isinstance(inner, dict):  # by label: O.partition, optax.multi_transform
                _merge(own, _by_label(inner, path))
            elif name in state._fields:
                _collect(inner, own, path)
        # A state may report fields of its own (`loss_scale`: the scale), by
        # naming them on its type, as `lr_scale_field` above.
        fields = getattr(type(state), "hyperparam_fields", {})
        _merge(own, {name: getattr(state, f) for name, f in fields.items()})
        recorded = getattr(state, "hyperparams", None)
        if isinstance(recorded, dict):
            # Groups' step offsets (`add_param_group`) are state, not hyperparameters.
            recorded = {k: v for k, v in recorded.items() if k != OWN_STEP}
            if path is not None:
                recorded = {
                    k: pick(v, path) if isinstance(v, dict) else v for k, v in recorded.items()
                }
            # optax's inject_hyperparams records the values it passed to the
            # optimizer inside, which reports them itself.
            _merge(own, {k: v for k, v in recorded.items() if k not in own})
        _merge(out, own)
    elif isinstance(state, (tuple, list)):
        # A chain: optax's reduce_on_plateau scales the updates of what precedes it.
        found: dict[str, Any] = {}
        scales_gradients = False
        for s in state:
            if not _is_optax_plateau(s):
                _collect(s, found, path)
            elif "lr" in found:
                _scaled_lr(found, s.scale)
            else:
                scales_gradients = True
        if scales_gradients and "lr" in found:
            raise ValueError(
                "hyperparams: optax.contrib.reduce_on_plateau comes before the optimizer, "
                "where it scales the gradients, not the learning rate; put it after the "
                "optimizer, or use O.reduce_on_plateau(opt)"
            )
        _merge(out, found)


def _by_label(states: dict[str, Any], path: str | None) -> dict[str, dict[str, Any]]:
    """States by label (partition, multi_transform): ``{name: {label: value}}``."""
    if path is not None:
        raise ValueError(
            "hyperparams: this state holds values by label (partition or multi_transform), "
            "and the labels of parameters are not in it; call hyperparams(state) without path"
        )
    out: dict[str, dict[str, Any]] = {}
    for label, s in states.items():
        found: dict[str, Any] = {}
        _collect(s, found, None)
        for name, value in found.items():
            out.setdefault(name, {})[label] = value
    return out
