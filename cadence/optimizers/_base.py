"""The `Transformation` base class and the machinery every optimizer and wrapper shares.

A concrete transformation is a plain class body with annotated fields,
decorated with `transformation_type`: that makes it a frozen dataclass, a
registered JAX pytree (float hyperparameters are leaves, options are static),
a named type for `from_config`, and final.

Every transformation is also an `optax.GradientTransformationExtraArgs`: the
(init, update) pair that optax unpacks is a pair of forwarders to the object's
own methods. optax's `chain`, `MultiSteps` and the other combinators check for
that type to decide whether extra keyword arguments (``value=loss``) reach the
transformation, so being one (rather than merely having ``init`` and
``update``) is what lets `reduce_on_plateau` work inside `optax.chain`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, final

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cadence import schedules as S
from cadence.schedules import _base as SB
from cadence.schedules._config import config_float

from ._checks import array_scalar, check_complex, check_count, check_width, rebuild_unchecked
from ._sharding import placing
from ._trees import path_str

__all__ = ["Transformation"]

# Field kinds, kept in dataclass field metadata. They drive validation, the
# leaf/static split of the pytree, and config I/O.
HYPER = "hyper"  # a float hyperparameter: number, schedule or callable (a subtree)
FLOAT = "float"  # a plain float: a pytree leaf, not schedulable
GROUPS = "groups"  # parameter groups (a `Groups` pytree) or None
CHILD = "child"  # a wrapped transformation
INT = "int"  # static
STR = "str"  # static
BOOL = "bool"  # static
DTYPE = "dtype"  # static: a dtype name or None
NORM = "norm"  # static float that may be inf
FLOATS = "floats"  # static: a tuple of finite floats (Muon's ns_coefficients)
MAYBE_FLOAT = "maybe_float"  # static: a finite float or None (Adafactor's eps1)
MAYBE_STR = "maybe_str"  # static: a string or None (Muon's adjust_lr_fn)

_STATIC_KINDS = frozenset({INT, STR, BOOL, DTYPE, NORM, FLOATS, MAYBE_FLOAT, MAYBE_STR})

# Range checks for HYPER and FLOAT fields.
ANY = "any"
NONNEG = "nonneg"
UNIT = "unit"  # in [0, 1)

REGISTRY: dict[str, type[Transformation]] = {}

INT32_MAX = int(np.iinfo(np.int32).max)

_T = TypeVar("_T", bound=type)


def field(kind: str, default: Any = dataclasses.MISSING, *, check: str = ANY) -> Any:
    """A dataclass field of the given kind (see the constants above)."""
    return dataclasses.field(default=default, metadata={"kind": kind, "check": check})


def kinds(cls: type) -> dict[str, str]:
    """Field name -> kind for a transformation type."""
    return {f.name: f.metadata["kind"] for f in dataclasses.fields(cls)}


def hyper_fields(cls: type) -> dict[str, str]:
    """Float hyperparameter name -> range check, in declaration order."""
    return {
        f.name: f.metadata["check"] for f in dataclasses.fields(cls) if f.metadata["kind"] == HYPER
    }


class _Forward:
    """One half of the (init, update) pair that optax unpacks from a transformation.

    The tuple items must exist before the object does, so they reach the object
    through a one-element box filled right after construction.
    """

    __slots__ = ("_box", "_name")

    def __init__(self, box: list[Any], name: str) -> None:
        self._box = box
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._box[0], self._name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self._name} of {self._box[0]!r}>"


class Transformation(optax.GradientTransformationExtraArgs):
    """A gradient transformation: ``init(params) -> state``, ``update(...) -> (updates, state)``.

    Every cadence optimizer, building block and wrapper is one. It is a frozen,
    hashable dataclass whose float hyperparameters are pytree leaves (so it can
    be passed to a jitted step as an argument, and changing a number does not
    recompile), it prints as the call that builds it, and it is an
    `optax.GradientTransformationExtraArgs`, so optax accepts it anywhere.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from cadence import optimizers as O
        >>> opt = O.sgd(0.1)
        >>> isinstance(opt, O.Transformation), isinstance(opt, optax.GradientTransformation)
        (True, True)
        >>> params = {"w": jnp.ones(2)}
        >>> updates, state = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
        >>> optax.apply_updates(params, updates)["w"]
        Array([0.9, 0.9], dtype=float32)
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Transformation:
        del args, kwargs  # the dataclass __init__ takes them
        box: list[Any] = []
        self = tuple.__new__(cls, (_Forward(box, "init"), _Forward(box, "update")))
        box.append(self)
        return self

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The outermost `init` places the state like the parameters (shardings).
        if "init" in cls.__dict__:
            cls.init = placing(cls.__dict__["init"])

    def init(self, params: Any) -> Any:
        """The initial state for `params` (arrays or `jax.ShapeDtypeStruct`s under `eval_shape`)."""
        raise NotImplementedError

    def update(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        """Transform `updates` (gradients); returns the new updates and state."""
        raise NotImplementedError

    def step(self, grads: Any, state: Any, params: Any, **extra: Any) -> tuple[Any, Any]:
        """The new parameters and state: `update`, then ``optax.apply_updates``.

        Optimizers (and chains ending in one) override it with a single pass
        per leaf on CPU, giving the same numbers (a clipped chain's to float32
        rounding: see `Optimizer.step`).

        Example:
            >>> import jax.numpy as jnp
            >>> from cadence import optimizers as O
            >>> opt = O.clip_by_value(1.0)
            >>> params = jnp.zeros(2)
            >>> opt.step(jnp.array([3.0, -0.5]), opt.init(params), params)[0]
            Array([ 1. , -0.5], dtype=float32)
        """
        updates, state = self.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    def to_config(self) -> dict[str, Any]:
        """A JSON-safe dict describing this transformation; `from_config` rebuilds it.

        Raises:
            ValueError: if a hyperparameter is a plain Python function (it has no
                config) or the chain holds an optax transformation.

        Example:
            >>> from cadence import optimizers as O
            >>> O.adam(3e-4, amsgrad=True).to_config()["amsgrad"]
            True
        """
        return self._config(type(self).__name__)

    def _config(self, where: str) -> dict[str, Any]:
        """`to_config`, with `where` naming this transformation in error messages.

        By field kind: hyperparameters as numbers or schedule configs,
        wrapped transformations nested. Containers (`chain`, `partition`)
        override it.
        """
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            kind = f.metadata["kind"]
            value = getattr(self, f.name)
            at = f"{where}.{f.name}"
            if kind == HYPER:
                out[f.name] = _hyper_config(value, at)
            elif kind == FLOAT:
                out[f.name] = config_float(value, at)
            elif kind == GROUPS:
                out[f.name] = (
                    None
                    if value is None
                    else {
                        pattern: {
                            # A bool is a group's flag (``own_step``), kept as is.
                            k: v
                            if isinstance(v, bool)
                            else _hyper_config(v, f"{at}[{pattern!r}][{k!r}]")
                            for k, v in group.items()
                        }
                        for pattern, group in value.as_dict().items()
                    }
                )
            elif kind == CHILD:
                out[f.name] = value._config(at)
            elif kind == NORM:
                out[f.name] = "inf" if value == math.inf else value
            elif kind == FLOATS:
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return out

    def __ne__(self, other: object) -> bool:
        # The dataclass defines only __eq__; without this, `!=` would fall
        # through to the tuple base and compare the per-object forwarders.
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __reduce__(self) -> tuple[Any, ...]:
        # The tuple items are forwarders bound to this object; rebuild from fields.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return (_rebuild, (type(self), fields))

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            kind, check = f.metadata["kind"], f.metadata["check"]
            value = getattr(self, f.name)
            if kind == HYPER:
                set_field(self, f.name, normalize_hyper(owner, f.name, value, check))
            elif kind == FLOAT:
                set_field(self, f.name, check_float(owner, f.name, value, check))
            elif kind == BOOL:
                SB.check_bool(self, f.name)
            elif kind == DTYPE:
                set_field(self, f.name, check_dtype(owner, f.name, value))
            elif kind == CHILD:
                set_field(self, f.name, as_transformation(owner, f.name, value))
            elif kind == FLOATS:
                set_field(self, f.name, check_floats(owner, f.name, value, check))
            elif kind == MAYBE_FLOAT and value is not None:
                set_field(self, f.name, check_float(owner, f.name, value, check))
            elif kind == MAYBE_STR and not isinstance(value, (str, type(None))):
                raise TypeError(f"{owner}: {f.name} must be a string or None, got {value!r}")
        self._validate()

    def _validate(self) -> None:
        """Cross-field checks of a concrete class (tracers must pass through)."""


def _hyper_config(value: Any, where: str) -> Any:
    if isinstance(value, S.Schedule):
        try:
            return S.to_config(value)
        except ValueError as e:
            raise ValueError(
                f"to_config: {where} is a Python function, which has no config; use a cadence "
                f"schedule ({e})"
            ) from e
    return config_float(value, where)


def _rebuild(cls: type, fields: dict[str, Any]) -> Any:
    return cls(**fields)


@final
@dataclasses.dataclass(frozen=True, eq=True, repr=False)
class foreign(Transformation):
    """An optax (or other third-party) transformation held inside a cadence one.

    It is static in the pytree (its functions are not arrays) and has no config.
    """

    tx: Any = field("foreign")

    def init(self, params: Any) -> Any:
        return self.tx.init(params)

    def update(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        return optax.with_extra_args_support(self.tx).update(updates, state, params, **extra)

    def __repr__(self) -> str:
        return repr(self.tx)

    def _config(self, where: str) -> dict[str, Any]:
        raise ValueError(
            f"to_config: {where} is not a cadence transformation ({self.tx!r}); it has no config"
        )


jax.tree_util.register_dataclass(foreign, data_fields=[], meta_fields=["tx"])


def transformation_type(cls: _T) -> _T:
    """Make `cls` a frozen dataclass, a pytree, a registered config type and final.

    Hyperparameters named in the class's ``_static_zero`` are static while
    they are the number 0 (and leaves otherwise), so that a compiled step sees
    torch's ``if momentum != 0`` decisions as Python constants: the state
    layout and the code path are the same under `jit` as eagerly, and only
    switching such a hyperparameter on or off recompiles.
    """
    cls = dataclasses.dataclass(frozen=True, eq=True, repr="__repr__" not in cls.__dict__)(cls)
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if f.metadata["kind"] not in _STATIC_KINDS)
    meta = tuple(f.name for f in fields if f.metadata["kind"] in _STATIC_KINDS)
    static_zero = frozenset(getattr(cls, "_static_zero", ()))

    def flatten(obj: Any) -> tuple[list[tuple[Any, Any]], Any]:
        children, names, zeros = [], [], []
        for name in data:
            value = getattr(obj, name)
            if name in static_zero and is_zero(value):
                zeros.append((name, value))
            else:
                children.append((jax.tree_util.GetAttrKey(name), value))
                names.append(name)
        aux = (tuple(getattr(obj, n) for n in meta), tuple(names), tuple(zeros))
        return children, aux

    def unflatten(aux: Any, children: Any) -> Any:
        values, names, zeros = aux
        fields = dict(zip(meta, values, strict=True)) | dict(zeros)
        return rebuild_unchecked(cls, fields | dict(zip(names, children, strict=True)))

    jax.tree_util.register_pytree_with_keys(cls, flatten, unflatten)
    register(cls)
    return final(cls)


def register(cls: type) -> None:
    """Make `cls` buildable by `from_config` under its class name."""
    old = REGISTRY.get(cls.__name__)
    # A module run again (a notebook cell, `exec`) redefines its own types.
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(
            f"a transformation type named {cls.__name__!r} already exists "
            f"({old.__module__}.{old.__qualname__}); config names must be unique"
        )
    REGISTRY[cls.__name__] = cls


# --------------------------------------------------------------------------
# Validation. Every helper lets tracers and jax's placeholder objects through:
# jax rebuilds transformations with those as leaves under jit, vmap and in
# some tree utilities.

set_field = SB.set_field


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def check_float(owner: str, name: str, x: Any, check: str) -> Any:
    """Validate a float hyperparameter against `check`; return it as a Python float.

    A concrete 0-d array counts as the number it holds; a tracer stays as it is.
    """
    if isinstance(x, jax.core.Tracer):
        return x
    x = array_scalar(owner, name, x)
    if not _is_number(x):
        raise TypeError(
            f"{owner}: {name} must be a number, a schedule or a callable of the step, got {x!r}"
        )
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"{owner}: {name} must not be NaN")
    if check in (NONNEG, UNIT) and not x >= 0:
        raise ValueError(f"{owner}: {name} must be >= 0, got {x!r}")
    if check == UNIT and not x < 1:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {x!r}")
    if math.isinf(x):
        raise ValueError(f"{owner}: {name} must be finite, got {x!r}")
    return x


def check_floats(owner: str, name: str, xs: Any, check: str) -> tuple[float, ...]:
    """Validate a sequence of concrete floats; return it as a tuple (hashable, static)."""
    if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
        raise TypeError(f"{owner}: {name} must be a sequence of numbers, got {xs!r}")
    out = []
    for x in xs:
        if not _is_number(x):
            raise TypeError(f"{owner}: {name} must hold numbers, got {x!r}")
        out.append(check_float(owner, name, x, check))
    return tuple(out)


def normalize_hyper(owner: str, name: str, x: Any, check: str) -> Any:
    """A hyperparameter value as stored: a float, a schedule, or an array/tracer.

    Plain callables become `S.from_fn` schedules; numbers are range-checked.
    A schedule's values are not checked (they depend on the step).
    """
    if isinstance(x, S.Schedule):
        return x
    if isinstance(x, type):
        raise TypeError(f"{owner}: {name} must be a number, a schedule or a function, got {x!r}")
    if callable(x) and not isinstance(x, (jax.Array, np.ndarray, Transformation)):
        return S.from_fn(x)
    return check_float(owner, name, x, check)


def check_dtype(owner: str, name: str, x: Any) -> str | None:
    if x is None:
        return None
    try:
        if not isinstance(x, (str, type, np.dtype)):
            raise TypeError  # an array or number would pass as its own dtype
        dtype = jnp.dtype(x)
    except (TypeError, ValueError, SyntaxError) as e:  # NumPy's parser raises all three
        raise TypeError(f"{owner}: {name} must be a dtype or None, got {x!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{owner}: {name} must be a floating dtype, got {dtype.name}")
    check_width(owner, name, dtype)
    return dtype.name


def check_int(obj: Any, name: str, *, minimum: int) -> None:
    """A static count: an integer (not a bool) in [minimum, 2**31 - 1] (the int32 state)."""
    check_count(obj, name)
    SB.check_int(obj, name, minimum=minimum)


def check_choice(obj: Any, name: str, choices: Sequence[str]) -> None:
    SB.check_choice(obj, name, choices)


def is_zero(x: Any) -> bool:
    """True only for a concrete number equal to 0 (not a schedule, not a tracer)."""
    return _is_number(x) and x == 0


def as_transformation(owner: str, name: str, tx: Any) -> Any:
    """A cadence transformation as is; an optax one wrapped so it stays static."""
    if isinstance(tx, (Transformation, foreign)):
        return tx
    if isinstance(tx, type) or (callable(tx) and not hasattr(tx, "init")):
        # `O.skip_nonfinite(O.adam)`: the class (or an optax factory), not an optimizer.
        raise TypeError(
            f"{owner}: {name} must be a gradient transformation, got {tx!r}; "
            f"call it to build one (e.g. {getattr(tx, '__name__', 'adam')}(...))"
        )
    if callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None)):
        return foreign(tx)
    hint = "; build it with from_config" if isinstance(tx, dict) else ""
    raise TypeError(f"{owner}: {name} must be a gradient transformation, got {tx!r}{hint}")


# --------------------------------------------------------------------------
# Numerics shared by every transformation.

float_dtype = SB.float_dtype
as_float = SB.as_float


def zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    return jnp.where(count < INT32_MAX, count + 1, count)


def dtype_of(x: Any) -> jnp.dtype:
    """The dtype of an array, a `jax.ShapeDtypeStruct` or a Python number."""
    # Canonical: a NumPy float64 array is float32 to jax unless x64 is on.
    return jax.dtypes.canonicalize_dtype(x.dtype if hasattr(x, "dtype") else jnp.result_type(x))


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype the math runs in: the array's, but never narrower than float32."""
    return jnp.result_type(dtype, float_dtype())


# --------------------------------------------------------------------------
# Trees.


def _show(path: Sequence[Any]) -> str:
    return repr(path_str(path)) if path else "the root"


def check_tree(owner: str, grads: Any, reference: Any, what: str, *, shapes: bool = True) -> None:
    """Raise ValueError naming the first path where `grads` and `reference` differ.

    With ``shapes=False`` only the paths are compared (a state whose buffers
    are reductions of their parameters).

    Runs at trace time on structures and shapes only, so it costs nothing in a
    compiled step; it replaces jax's tree-mismatch traceback with a message
    that says which parameter is wrong.
    """
    gl, gdef = jax.tree_util.tree_flatten_with_path(grads)
    rl, rdef = jax.tree_util.tree_flatten_with_path(reference)
    if gdef == rdef:
        for (path, g), (_, r) in zip(gl, rl, strict=True) if shapes else ():
            if np.shape(g) != np.shape(r):
                raise ValueError(
                    f"{owner}: grads at {_show(path)} have shape {np.shape(g)}, but "
                    f"{what} has shape {np.shape(r)} there"
                )
            check_complex(owner, _show(path), g, r, what)
        return
    gpaths = [p for p, _ in gl]
    rpaths = [p for p, _ in rl]
    for gp, rp in zip(gpaths, rpaths, strict=False):
        if gp != rp:
            raise ValueError(
                f"{owner}: grads do not match {what}: first difference at {_show(gp)} in "
                f"grads vs {_show(rp)} in {what}"
            )
    if len(gpaths) > len(rpaths):
        raise ValueError(
            f"{owner}: grads do not match {what}: grads have {_show(gpaths[len(rpaths)])}, "
            f"which {what} lacks"
        )
    if len(rpaths) > len(gpaths):
        raise ValueError(
            f"{owner}: grads do not match {what}: grads lack {_show(rpaths[len(gpaths)])}"
        )
    raise ValueError(
        f"{owner}: grads do not match {what}: same paths, different containers ({gdef} vs {rdef})"
    )


def zeros_like_output(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Zeros with the shapes and dtypes `fn(*args, **kwargs)` would return, without running it."""
    shapes = jax.eval_shape(fn, *args, **kwargs)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
