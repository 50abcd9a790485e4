"""`hyperparams(state)`: the hyperparameter values the last update used (torch's get_last_lr)."""

from __future__ import annotations

from typing import Any

import jax

from ._groups import DEFAULT
from ._wrappers import ReduceOnPlateauState

__all__ = ["hyperparams"]

# Fields through which a state holds another transformation's state: ours
# (`inner`), optax's inject_hyperparams (`inner_state`) and MultiSteps
# (`inner_opt_state`).
_INNER = ("inner", "inner_state", "inner_opt_state")


def hyperparams(state: Any) -> dict[str, Any]:
    """The hyperparameter values used by the last update, by argument name.

    Looks through `chain`, `accumulate`, `skip_nonfinite`, `reduce_on_plateau`
    (whose lr scale it applies to ``lr``), and optax's `chain`, `MultiSteps`
    and `inject_hyperparams`. Where an optimizer has parameter groups, each
    value is a dict by group pattern, with the unmatched parameters under
    ``"default"``. Before the first update it gives the values the first update
    will use. The values are arrays in the state, so this works inside `jit`.

    Args:
        state: an optimizer state.

    Returns:
        ``{name: value}``, e.g. ``{"lr": ..., "b1": ..., "b2": ..., "eps": ...,
        "weight_decay": ...}`` for `adam`.

    Raises:
        ValueError: if two transformations in the state report the same name.

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
    """
    out: dict[str, Any] = {}
    _collect(state, out)
    return out


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


def _collect(state: Any, out: dict[str, Any]) -> None:
    if isinstance(state, ReduceOnPlateauState):
        inner: dict[str, Any] = {}
        _collect(state.inner, inner)
        if "lr" in inner:
            inner["lr"] = jax.tree.map(lambda lr: lr * state.last_scale, inner["lr"])
        _merge(out, inner)
        return
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        recorded = getattr(state, "hyperparams", None)
        if isinstance(recorded, dict):
            _merge(out, recorded)
        for name in _INNER:
            if name in state._fields:
                _collect(getattr(state, name), out)
    elif isinstance(state, (tuple, list)):
        for s in state:
            _collect(s, out)
