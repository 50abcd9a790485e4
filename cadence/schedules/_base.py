"""The `Schedule` base class and the machinery every concrete schedule shares.

A concrete schedule is declared as a plain class body with annotated fields and
decorated with `schedule_type`, which makes it a frozen dataclass, a registered
JAX pytree (leaf fields are traced, static fields are part of the treedef), a
named type for the config loader, and final.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, final

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["Schedule"]

# Field kinds, kept in dataclass field metadata. They drive validation of config
# input and the leaf/static split of the pytree.
LEAF = "leaf"  # a float hyperparameter: a pytree leaf
LEAVES = "leaves"  # a tuple of float hyperparameters: pytree leaves
OPT_LEAF = "opt_leaf"  # a float hyperparameter or None
INT = "int"  # a step count: static
NUMBER = "number"  # a possibly fractional step count: static
INTS = "ints"  # a tuple of step counts: static
STR = "str"
BOOL = "bool"
OPT_INT = "opt_int"
CHILD = "child"  # a schedule
CHILDREN = "children"  # a tuple of schedules
OPERAND = "operand"  # a schedule or a float leaf
FUNCTION = "function"  # a Python callable: static, not serializable

_STATIC_KINDS = frozenset({INT, NUMBER, INTS, STR, BOOL, OPT_INT, FUNCTION})

REGISTRY: dict[str, type[Schedule]] = {}

_S = TypeVar("_S", bound=type)


def field(kind: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field of the given kind (see the constants above)."""
    return dataclasses.field(default=default, metadata={"kind": kind})


def kinds(cls: type) -> dict[str, str]:
    """Field name -> kind for a registered schedule type."""
    return {f.name: f.metadata["kind"] for f in dataclasses.fields(cls)}


def float_dtype() -> jnp.dtype:
    """float32, or float64 under `jax_enable_x64`."""
    return jnp.asarray(0.0).dtype


def as_float(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, dtype=float_dtype())


def as_step(step: Any) -> jax.Array:
    """Steps as a float array; refuses bools and non-numbers.

    Integers of any size are accepted: a Python or NumPy integer beyond int32
    (a token count, say) goes through float64 on the host, where converting it
    to jax's default int32 first would overflow or wrap around.
    """
    if step is None or isinstance(step, (bool, np.bool_, str, bytes)):
        raise TypeError(f"step must be a number or an array of numbers, got {step!r}")
    if isinstance(step, numbers.Integral) or (
        isinstance(step, np.ndarray) and np.issubdtype(step.dtype, np.integer)
    ):
        return as_float(np.asarray(step, dtype=np.float64))
    try:
        dtype = jnp.result_type(step)
    except (TypeError, ValueError):
        raise TypeError(f"step must be a number or an array of numbers, got {step!r}") from None
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"step must be integer or real, got dtype {dtype} ({step!r})")
    return as_float(step)


def is_concrete_number(x: Any) -> bool:
    """True for Python and NumPy real scalars (not tracers, not jax arrays)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class Schedule(abc.ABC):
    """A learning-rate (or any hyperparameter) schedule: a pure function of the step.

    Call it with a Python int, a jnp scalar or an integer array of steps; it
    returns a float array of the same shape (float32, or float64 under
    `jax_enable_x64`). ``s(k)`` is the value used by the k-th update, counting
    from 0. Schedules compose with arithmetic (``s * 2``, ``s + t``, ``1 - s``),
    with a number on either side: a Python, NumPy or JAX scalar, traced too.

    Step counts, boundaries and steps may exceed int32 (token-counted runs
    do). In float32 a step past 2**24 is itself rounded to float32 (2**31 - 1
    counts as 2**31); under `jax_enable_x64` steps are exact. Under `jit`
    without x64, JAX turns int64 arguments into int32 before a schedule sees
    them: pass such steps as Python ints or floats.

    Example:
        >>> from cadence import schedules as S
        >>> s = S.warmup(S.cosine(1e-3, 90), 10)
        >>> round(float(s(10)), 6)
        0.001
    """

    # NumPy arrays and scalars defer to the reflected operators below, so that
    # ``np.float32(2) * s`` is a schedule rather than an object array.
    __array_ufunc__ = None

    def __call__(self, step: ArrayLike) -> jax.Array:
        return self._value(as_step(step))

    @abc.abstractmethod
    def _value(self, t: jax.Array) -> jax.Array:
        """The schedule at float steps `t` (already cast to the float dtype)."""

    def __mul__(self, other: Schedule | ArrayLike) -> Schedule:
        return _arith_or_not("*", self, other)

    def __rmul__(self, other: ArrayLike) -> Schedule:
        return _arith_or_not("*", other, self)

    def __truediv__(self, other: Schedule | ArrayLike) -> Schedule:
        return _arith_or_not("/", self, other)

    def __rtruediv__(self, other: ArrayLike) -> Schedule:
        return _arith_or_not("/", other, self)

    def __add__(self, other: Schedule | ArrayLike) -> Schedule:
        return _arith_or_not("+", self, other)

    def __radd__(self, other: ArrayLike) -> Schedule:
        return _arith_or_not("+", other, self)

    def __sub__(self, other: Schedule | ArrayLike) -> Schedule:
        return _arith_or_not("-", self, other)

    def __rsub__(self, other: ArrayLike) -> Schedule:
        return _arith_or_not("-", other, self)


def schedule_type(cls: _S) -> _S:
    """Make `cls` a frozen dataclass, a pytree, a registered config type and final.

    Leaf kinds become pytree data fields; static kinds become metadata (they
    must be hashable, so sequences are stored as tuples).
    """
    cls = dataclasses.dataclass(frozen=True, eq=True, repr=cls.__repr__ is object.__repr__)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if f.metadata["kind"] not in _STATIC_KINDS]
    meta = [f.name for f in fields if f.metadata["kind"] in _STATIC_KINDS]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    name = getattr(cls, "config_name", cls.__name__)
    if name in REGISTRY:
        raise RuntimeError(f"schedule type {name!r} registered twice")
    REGISTRY[name] = cls
    return final(cls)


# --------------------------------------------------------------------------
# Validation helpers. Each runs in `__post_init__` and must let tracers and
# other non-concrete leaves through untouched: jax rebuilds schedules with
# tracers as leaves under `jit`/`vmap`, and with placeholder objects in some
# tree utilities.


def set_field(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def check_leaf(
    obj: Any,
    name: str,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    optional: bool = False,
) -> None:
    """Validate a float leaf; normalise concrete Python and NumPy numbers to floats.

    Concrete arrays (0-d, or the stacked leaves of a sweep) are checked value
    by value with the same rules and kept as arrays; tracers pass untouched.
    """
    owner = type(obj).__name__
    x = getattr(obj, name)
    if x is None and optional:
        return
    if isinstance(x, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{owner}: {name} must be a number, got {x!r}")
    if isinstance(x, numbers.Complex) and not isinstance(x, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {x!r}")
    if isinstance(x, numbers.Real):
        x = float(x)
        _check_values(owner, name, np.asarray(x), positive, nonnegative)
        set_field(obj, name, x)
    elif isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer):
        values = np.asarray(x)
        if not (
            np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
        ):
            raise TypeError(f"{owner}: {name} must be real, got dtype {values.dtype}")
        _check_values(owner, name, values.astype(np.float64), positive, nonnegative)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_values(owner: str, name: str, x: np.ndarray, positive: bool, nonnegative: bool) -> None:
    shown = x.item() if x.ndim == 0 else x
    if np.any(np.isnan(x)):
        raise ValueError(f"{owner}: {name} must not be NaN, got {shown!r}")
    # An infinite value has no use in a schedule (a missing bound is None) and
    # turns into NaN as soon as it meets a zero weight.
    # Values beyond float32's range are infinite in the default dtype too.
    if np.any(np.isinf(x)) or np.any(np.abs(x) > _FLOAT32_MAX):
        raise ValueError(f"{owner}: {name} must be finite (within float32's range), got {shown!r}")
    if positive and not np.all(x > 0):
        raise ValueError(f"{owner}: {name} must be > 0, got {shown!r}")
    if nonnegative and not np.all(x >= 0):
        raise ValueError(f"{owner}: {name} must be >= 0, got {shown!r}")


def check_leaves(obj: Any, name: str) -> None:
    owner = type(obj).__name__
    xs = getattr(obj, name)
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
        raise TypeError(f"{owner}: {name} must be a sequence of numbers, got {xs!r}")
    out = []
    for x in xs:
        if isinstance(x, (bool, np.bool_)):
            raise TypeError(f"{owner}: {name} must hold numbers, got {x!r}")
        if isinstance(x, numbers.Real):
            x = float(x)
            if not math.isfinite(x) or abs(x) > _FLOAT32_MAX:
                raise ValueError(f"{owner}: {name} must be finite, got {xs!r}")
        out.append(x)
    set_field(obj, name, tuple(out))


def check_int(obj: Any, name: str, *, minimum: int = 0, optional: bool = False) -> None:
    owner = type(obj).__name__
    x = getattr(obj, name)
    if x is None and optional:
        return
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be an integer, got {x!r}")
    if not isinstance(x, numbers.Integral):
        if isinstance(x, numbers.Real) and float(x).is_integer():
            x = int(x)
        else:
            raise TypeError(f"{owner}: {name} must be an integer, got {x!r}")
    x = operator.index(x)
    if x < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {x!r}")
    set_field(obj, name, x)


def check_number(obj: Any, name: str, *, positive: bool = True) -> None:
    """A static step count that may be fractional (kept as int when whole)."""
    owner = type(obj).__name__
    x = getattr(obj, name)
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {x!r}")
    x = int(x) if isinstance(x, numbers.Integral) else float(x)
    if math.isnan(x) or math.isinf(x):
        raise ValueError(f"{owner}: {name} must be finite, got {x!r}")
    if positive and not x > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {x!r}")
    if not positive and x < 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {x!r}")
    set_field(obj, name, x)


def check_ints(
    obj: Any, name: str, *, strictly_increasing: bool, minimum: int = 0, sort: bool = False
) -> None:
    owner = type(obj).__name__
    xs = getattr(obj, name)
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
        raise TypeError(f"{owner}: {name} must be a sequence of integers, got {xs!r}")
    out = []
    for x in xs:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{owner}: {name} must hold integers, got {x!r}")
        x = operator.index(x)
        if x < minimum:
            raise ValueError(f"{owner}: {name} must be >= {minimum}, got {xs!r}")
        out.append(x)
    if sort:
        out.sort()
    pairs = list(itertools.pairwise(out))
    if strictly_increasing and any(b <= a for a, b in pairs):
        raise ValueError(f"{owner}: {name} must be strictly increasing, got {xs!r}")
    if not strictly_increasing and any(b < a for a, b in pairs):
        raise ValueError(f"{owner}: {name} must be sorted, got {xs!r}")
    set_field(obj, name, tuple(out))


def check_choice(obj: Any, name: str, choices: Sequence[str]) -> None:
    owner = type(obj).__name__
    x = getattr(obj, name)
    if x not in choices:
        raise ValueError(
            f"{owner}: unknown {name} {x!r}; expected one of {', '.join(map(repr, choices))}"
        )


def check_bool(obj: Any, name: str) -> None:
    owner = type(obj).__name__
    x = getattr(obj, name)
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a bool, got {x!r}")
    set_field(obj, name, bool(x))


def check_child(obj: Any, name: str) -> None:
    owner = type(obj).__name__
    x = getattr(obj, name)
    if not isinstance(x, Schedule) and _is_user_value(x):
        raise TypeError(f"{owner}: {name} must be a Schedule, got {x!r}")


def check_children(obj: Any, name: str, *, minimum: int = 1) -> None:
    owner = type(obj).__name__
    xs = getattr(obj, name)
    if isinstance(xs, Schedule) or not isinstance(xs, Sequence):
        raise TypeError(f"{owner}: {name} must be a sequence of schedules, got {xs!r}")
    for x in xs:
        if not isinstance(x, Schedule):
            raise TypeError(f"{owner}: {name} must hold schedules, got {x!r}")
    if len(xs) < minimum:
        raise ValueError(f"{owner}: {name} needs at least {minimum}, got {len(xs)}")
    set_field(obj, name, tuple(xs))


def _is_user_value(x: Any) -> bool:
    # Placeholders that jax substitutes while rebuilding trees are `object()`s.
    return isinstance(x, (numbers.Number, str, bytes, Sequence, Callable, type(None)))


def evaluate(operand: Schedule | ArrayLike, t: jax.Array) -> jax.Array:
    """A schedule at `t`, or a constant operand broadcast to `t`'s shape."""
    if isinstance(operand, Schedule):
        return operand(t)
    return jnp.broadcast_to(as_float(operand), jnp.shape(t))


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den == 0 (with a gradient-safe denominator)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


# --------------------------------------------------------------------------
# Arithmetic.

_OPS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "+": jnp.add,
    "-": jnp.subtract,
    "*": jnp.multiply,
    "/": jnp.divide,
}


@schedule_type
class arithmetic(Schedule):
    """``left op right`` for schedules and numbers; built by ``s * x``, ``s + t``, ...

    Not called directly: use the operators. It prints as the expression.
    """

    op: str = field(STR)
    left: Schedule | float = field(OPERAND)
    right: Schedule | float = field(OPERAND)

    def __post_init__(self) -> None:
        check_choice(self, "op", tuple(_OPS))
        for side in ("left", "right"):
            x = getattr(self, side)
            if isinstance(x, Schedule):
                continue
            if isinstance(x, (numbers.Real, np.ndarray, jax.Array)) or not _is_user_value(x):
                check_leaf(self, side)
            else:
                raise TypeError(
                    f"schedule arithmetic: {side} operand must be a number or a Schedule, got {x!r}"
                )
        right = self.right
        if (
            self.op == "/"
            and isinstance(right, (float, np.ndarray, jax.Array))
            and not isinstance(right, jax.core.Tracer)
            and np.any(np.asarray(right) == 0)
        ):
            raise ValueError("schedule arithmetic: division by zero")

    def _value(self, t: jax.Array) -> jax.Array:
        return _OPS[self.op](evaluate(self.left, t), evaluate(self.right, t))

    def __repr__(self) -> str:
        return f"({self.left!r} {self.op} {self.right!r})"


def _arith_or_not(op: str, left: Any, right: Any) -> Schedule:
    """``left op right`` as a schedule, or NotImplemented for other operand types."""
    operands = [_operand(x) for x in (left, right)]
    if any(x is None for x in operands):
        return NotImplemented
    return arithmetic(op, *operands)


def _operand(x: Any) -> Any:
    """`x` as an arithmetic operand, or None when it is not a number or a schedule."""
    if isinstance(x, Schedule) or is_concrete_number(x):
        return x
    if not isinstance(x, (np.ndarray, jax.Array, jax.core.Tracer)):
        return None
    # A JAX or NumPy scalar, concrete or traced (vmap, grad), is a number.
    if np.ndim(x) != 0:
        raise TypeError(
            "schedule arithmetic: an array operand must be a scalar, got shape "
            f"{np.shape(x)}; to build many schedules, vmap over the scalar"
        )
    dtype = jnp.result_type(x)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"schedule arithmetic: operand must be real, got {x!r}")
    if isinstance(x, jax.core.Tracer):
        return x
    # Concrete: a plain float, so the result prints, compares and hashes as usual.
    return float(x)
