"""`averaged_params(state)`: the averaged parameters an optimizer keeps (`average`, ASGD's ``ax``).

One walk through the wrappers' states (the fields `hyperparams` looks
through) and, per state type that averages, a rule giving its averaged
parameters (`RULES`): a new averaging state is one more entry there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ._asgd import ASGDState
from ._average import AverageState
from ._flatten import FlattenState
from ._trees import Leaves, inner_states

__all__ = ["averaged_params"]

# State type -> its averaged parameters, a tree shaped like the parameters.
RULES: dict[type, Callable[[Any], Any]] = {
    ASGDState: lambda state: state.ax,
    AverageState: lambda state: state.averaged,
}


def averaged_params(state: Any) -> Any:
    """The averaged parameters in an optimizer state.

    For `average`: its EMA or SWA mean (the parameters at init until the
    first averaging), in the parameters' dtypes; for `asgd`: torch.optim.ASGD's
    ``ax``.

    Looks through `chain`, `accumulate`, `skip_nonfinite`, `reduce_on_plateau`, `lookahead`,
    `partition` and optax's `chain`, `MultiSteps` and `inject_hyperparams`.
    The result is shaped like the parameters; under `partition`, it is a
    `Leaves` dict ``{path: averaged leaf}`` of the parameters whose
    transformations average (merged when several do). The arrays are those
    in the state, so this works inside `jit`.

    Raises:
        ValueError: if no transformation in the state averages the
            parameters, two do over the same parameters, or the state is
            `flatten`'s (its buffers are packed vectors).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence import optimizers as O
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.asgd(0.1, lambd=0.0, t0=0.0))
        >>> params = {"w": jnp.array([1.0])}
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update({"w": jnp.array([1.0])}, state, params)
        ...     params = {"w": params["w"] + updates["w"]}
        >>> params["w"].round(4), O.averaged_params(state)["w"].round(4)
        (Array([0.7], dtype=float32), Array([0.75], dtype=float32))
    """
    found = list(_find(state))
    if not found:
        raise ValueError(
            "averaged_params: no transformation in this state averages the parameters; "
            "build the optimizer with O.average(opt, ...) (or use O.asgd)"
        )
    if len(found) == 1:
        return found[0]
    if all(isinstance(f, Leaves) for f in found):
        merged = Leaves()
        for f in found:
            if set(f) & set(merged):
                break
            merged.update(f)
        else:
            return merged
    raise ValueError(
        "averaged_params: several transformations in this state average the same "
        "parameters; read each one's state"
    )


def _find(state: Any) -> Iterator[Any]:
    """Each averaging state's averaged parameters, outermost first (it stops there)."""
    rule = RULES.get(type(state))
    if isinstance(state, FlattenState):
        raise ValueError(
            "averaged_params: this state is flatten's, which packs the averaged parameters "
            "into one vector per dtype; average without flatten"
        )
    if rule is not None:
        yield rule(state)
    else:
        for inner in inner_states(state):
            yield from _find(inner)
