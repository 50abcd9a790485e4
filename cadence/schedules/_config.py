"""Schedules to and from JSON-safe dicts.

`from_config` only ever builds registered schedule types, from plain JSON data:
no `eval`, no pickle, no imports by name.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import _base as B
from ._base import REGISTRY, Schedule

__all__ = ["from_config", "to_config"]

# Nesting allowed in a config. Real schedules nest a few levels (a warmup
# around restarts around a cosine, times a number); the bound turns a
# hostile or broken config into a ValueError instead of a RecursionError.
MAX_DEPTH = 32


def to_config(s: Schedule) -> dict[str, Any]:
    """A JSON-safe dict describing `s`, nested for combinators.

    ``from_config(to_config(s)) == s`` for every schedule except `from_fn`.

    Args:
        s: the schedule.

    Returns:
        ``{"type": name, field: value, ...}``.

    Raises:
        ValueError: for a `from_fn` schedule, or a leaf that is not a concrete
            scalar (a tracer, a batch of values).

    Example:
        >>> from cadence import schedules as S
        >>> S.to_config(S.warmup(S.constant(0.1), 5))
        {'type': 'warmup', 's': {'type': 'constant', 'value': 0.1}, 'steps': 5, 'init': 0.0}
    """
    if not isinstance(s, Schedule):
        raise TypeError(f"to_config: expected a Schedule, got {s!r}")
    name = type(s).__name__
    out: dict[str, Any] = {"type": name}
    for f in dataclasses.fields(s):
        kind = f.metadata["kind"]
        value = getattr(s, f.name)
        where = f"{name}.{f.name}"
        if kind == B.FUNCTION:
            raise ValueError(
                f"to_config: {name} holds a Python function ({where}) and has no config"
            )
        if kind == B.CHILD:
            out[f.name] = to_config(value)
        elif kind == B.CHILDREN:
            out[f.name] = [to_config(c) for c in value]
        elif kind == B.OPERAND:
            out[f.name] = (
                to_config(value) if isinstance(value, Schedule) else config_float(value, where)
            )
        elif kind in (B.LEAF, B.OPT_LEAF):
            out[f.name] = None if value is None else config_float(value, where)
        elif kind == B.LEAVES:
            out[f.name] = [config_float(v, where) for v in value]
        elif kind == B.INTS:
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def config_float(x: Any, where: str) -> float:
    """A concrete, finite scalar hyperparameter as a Python float for JSON."""
    if isinstance(x, jax.core.Tracer):
        raise ValueError(f"to_config: {where} is a traced value")
    if np.ndim(x) != 0:
        raise ValueError(f"to_config: {where} is not a scalar (shape {np.shape(x)})")
    value = float(x)
    if not math.isfinite(value):
        # JSON has no inf or NaN; nothing valid needs them.
        raise ValueError(f"to_config: {where} is not finite ({value})")
    return value


def from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from `to_config`'s output.

    Args:
        config: a dict as produced by `to_config` (e.g. read from JSON).

    Returns:
        The schedule, equal to the one that produced the config.

    Raises:
        ValueError: for an unknown type, missing or unknown fields, values of
            the wrong kind, or schedules nested deeper than `MAX_DEPTH`
            levels; the message names the offending path.

    Example:
        >>> from cadence import schedules as S
        >>> S.from_config({"type": "linear", "init": 1.0, "end": 0.0, "steps": 10})
        linear(init=1.0, end=0.0, steps=10)
    """
    return _build(config, "config")


def registered_type(
    config: Any, path: str, registry: dict[str, type[Any]], what: str, known: list[str]
) -> type[Any]:
    """The registered class named by ``config["type"]``; refuses anything else."""
    if not isinstance(config, dict):
        raise ValueError(f"from_config: {path} must be a dict, got {type(config).__name__}")
    name = config.get("type")
    if not isinstance(name, str) or name not in registry:
        raise ValueError(
            f"from_config: {path}.type {name!r} is not a {what} type; known: {', '.join(known)}"
        )
    return registry[name]


def _build(config: Any, path: str) -> Schedule:
    depth = path.count(".")  # one "." per field a child schedule sits in
    if depth >= MAX_DEPTH:
        raise ValueError(f"from_config: {path}: schedules nest deeper than {MAX_DEPTH} levels")
    known = sorted(n for n in REGISTRY if n != "from_fn")
    cls = registered_type(config, path, REGISTRY, "schedule", known)
    name = cls.__name__
    kinds = B.kinds(cls)
    if B.FUNCTION in kinds.values():
        raise ValueError(f"from_config: {path}: {name} schedules cannot be built from a config")
    return build_fields(cls, config, kinds, path, _field)


def build_fields(
    cls: type[Any],
    config: dict[str, Any],
    kinds: dict[str, str],
    path: str,
    convert: Callable[[Any, str, str], Any],
) -> Any:
    """Construct the registered dataclass `cls` from `config`'s fields.

    Shared by the schedule and optimizer loaders: unknown and missing fields
    are refused, each value goes through ``convert(value, kind, path)``, and
    the constructor's own validation errors come out as ValueErrors naming
    `path`.
    """
    name = cls.__name__
    unknown = sorted(set(config) - set(kinds) - {"type"})
    if unknown:
        raise ValueError(f"from_config: {path}: unknown field(s) {unknown} for {name}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in config:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"from_config: {path}: missing field {f.name!r} for {name}")
            continue
        kwargs[f.name] = convert(config[f.name], kinds[f.name], f"{path}.{f.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"from_config: {path}: {e}") from e


def is_number(x: Any) -> bool:
    """A real number that is not a bool (JSON's true/false are not numbers)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _field(value: Any, kind: str, path: str) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"from_config: {path} must be {expected}, got {value!r}")

    if kind == B.CHILD:
        return _build(value, path)
    if kind == B.CHILDREN:
        if not isinstance(value, list):
            raise bad("a list of schedule configs")
        return tuple(_build(c, f"{path}[{i}]") for i, c in enumerate(value))
    if kind == B.OPERAND:
        return _build(value, path) if isinstance(value, dict) else _number(value, bad)
    if kind in (B.LEAF, B.NUMBER):
        return _number(value, bad)
    if kind == B.OPT_LEAF:
        return None if value is None else _number(value, bad)
    if kind == B.LEAVES:
        if not isinstance(value, list):
            raise bad("a list of numbers")
        return tuple(_number(v, bad) for v in value)
    if kind in (B.INT, B.OPT_INT):
        if value is None and kind == B.OPT_INT:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if kind == B.INTS:
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise bad("a list of integers")
        return tuple(value)
    if kind == B.STR:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == B.BOOL:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    raise bad("a known field")  # pragma: no cover


def _number(value: Any, bad: Any) -> float | int:
    if not is_number(value):
        raise bad("a number")
    return value
