"""The optimizers compared, with the same hyperparameters in every library.

Each `Spec` builds the cadence and the optax transformation and names the
torch.optim class and keyword arguments; torch is imported only by `_torch`.
Hyperparameters follow torch's defaults, with weight decay 1e-2 wherever it is
decoupled (AdamW, Lion) so that the decay term is part of the timed work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

from cadence import optimizers as O
from cadence import schedules as S

# The chain's schedule: long enough that the timed steps stay in its first part.
SCHEDULE_STEPS = 10_000
MAX_NORM = 1.0


@dataclasses.dataclass(frozen=True)
class Spec:
    """One optimizer as each library spells it.

    Attributes:
        name: the ``--optimizers`` name.
        label: how the tables print it.
        buffers: per-parameter state arrays (each read and written once per step).
        extra_reads: further whole passes over the gradient (a global norm).
        cadence: ``state_dtype -> transformation``.
        optax: builds the optax transformation, or None where optax has no
            counterpart with these numerics (the optax rows are then n/a).
        torch: ``(class name, kwargs)`` of torch.optim, or None where torch has none.
        torch_clip: call ``clip_grad_norm_(params, MAX_NORM)`` before the step.
        torch_cosine: step a ``CosineAnnealingLR(T_max=SCHEDULE_STEPS)`` after it.
        fused: whether torch has ``fused=True`` for this class.
        flattenable: whether `O.flatten` takes it (not a whole-leaf rule, not
            a partition).
    """

    name: str
    label: str
    buffers: int
    extra_reads: int
    cadence: Callable[[Any], Any]
    optax: Callable[[], optax.GradientTransformation] | None
    torch: tuple[str, dict[str, Any]] | None
    torch_clip: bool = False
    torch_cosine: bool = False
    fused: bool = True
    flattenable: bool = True

    def flat(self, state_dtype: Any) -> Any:
        """The cadence transformation with its optimizer's buffers flattened (`O.flatten`).

        Raises:
            TypeError: for a spec that `O.flatten` does not take.
        """
        if not self.flattenable:
            raise TypeError(f"O.flatten does not take {self.name}")
        tx = self.cadence(state_dtype)
        if isinstance(tx, O.chain):
            *head, last = tx.txs
            return O.chain(*head, O.flatten(last))
        return O.flatten(tx)

    def floor_bytes(self, itemsize: int) -> int:
        """Bytes per parameter one fused pass must move.

        Reads param, grad and every buffer, writes param and every buffer
        (plus `extra_reads` more reads of the grad); state has the params' dtype.
        """
        return itemsize * (3 + 2 * self.buffers + self.extra_reads)


def _chain_cadence(state_dtype: Any) -> Any:
    lr = S.cosine(1e-3, SCHEDULE_STEPS)
    return O.chain(O.clip_by_global_norm(MAX_NORM), O.adamw(lr, state_dtype=state_dtype))


def _chain_optax() -> optax.GradientTransformation:
    lr = optax.cosine_decay_schedule(1e-3, SCHEDULE_STEPS)
    return optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.adamw(lr, weight_decay=1e-2))


SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec(
            "sgd",
            "sgd (momentum 0.9)",
            1,
            0,
            lambda dt: O.sgd(1e-2, momentum=0.9, state_dtype=dt),
            lambda: optax.sgd(1e-2, momentum=0.9),
            ("SGD", {"lr": 1e-2, "momentum": 0.9}),
        ),
        Spec(
            "adam",
            "adam",
            2,
            0,
            lambda dt: O.adam(1e-3, state_dtype=dt),
            lambda: optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8),
            ("Adam", {"lr": 1e-3}),
        ),
        Spec(
            "adamw",
            "adamw (wd 1e-2)",
            2,
            0,
            lambda dt: O.adamw(1e-3, weight_decay=1e-2, state_dtype=dt),
            lambda: optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2),
            ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
        ),
        Spec(
            "rmsprop",
            "rmsprop",
            1,
            0,
            lambda dt: O.rmsprop(1e-2, alpha=0.99, eps=1e-8, state_dtype=dt),
            lambda: optax.rmsprop(1e-2, decay=0.99, eps=1e-8),
            ("RMSprop", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}),
            fused=False,
        ),
        Spec(
            "lion",
            "lion (wd 1e-2)",
            1,
            0,
            lambda dt: O.lion(1e-4, b1=0.9, b2=0.99, weight_decay=1e-2, state_dtype=dt),
            lambda: optax.lion(1e-4, b1=0.9, b2=0.99, weight_decay=1e-2),
            None,
        ),
        Spec(
            "adagrad",
            "adagrad",
            1,
            0,
            lambda dt: O.adagrad(1e-2, state_dtype=dt),
            lambda: optax.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10),
            ("Adagrad", {"lr": 1e-2}),
        ),
        Spec(
            "chain",
            "clip_by_global_norm + adamw(cosine)",
            2,
            1,
            _chain_cadence,
            _chain_optax,
            ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
            torch_clip=True,
            torch_cosine=True,
        ),
    ]
}


def _muon_cadence(state_dtype: Any) -> Any:
    # Muon takes 2-D leaves only: the standard recipe routes the rest to AdamW.
    return O.partition(
        {
            "muon": O.muon(0.02, state_dtype=state_dtype),
            "adamw": O.adamw(1e-3, weight_decay=1e-2, state_dtype=state_dtype),
        },
        O.rules(("muon", "**", 2), ("adamw",)),
    )


def _muon_optax() -> optax.GradientTransformation:
    # optax.contrib.muon sends leaves that are not 2-D to its own AdamW.
    return optax.contrib.muon(0.02, adam_weight_decay=1e-2)


SPECS["muon"] = Spec(
    "muon",
    "muon (2-D) + adamw (rest)",
    1,
    0,
    _muon_cadence,
    _muon_optax,
    None,
    fused=False,
    flattenable=False,
)


def _from_registry(name: str, cls: type) -> Spec:
    """A Spec for an optimizer without a hand-written counterpart: cadence at its defaults.

    The lr is the class default (1e-3 where it has none); torch's class is
    taken from the reference where it is a torch.optim class, with that lr.
    """
    lr = next(f.default for f in dataclasses.fields(cls) if f.name == "lr")
    lr = 1e-3 if lr is dataclasses.MISSING else lr

    def build(dt: Any) -> Any:
        return cls(lr=lr, state_dtype=dt)

    torch = None
    if cls.reference.startswith("torch.optim."):
        torch = (cls.reference.removeprefix("torch.optim."), {"lr": lr})
    buffers = len(build(None).buffers())
    return Spec(
        name, name, buffers, 0, build, None, torch, fused=False, flattenable=cls.elementwise
    )


# Every optimizer in the registry is benchmarked: the ones above against their
# optax and torch counterparts, the others on cadence's side (and torch's,
# where the reference is a torch.optim class).
for _name, _cls in O.optimizers().items():
    if _cls.__module__.startswith("cadence.") and _name not in SPECS:
        SPECS[_name] = _from_registry(_name, _cls)

# What runs without --optimizers (adagrad is available but not a target).
DEFAULT = ("sgd", "adam", "adamw", "rmsprop", "lion", "chain")
