"""`state_dtype` of an optimizer: one dtype, one per buffer, or 8-bit moments.

``state_dtype`` takes None (each buffer in its parameter's dtype), a dtype
for every buffer, ``"8bit"`` (every moment the rule declares in
`Optimizer.eight_bit` stored blockwise-quantized, `_quantize`), or a dict by
buffer name whose values are dtypes, None or ``"8bit"``
(``{"mu": jnp.bfloat16, "nu": jnp.float32}``). A dict may name any buffer
the rule can keep (a field of its `State`), also one this configuration does
not allocate (Adam's ``nu_max`` without amsgrad): the entry then has no
effect, so that one dict serves a rule's every configuration, as its
groups do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ._base import check_dtype
from ._quantize import EIGHT_BIT, is_quantized, quantize, stores_8bit

__all__ = [
    "BufferDtypes",
    "check_state_dtype",
    "codes_view",
    "init_stored",
    "is_signed",
    "stored_dtype",
]

SIGNED = "signed"
UNSIGNED = "unsigned"


class BufferDtypes(dict):
    """A read-only ``{buffer: dtype name or "8bit"}``: hashable, so the optimizer stays static.

    A dict, so that it prints, compares and saves to JSON (`to_config`) as one.
    """

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("an optimizer's state_dtype is read-only; build a new optimizer")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


def is_special(value: Any) -> bool:
    """Whether `value` is a form of state_dtype that plain dtype validation refuses."""
    return isinstance(value, Mapping) or (isinstance(value, str) and value == EIGHT_BIT)


def check_state_dtype(opt: Any, value: Any) -> str | BufferDtypes | None:
    """`value` validated for `opt`: "8bit" or a dict (plain dtypes are `check_dtype`'s)."""
    owner = type(opt).__name__
    buffers = list(opt._buffer_names())
    moments = sorted(opt.eight_bit)
    if isinstance(value, str):  # "8bit"
        if not any(b in opt.eight_bit for b in opt.buffers()):
            raise ValueError(
                f"{owner}: state_dtype='8bit' stores moment buffers in 8 bits, but this "
                f"configuration keeps none (it keeps {list(opt.buffers())}; {owner}'s 8-bit "
                f"buffers: {moments or 'none'})"
            )
        return EIGHT_BIT
    out: dict[str, str | None] = {}
    for name, dtype in value.items():
        if not isinstance(name, str) or name not in buffers:
            raise ValueError(
                f"{owner}: state_dtype names an unknown buffer {name!r}; {owner}'s buffers "
                f"are {buffers}"
            )
        if isinstance(dtype, str) and dtype == EIGHT_BIT:
            if name not in opt.eight_bit:
                raise ValueError(
                    f"{owner}: state_dtype[{name!r}] = '8bit', but {name!r} is not a moment "
                    f"that can be stored in 8 bits ({owner}'s 8-bit buffers: {moments or 'none'})"
                )
            out[name] = EIGHT_BIT
            continue
        try:
            out[name] = check_dtype(owner, f"state_dtype[{name!r}]", dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{e} (state_dtype by buffer takes a floating dtype, None or '8bit' for each "
                f"of {buffers})"
            ) from None
    return BufferDtypes(out) if out else None


def stored_dtype(opt: Any, name: str, param_dtype: Any) -> Any:
    """How buffer `name` of a parameter of `param_dtype` is stored: a dtype or "8bit"."""
    spec = opt.state_dtype
    if isinstance(spec, Mapping):
        spec = spec.get(name)
    elif spec == EIGHT_BIT and name not in opt.eight_bit:
        spec = None
    return spec or param_dtype


def init_stored(opt: Any, name: str, shape: tuple[int, ...], param_dtype: Any, hp: dict) -> Any:
    """Buffer `name`'s initial value as stored: an array, or a `Quantized` for 8-bit state.

    A leaf under `MIN_SIZE` elements keeps an 8-bit buffer in float32, as
    bitsandbytes does (the absmax would cost more than the codes save).
    """
    dtype = stored_dtype(opt, name, param_dtype)
    if dtype != EIGHT_BIT:
        return opt.init_buffer(name, shape, dtype, hp)
    x = opt.init_buffer(name, shape, jnp.float32, hp)
    return quantize(x, is_signed(opt, name)) if stores_8bit(shape) else x


def is_signed(opt: Any, name: str) -> bool:
    """Whether 8-bit buffer `name` uses the signed map (else the unsigned one)."""
    return opt.eight_bit[name] == SIGNED


def codes_view(tree: Any) -> Any:
    """A buffer tree with each `Quantized` leaf shown as its codes (the parameter's shape)."""
    return jax.tree.map(lambda x: x.codes if is_quantized(x) else x, tree, is_leaf=is_quantized)
