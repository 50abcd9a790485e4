"""`averaged_params(state)`: the averaged parameters an optimizer state keeps.

One walk through the wrappers (`chain`, `accumulate`, `skip_nonfinite`,
`reduce_on_plateau`, `lookahead`, `partition`, optax's `chain`, `MultiSteps`
and `inject_hyperparams`) finds the states that average the parameters, and
a rule per state type reads their average out.
"""

from __future__ import annotations

from typing import Any

from ._average import AverageState
from ._trees import Leaves

__all__ = ["averaged_params"]

# Fields through which a state holds another transformation's state (as in
# `hyperparams`): ours, optax's inject_hyperparams and MultiSteps.
_INNER = ("inner", "inner_state", "inner_opt_state")


def averaged_params(state: Any) -> Any:
    """The averaged parameters kept in an optimizer state, a tree like the parameters.

    For `average`: its EMA or SWA mean (the parameters at init until the
    first averaging), in the parameters' dtypes. The walk looks through
    chains and wrappers and stops at the outermost average. Inside
    `partition`, where each transformation sees only its own leaves, every
    label must average and the result is a `Leaves` mapping from each
    parameter's path to its average. Works inside `jit`.

    Args:
        state: an optimizer state.

    Returns:
        The averaged parameters.

    Raises:
        ValueError: if the state holds no average, or two side by side.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.average(O.adamw(0.1), decay=0.9))
        >>> params = {"w": jnp.ones(2)}
        >>> state = opt.init(params)
        >>> O.averaged_params(state)["w"]
        Array([1., 1.], dtype=float32)
    """
    found = _find(state)
    if found is None:
        raise ValueError(
            "averaged_params: this state holds no averaged parameters; build the optimizer "
            "with O.average(opt, ...)"
        )
    return found


def _rule(state: Any) -> Any:
    """The averaged parameters of a state that averages, else None."""
    if isinstance(state, AverageState):
        return state.averaged
    return None


def _find(state: Any) -> Any:
    own = _rule(state)
    if own is not None:
        return own
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        for name in _INNER:
            inner = getattr(state, name, None)
            if isinstance(inner, dict):  # by label: O.partition
                return _by_label(inner)
            if name in state._fields:
                return _find(inner)
        return None
    if isinstance(state, (tuple, list)):  # a chain's states
        hits = [h for h in map(_find, state) if h is not None]
        if len(hits) > 1:
            raise ValueError(
                "averaged_params: two transformations in this chain average the parameters"
            )
        return hits[0] if hits else None
    return None


def _by_label(states: dict[str, Any]) -> Any:
    hits = {label: _find(s) for label, s in states.items()}
    if all(h is None for h in hits.values()):
        return None
    missing = sorted(label for label, h in hits.items() if h is None)
    if missing:
        raise ValueError(
            f"averaged_params: the partition's labels {missing} keep no average, so their "
            "parameters have none; wrap the whole partition in O.average(...) instead"
        )
    return Leaves((path, x) for h in hits.values() for path, x in h.items())
