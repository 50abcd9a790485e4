"""The machinery behind every torch.optim optimizer: groups, records, per-leaf kernels.

A concrete optimizer is a rule: the per-leaf buffers it keeps (any shape
decided from the parameter's), scalar state shared by a group's leaves, a
per-group scalar step (`scalars`: bias corrections and the like, computed
once per group from the hyperparameters and the count; `global_scalars`,
reduced over every gradient leaf, such as LAMB's global norm) and a per-leaf
`kernel` of (param, grad, buffers, scalars), elementwise or whole-leaf.
`_declare` completes a subclass into an optimizer (`optimizer_type`, `hyper`,
`flag`) and lists them (`optimizers()`).

Every leaf keeps its own arrays, and XLA fuses each leaf's kernel into loops
over that leaf alone. Leaves are not concatenated into one vector: splitting
it back costs XLA one distinct kernel to compile per leaf (34-40 ms each on one
CPU, where identical per-leaf kernels compile once), and concatenating
sharded leaves would gather them. Under a trace the per-leaf work is one
nested `jit`, so leaves of one shape and dtype share a single trace.

`step` (update and apply in one call) replaces those loops on CPU by one
native loop per leaf, which reads and writes every array once, in place:
XLA's CPU backend writes each output of a leaf in a loop of its own. The loop
is generated from `kernel` itself (`_leaf`, `_codegen`, `_native`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ._base import (
    Transformation,
    as_float,
    check_tree,
    compute_dtype,
    dtype_of,
    hyper_fields,
    increment,
    is_zero,
    path_str,
    set_field,
    zero_count,
)
from ._groups import Groups, assign, group_values, record, step_offsets, zero_offsets
from ._leaf import leaf_step, leaf_update
from ._state_dtype import check_state_dtype, codes_view, init_stored, is_special
from ._trees import distinct_arrays, is_traced

__all__ = ["Optimizer"]


class Optimizer(Transformation):
    """Abstract base of the torch.optim optimizers (see `sgd`, `adam`, ...).

    Concrete classes declare the fields ``state_dtype`` and ``groups`` last.
    """

    State: ClassVar[type]
    # What the optimizer matches, update for update (e.g. "torch.optim.AdamW");
    # the registry (`optimizers`), the README's table and the tests read it.
    reference: ClassVar[str] = ""
    # Every per-leaf buffer this optimizer may keep (`optimizer_type` builds
    # `State` from them); `buffers` picks those a configuration allocates.
    per_leaf: ClassVar[tuple[str, ...]] = ()
    # Hyperparameters that multiply the parameters (so `update` needs params
    # unless they are the number 0).
    _decay: ClassVar[tuple[str, ...]] = ("weight_decay",)
    # Buffers that exist only when a hyperparameter is nonzero (buffer ->
    # hyperparameter). A state may hold one although this configuration would
    # not allocate it (momentum has become 0: the kernel then matches torch's
    # no-momentum path), and may lack one while the hyperparameter is traced
    # (the optimizer passed to jit as an argument; its value is unknown).
    _optional: ClassVar[dict[str, str]] = {}
    # Hyperparameters that torch tests against 0 (``if weight_decay != 0``):
    # static in the pytree while they are 0 (see `transformation_type`).
    _static_zero: ClassVar[tuple[str, ...]] = ("weight_decay", "momentum")
    # Scalar state shared by all the leaves of a group (NAdam's
    # ``mu_product``): each name is a field of `State` that holds one scalar
    # per group, the default group's first (see `init_shared`, `advance`).
    shared: ClassVar[tuple[str, ...]] = ()
    # Buffers whose shape is not the parameter's (Adafactor's row and column
    # moments): `init_buffer` decides it from the parameter's shape.
    reduced: ClassVar[tuple[str, ...]] = ()
    # False for a whole-leaf `kernel` (matrix products, norms of a leaf): its
    # `step` is never traced for a generated loop. (A kernel that is not
    # elementwise gets no loop either way: the generator refuses it.)
    elementwise: ClassVar[bool] = True
    # The buffers that ``state_dtype="8bit"`` stores blockwise-quantized, each
    # with the bitsandbytes map it uses: "signed" for a moment of either sign
    # (a first moment, a momentum), "unsigned" for a non-negative one (a
    # second moment, a sum of squares). A rule without any refuses "8bit".
    eight_bit: ClassVar[dict[str, str]] = {}

    state_dtype: Any
    groups: Groups | None

    def __post_init__(self) -> None:
        # "8bit" and a dict by buffer are validated against the rule's
        # buffers below; the field kind's own check takes plain dtypes only.
        special = self.state_dtype if is_special(self.state_dtype) else None
        if special is not None:
            set_field(self, "state_dtype", None)
        super().__post_init__()
        groups = self.groups
        if isinstance(groups, Mapping):
            owner = type(self).__name__
            checks = hyper_fields(type(self))
            zero = frozenset(getattr(self, "_static_zero", ()))
            groups = Groups.build(owner, groups, checks, zero) if groups else None
            set_field(self, "groups", groups)
        elif not isinstance(groups, (Groups, type(None))):
            raise TypeError(f"{type(self).__name__}: groups must be a dict, got {groups!r}")
        if special is not None:
            set_field(self, "state_dtype", check_state_dtype(self, special))

    # ---------------------------------------------------------------- contract

    def buffers(self) -> tuple[str, ...]:
        """The per-leaf buffers `init` allocates for this configuration (default: `per_leaf`)."""
        return self.per_leaf

    def init_buffer(self, name: str, shape: tuple[int, ...], dtype: Any, hp: dict) -> jax.Array:
        del name, hp
        return jnp.zeros(shape, dtype)

    def scalars(self, hp: dict[str, jax.Array], count: jax.Array) -> dict[str, jax.Array]:
        """Per-group scalars for the kernel (hyperparameters included).

        `hp` holds the group's hyperparameters at this update and, for an
        optimizer with `shared` state, that state as `advance` left it.
        """
        return hp

    def check_leaf(self, owner: str, path: str, leaf: Any) -> None:
        """Refuse a leaf this rule cannot take (Muon: one that is not 2-D), naming its path.

        Called by `init` on each parameter and by `update`/`step` on each
        gradient; `owner` names the call (``"muon.init"``).
        """
        del owner, path, leaf

    def global_scalars(self, grads: list[jax.Array]) -> dict[str, jax.Array]:
        """Scalars computed from every gradient leaf at once, given to every group's kernel.

        For a rule that reduces over all gradients before its per-leaf step
        (LAMB's global gradient-norm clipping). `grads` are the flat leaves of
        every group, as the kernels will read them (a clipping coefficient
        that `chain` defers to `step` already multiplied in).
        """
        del grads
        return {}

    def needs_params(self) -> str:
        """Why the kernel reads every parameter whatever the decay ("" when it does not).

        A trust ratio with ``always_adapt`` reads the parameter's norm: the
        answer completes "params are required ...".
        """
        return ""

    def init_shared(self, hp: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The initial value of each `shared` scalar for a group with hyperparameters `hp`."""
        del hp
        return {}

    def advance(
        self, hp: dict[str, jax.Array], count: jax.Array, shared: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """A group's `shared` scalars after the update number ``count + 1``."""
        del hp, count
        return shared

    def kernel(
        self,
        p: jax.Array | None,
        g: jax.Array,
        bufs: dict[str, jax.Array],
        s: dict[str, Any],
        keep: Callable[[str, jax.Array], jax.Array],
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One leaf's update and new buffers; `p` is None when no decay applies.

        Each new buffer passes through ``keep(name, x)`` before the update uses
        it: the value as it will be stored (an 8-bit buffer: its float32 value
        before quantization, as bitsandbytes). ``s["param_dtype"]`` is the
        parameter's dtype (`p` and `g` arrive in the compute dtype).
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers

    def _defaults(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in hyper_fields(type(self))}

    def _all(self, name: str) -> list[Any]:
        """A hyperparameter's value in the default group and in every group."""
        values = [getattr(self, name)]
        if self.groups is not None:
            values += [g[name] for _, g in self.groups.items() if name in g]
        return values

    def _nonzero(self, name: str) -> bool:
        """False only when `name` is the number 0 everywhere (decided at trace time)."""
        return not all(is_zero(x) for x in self._all(name))

    def _traced(self, name: str) -> bool:
        return any(isinstance(x, jax.core.Tracer) for x in self._all(name))

    def _decay_names(self) -> tuple[str, ...]:
        """The `_decay` hyperparameters this optimizer has (a rule may have none)."""
        return tuple(n for n in self._decay if n in hyper_fields(type(self)))

    def _decays(self) -> list[bool]:
        """Per group: whether any decay hyperparameter can be nonzero."""
        defaults = self._defaults()
        names = self._decay_names()
        out = [any(not is_zero(defaults[n]) for n in names)]
        if self.groups is not None:
            for _, group in self.groups.items():
                merged = defaults | group
                out.append(any(not is_zero(merged[n]) for n in names))
        return [True] * len(out) if self.needs_params() else out

    def _buffer_names(self) -> tuple[str, ...]:
        fixed = ("count", "hyperparams", *self.shared)
        return tuple(n for n in self.State._fields if n not in fixed)

    # ------------------------------------------------------------------- API

    def init(self, params: Any) -> Any:
        """The initial state: zero buffers (torch's), count 0, and the step-0 hyperparameters."""
        owner = type(self).__name__
        leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
        for path, p in leaves_with_paths:
            if not jnp.issubdtype(dtype_of(p), jnp.floating):
                raise ValueError(
                    f"{owner}: params at {path_str(path)!r} have dtype {dtype_of(p)}; "
                    "optimizers need floating-point parameters (equinox: filter the model "
                    "with eqx.is_inexact_array, not eqx.is_array)"
                )
            self.check_leaf(f"{owner}.init", path_str(path), p)
        leaves = [p for _, p in leaves_with_paths]
        index = assign(owner, self.groups, params, warn=True)
        count = zero_count()
        values = group_values(self._defaults(), self.groups, count)
        fields: dict[str, Any] = dict.fromkeys(self._buffer_names())
        for name in self.buffers():
            buffers = []
            for p, i in zip(leaves, index, strict=True):
                shape, dtype = jnp.shape(p), dtype_of(p)
                buffers.append(init_stored(self, name, shape, dtype, values[i]))
            fields[name] = treedef.unflatten(buffers)
        for name in self.shared:
            fields[name] = tuple(as_float(self.init_shared(v)[name]) for v in values)
        recorded = record(values, self.groups, zero_offsets(self.groups))
        return distinct_arrays(self.State(count=count, **fields, hyperparams=recorded))

    def update(self, updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        """The parameter deltas (``new_params = optax.apply_updates(params, deltas)``) and state.

        Args:
            updates: the gradients.
            state: from `init` or the previous `update`.
            params: the current parameters; required unless weight decay is 0.
            **extra: ignored (accepted for optax's extra-args protocol).
        """
        del extra
        run = self._prepare(f"{type(self).__name__}.update", updates, state, params)

        def args(g: Any, p: Any, i: int) -> tuple[Any, ...]:
            g = jnp.asarray(g)
            out_dtype = jnp.dtype(dtype_of(p) if p is not None else g.dtype)
            p = jnp.asarray(p) if (p is not None and run.decays[i]) else None
            return p, g, run.scalars[i], out_dtype

        deltas, new = run.each(functools.partial(leaf_update, self), args)
        return deltas, run.finish(state, new)

    def step(self, grads: Any, state: Any, params: Any, **extra: Any) -> tuple[Any, Any]:
        """One training step: the new parameters and state.

        The same numbers as `update` followed by ``optax.apply_updates``. On a
        CPU (one device) each leaf is updated by one loop that reads and
        writes every array once, in place when the caller donates params and
        state (torch's fused step); XLA's CPU backend would write the new
        buffers in separate loops. Elsewhere, and for configurations without
        a native kernel, it is `update` then the sum, which XLA fuses.

        Args:
            grads: the gradients.
            state: from `init` or the previous update.
            params: the current parameters.
            **extra: ignored (accepted for optax's extra-args protocol).

        Donate params and state in the order `step` returns them (params
        first): JAX hands donated buffers to outputs of the same shape in
        argument order, and a moment given to the parameter's output would
        cost a copy.

        Example:
            >>> import functools, jax, jax.numpy as jnp
            >>> from cadence import optimizers as O
            >>> opt = O.adamw(0.1)
            >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
            ... def train_step(params, state, x):
            ...     grads = jax.grad(lambda p: jnp.sum((p["w"] * x) ** 2))(params)
            ...     return opt.step(grads, state, params)
            >>> params = {"w": jnp.array([1.0, -1.0])}
            >>> params, state = train_step(params, opt.init(params), jnp.ones(2))
            >>> params["w"]
            Array([ 0.899, -0.899], dtype=float32)
        """
        del extra
        if not is_traced((grads, state, params)):
            # Called eagerly: compiled all the same, so that the per-group
            # scalars round as in a jitted step (XLA fuses their arithmetic;
            # op by op it rounds each operation), and the step costs one call.
            return _compiled_step(self, grads, state, params)
        return self._step(grads, state, params, None)

    def _step(self, grads: Any, state: Any, params: Any, scale: jax.Array | None) -> Any:
        """`step` on ``grads * scale`` (a clipping coefficient that `chain` defers here)."""
        owner = f"{type(self).__name__}.step"
        if params is None:
            raise TypeError(f"{owner}: params are required (step returns the new params)")
        run = self._prepare(owner, grads, state, params)
        scalars = run.scaled(scale)

        def args(g: Any, p: Any, i: int) -> tuple[Any, ...]:
            return jnp.asarray(p), jnp.asarray(g), scalars[i], run.decays[i]

        params, new = run.each(functools.partial(leaf_step, self), args)
        return params, run.finish(state, new)

    def _prepare(self, owner: str, grads: Any, state: Any, params: Any) -> _Run:
        """Validate the call and evaluate what every leaf's update needs."""
        if type(self).check_leaf is not Optimizer.check_leaf:
            for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
                self.check_leaf(owner, path_str(path), g)
        if not isinstance(state, self.State):
            raise TypeError(
                f"{owner}: expected a {self.State.__name__}, got {type(state).__name__}"
            )
        present = [n for n in self._buffer_names() if getattr(state, n) is not None]
        traced = {b for b, h in self._optional.items() if self._traced(h)}
        missing = sorted(set(self.buffers()) - set(present) - traced)
        unexpected = sorted(set(present) - set(self.buffers()) - set(self._optional))
        if missing or unexpected:
            raise ValueError(
                f"{owner}: the state was made for a different configuration "
                f"(missing buffers {missing}, unexpected {unexpected}); call init again"
            )
        for name in present:
            # A reduced buffer (a factored moment) is checked by paths only.
            shapes = name not in self.reduced
            check_tree(owner, grads, codes_view(getattr(state, name)), "the state", shapes=shapes)
        if params is not None:
            check_tree(owner, grads, params, "params")
        elif any(self._nonzero(n) for n in self._decay_names()):
            raise ValueError(
                f"{owner}: params are required when {' or '.join(self._decay_names())} is not 0"
            )
        elif self.needs_params():
            raise ValueError(f"{owner}: params are required {self.needs_params()}")
        values = group_values(self._defaults(), self.groups, state.count)
        # The rule's step per group: the count, less the update at which a
        # group with its own step joined (torch's per-parameter ``step``);
        # schedules (`values`) keep the count.
        offsets = step_offsets(owner, self.groups, state.hyperparams)
        steps = [state.count - o for o in offsets] if offsets else [state.count] * len(values)
        shared = [
            self.advance(v, steps[i], {n: getattr(state, n)[i] for n in self.shared})
            for i, v in enumerate(values)
        ]
        gleaves, treedef = jax.tree.flatten(grads)
        rescale = None
        if type(self).global_scalars is not Optimizer.global_scalars:
            rescale = functools.partial(_global_after_scale, self, gleaves)
        overall = self.global_scalars(gleaves)
        return _Run(
            grads=gleaves,
            params=(treedef.flatten_up_to(params) if params is not None else [None] * len(gleaves)),
            buffers={n: treedef.flatten_up_to(getattr(state, n)) for n in present},
            present=present,
            index=assign(owner, self.groups, grads),
            values=values,
            scalars=[
                self.scalars(v | sh, t) | overall
                for v, sh, t in zip(values, shared, steps, strict=True)
            ],
            shared={n: tuple(sh[n] for sh in shared) for n in self.shared},
            decays=self._decays(),
            treedef=treedef,
            traced=is_traced(gleaves),
            groups=self.groups,
            rescale=rescale,
            offsets=offsets,
        )


def _global_after_scale(opt: Optimizer, grads: list[Any], scale: jax.Array) -> dict[str, Any]:
    """`Optimizer.global_scalars` of ``grads * scale``, rounded as each kernel reads them."""
    grads = [jnp.asarray(g) for g in grads]
    scaled = [(g.astype(compute_dtype(g.dtype)) * scale).astype(g.dtype) for g in grads]
    return opt.global_scalars(scaled)


@dataclasses.dataclass
class _Run:
    """What `Optimizer._prepare` found: flat leaves, buffers, per-group scalars."""

    grads: list[Any]
    params: list[Any]
    buffers: dict[str, list[Any]]
    present: list[str]
    index: list[int]
    values: list[dict[str, jax.Array]]
    scalars: list[dict[str, jax.Array]]
    shared: dict[str, tuple[jax.Array, ...]]
    decays: list[bool]
    treedef: Any
    traced: bool
    groups: Groups | None
    # `global_scalars` of the gradients times a deferred clipping coefficient.
    rescale: Callable[[jax.Array], dict[str, Any]] | None = None
    offsets: list[jax.Array] | None = None

    def each(
        self, leaf: Callable[..., tuple[Any, dict]], args: Callable[[Any, Any, int], tuple]
    ) -> tuple[Any, dict[str, list[Any]]]:
        """``leaf(p, g, buffers, scalars, static)`` on every leaf: the outputs' tree, the buffers.

        ``args(grad, param, group)`` gives the leaf's (p, g, scalars, static).
        """
        if self.traced:
            # Under a trace, one nested jit per call: leaves with the same
            # shapes and dtypes share one trace of the kernel instead of
            # re-tracing it (XLA inlines the calls, so the program is the same).
            # Eagerly, a fresh jit per call would recompile every step.
            leaf = jax.jit(leaf, static_argnums=(4,))
        out, new = [], {n: [] for n in self.present}
        for k, (g, p, i) in enumerate(zip(self.grads, self.params, self.index, strict=True)):
            p, g, s, static = args(g, p, i)
            x, bufs = leaf(p, g, {n: self.buffers[n][k] for n in self.present}, s, static)
            out.append(x)
            for n in self.present:
                new[n].append(bufs[n])
        return self.treedef.unflatten(out), new

    def scaled(self, scale: jax.Array | None) -> list[dict[str, jax.Array]]:
        """Each group's scalars, with a coefficient `chain` deferred from clip_by_global_norm."""
        if scale is None:
            return self.scalars
        extra = {"grad_scale": scale} | (self.rescale(scale) if self.rescale else {})
        return [s | extra for s in self.scalars]

    def finish(self, state: Any, new: dict[str, list[Any]]) -> Any:
        return state._replace(
            count=increment(state.count),
            hyperparams=record(self.values, self.groups, self.offsets),
            **self.shared,
            **{n: self.treedef.unflatten(v) for n, v in new.items()},
        )


@jax.jit
def _compiled_step(opt: Optimizer, grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
    """`Optimizer.step` of an eager call, compiled (one cached program per structure)."""
    return opt._step(grads, state, params, None)
