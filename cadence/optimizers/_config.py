"""Transformations to and from JSON-safe dicts.

`from_config` only ever builds registered transformation types (and schedules
through `S.from_config`) from plain JSON data: no `eval`, no pickle, no
imports by name.
"""

from __future__ import annotations

from typing import Any

from cadence import schedules as S
from cadence.schedules._config import build_fields, is_number, registered_type

from . import _base as B
from ._base import REGISTRY, Transformation
from ._partition import partition, rules
from ._transforms import chain

__all__ = ["from_config", "to_config"]


def to_config(tx: Transformation) -> dict[str, Any]:
    """A JSON-safe dict describing `tx`, nested for chains and wrappers (see `to_config()`)."""
    if not isinstance(tx, Transformation):
        raise TypeError(f"to_config: expected a cadence transformation, got {tx!r}")
    return tx.to_config()


def from_config(config: dict[str, Any]) -> Transformation:
    """Rebuild an optimizer or transformation from its `to_config()` dict.

    Args:
        config: a dict as produced by ``tx.to_config()`` (e.g. read from JSON).

    Returns:
        The transformation, equal to the one that produced the config.

    Raises:
        ValueError: for an unknown type, missing or unknown fields, or values
            of the wrong kind; the message names the offending path.

    Example:
        >>> from cadence import optimizers as O, schedules as S
        >>> opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(S.cosine(1e-3, 1000)))
        >>> O.from_config(opt.to_config()) == opt
        True
        >>> O.from_config({"type": "sgd", "lr": 0.1, "momentum": 0.9})
        sgd(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
            state_dtype=None, groups=None)
    """
    return _build(config, "config")


def _build(config: Any, path: str) -> Transformation:
    cls = registered_type(config, path, REGISTRY, "transformation", sorted(REGISTRY))
    if cls is chain:
        unknown = sorted(set(config) - {"type", "txs"})
        txs = config.get("txs")
        if unknown or not isinstance(txs, list):
            raise ValueError(f"from_config: {path}: chain needs a list 'txs' and nothing else")
        return chain(*(_build(c, f"{path}.txs[{i}]") for i, c in enumerate(txs)))
    if cls is partition:
        unknown = sorted(set(config) - {"type", "transforms", "rules"})
        transforms, items = config.get("transforms"), config.get("rules")
        if unknown or not isinstance(transforms, dict) or not isinstance(items, list):
            raise ValueError(
                f"from_config: {path}: partition needs a dict 'transforms' and a list 'rules' "
                "and nothing else"
            )
        built = {k: _build(c, f"{path}.transforms[{k!r}]") for k, c in transforms.items()}
        try:
            label_fn = rules(*items)
        except TypeError as e:
            raise ValueError(f"from_config: {path}.rules: {e}") from e
        try:
            return partition(built, label_fn)
        except TypeError as e:
            raise ValueError(f"from_config: {path}: {e}") from e
    return build_fields(cls, config, B.kinds(cls), path, _field)


def _field(value: Any, kind: str, path: str) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"from_config: {path} must be {expected}, got {value!r}")

    if kind == B.HYPER:
        return _hyper_value(value, path, bad)
    if kind == B.FLOAT:
        if not is_number(value):
            raise bad("a number")
        return value
    if kind == B.NORM:
        if value == "inf" or is_number(value):
            return value
        raise bad('a number or "inf"')
    if kind == B.CHILD:
        return _build(value, path)
    if kind == B.GROUPS:
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(g, dict) for g in value.values()):
            raise bad("a dict of dicts")
        return {
            pattern: {
                # A bool is a group's flag (``own_step``): `Groups.build` checks its name.
                k: v if isinstance(v, bool) else _hyper_value(v, f"{path}[{pattern!r}][{k!r}]", bad)
                for k, v in g.items()
            }
            for pattern, g in value.items()
        }
    if kind == B.INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        return value
    if kind == B.BOOL:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == B.STR:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == B.DTYPE:
        # An optimizer's state_dtype may be a dict by buffer (its own check
        # validates the names and values).
        by_buffer = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        if value is not None and not isinstance(value, str) and not by_buffer:
            raise bad("a dtype name, a dict of them by buffer, or null")
        return value
    if kind == B.FLOATS:
        if not isinstance(value, list) or not all(is_number(v) for v in value):
            raise bad("a list of numbers")
        return tuple(value)
    if kind == B.MAYBE_FLOAT:
        if value is not None and not is_number(value):
            raise bad("a number or null")
        return value
    if kind == B.MAYBE_STR:
        if value is not None and not isinstance(value, str):
            raise bad("a string or null")
        return value
    raise bad("a known field")  # pragma: no cover


def _hyper_value(value: Any, path: str, bad: Any) -> Any:
    if isinstance(value, dict):
        try:
            return S.from_config(value)
        except ValueError as e:
            raise ValueError(f"from_config: {path}: {e}") from e
    if not is_number(value):
        raise bad("a number or a schedule config")
    return value
