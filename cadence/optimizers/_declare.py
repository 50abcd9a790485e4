"""Declaring an optimizer: `optimizer_type`, `hyper`, `flag`, and the registry `optimizers()`.

A rule (an `Optimizer` subclass) states its arithmetic; these make it a
complete, registered optimizer type with validated fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, TypeVar

from ._base import ANY, BOOL, DTYPE, GROUPS, HYPER, REGISTRY, field, transformation_type
from ._optimizer import Optimizer

__all__ = ["flag", "hyper", "optimizer_type", "optimizers"]

_O = TypeVar("_O", bound=type)


def optimizers() -> dict[str, type[Optimizer]]:
    """Every optimizer type, by name, in the order they were defined.

    The registry that the README's optimizer table, the benchmarks and the
    test parametrization read: an optimizer defined with `transformation_type`
    (a library one or your own) is in it.

    Example:
        >>> from cadence import optimizers as O
        >>> list(O.optimizers())[:3]
        ['sgd', 'adam', 'adamw']
        >>> O.optimizers()["adamw"].reference
        'torch.optim.AdamW'
    """
    return {
        name: cls
        for name, cls in REGISTRY.items()
        if isinstance(cls, type) and issubclass(cls, Optimizer)
    }


def hyper(default: Any = dataclasses.MISSING, *, check: str = ANY) -> Any:
    """A float hyperparameter field: a number, a schedule or a callable of the count.

    It is a pytree leaf (a new value does not recompile), validated at
    construction by `check` (``"any"``, ``"nonneg"``, or ``"unit"`` for
    [0, 1)), settable per parameter group, saved by `to_config` and reported
    by `hyperparams`.
    """
    if check not in ("any", "nonneg", "unit"):
        raise ValueError(f"hyper: check must be 'any', 'nonneg' or 'unit', got {check!r}")
    return field(HYPER, default, check=check)


def flag(default: bool) -> Any:
    """A boolean option field (static: switching it recompiles), e.g. ``nesterov``."""
    if not isinstance(default, bool):
        raise TypeError(f"flag: default must be True or False, got {default!r}")
    return field(BOOL, default)


def optimizer_type(cls: type[_O]) -> type[_O]:
    """Make an `Optimizer` subclass a complete optimizer, registered by its class name.

    It gains the ``state_dtype`` and ``groups`` arguments (last), a `State`
    named tuple (``count``, the `per_leaf` buffers, the `shared` scalars,
    ``hyperparams``) unless it declares one, and everything every optimizer
    has: validation, `to_config`/`from_config`, parameter groups,
    `hyperparams`, sharded state, checkpoints and `step` (one generated pass
    per leaf on CPU when `kernel` is elementwise).

    See the README section "Write your own optimizer" for a complete example.
    """
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"optimizer_type: {cls!r} must be a subclass of Optimizer")
    annotations = cls.__dict__.get("__annotations__", {})
    extra = {}
    if "state_dtype" not in annotations:
        extra["state_dtype"] = field(DTYPE, None)
    if "groups" not in annotations:
        extra["groups"] = field(GROUPS, None)
    if extra:
        cls.__annotations__ = {**annotations, **dict.fromkeys(extra, Any)}
        for name, value in extra.items():
            setattr(cls, name, value)
    if "State" not in cls.__dict__:
        names = ("count", *cls.per_leaf, *cls.shared, "hyperparams")
        state = NamedTuple(f"{cls.__name__}State", [(n, Any) for n in names])
        state.__module__ = cls.__module__
        state.__doc__ = f"`{cls.__name__}` state: the update count, {', '.join(names[1:])}."
        cls.State = state
    return transformation_type(cls)
