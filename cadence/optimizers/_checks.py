"""Checks of what users pass in, and the unchecked rebuild that tree utilities need.

Helpers of `_base`'s validation; they know nothing of transformations' types.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["array_scalar", "check_complex", "check_count", "check_width", "rebuild_unchecked"]

INT32_MAX = int(np.iinfo(np.int32).max)


def rebuild_unchecked(cls: type, fields: dict[str, Any]) -> Any:
    """An instance of `cls` with these fields, unvalidated, as tree utilities rebuild one.

    jax, equinox and optax put tracers, arrays, None, booleans or sentinels in
    the leaves (``eqx.partition``, ``jax.tree.map(jnp.asarray, opt)``, vmap's
    axis trees): values a user's constructor call would rightly refuse.
    """
    obj = cls.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def array_scalar(owner: str, name: str, x: Any) -> Any:
    """A concrete 0-d NumPy or JAX array as the Python number it holds; anything else as is.

    Frameworks that keep the optimizer as static data (``nnx.Optimizer``)
    refuse arrays there, and the number gets the range checks of numbers.
    """
    if isinstance(x, jax.core.Tracer) or isinstance(x, np.bool_):
        return x
    if not isinstance(x, (np.ndarray, np.generic, jax.Array)):
        return x
    if np.shape(x) != () or not jnp.issubdtype(x.dtype, jnp.number):
        raise TypeError(
            f"{owner}: {name} must be a number (or a 0-d array), got {x!r}; to sweep "
            "values, build the optimizer inside the function jax.vmap maps"
        )
    if np.iscomplexobj(x):
        raise TypeError(f"{owner}: {name} must be a real number, got {x!r}")
    x = np.asarray(x)
    # A float32 array holds 1e-3 as 0.0010000000474974513: keep the number its
    # dtype prints (the same float32), as the user wrote it.
    narrow = jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize <= 4
    return float(str(x.astype(np.float32))) if narrow else float(x)


def check_width(owner: str, name: str, dtype: np.dtype) -> None:
    """Refuse a state dtype too narrow for optimizer state (the 8-bit floats)."""
    if dtype.itemsize < 2:
        # float8_e4m3fn holds magnitudes from about 2e-3 to 448: a second
        # moment (squared gradients) underflows to 0, and Adam divides by eps.
        raise ValueError(
            f"{owner}: {name} {dtype.name} is too narrow for optimizer state (it cannot "
            "hold second moments); use bfloat16, float16, float32 or float64"
        )


def check_count(obj: Any, name: str) -> None:
    """Refuse a bool as a count, and a count past the int32 counters' limit."""
    x = getattr(obj, name)
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{type(obj).__name__}: {name} must be an integer, got {x!r}")
    if isinstance(x, numbers.Real) and x > INT32_MAX:
        raise ValueError(
            f"{type(obj).__name__}: {name} must be <= {INT32_MAX} (2**31 - 1, the int32 "
            f"counters' limit), got {x!r}"
        )


def check_complex(owner: str, where: str, g: Any, r: Any, what: str) -> None:
    """Complex gradients on real parameters: refuse, instead of dropping their imaginary part."""
    if not hasattr(g, "dtype") or not hasattr(r, "dtype"):
        return
    if jnp.issubdtype(g.dtype, jnp.complexfloating) and not jnp.issubdtype(
        r.dtype, jnp.complexfloating
    ):
        raise ValueError(
            f"{owner}: grads at {where} are complex ({g.dtype}) but {what} is real "
            f"({r.dtype}) there; pass real gradients (e.g. jnp.real(g))"
        )
