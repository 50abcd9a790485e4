"""The same jitted step on two devices (the accelerator and the CPU), compared leaf by leaf.

Both devices get the same NumPy inputs: parameters, then a few steps of
different gradients. Each optimizer runs both ways users step it, ``tx.step``
and ``tx.update`` + ``optax.apply_updates``; the parameters, the state and (for
``update``) the last updates are compared. On the CPU ``step`` runs cadence's
native kernels and elsewhere XLA's loops, so this also checks that the two
formulations agree.

The difference of a leaf is ``max |a - b| / max |b|`` (b on the reference
device): relative to the leaf's scale, so an element near zero does not blow
it up. A control run perturbs the reference's parameters by a relative
`PERTURBATION`; it must be flagged, or the comparison could not see a mismatch.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from cadence import optimizers as O

from . import _jax
from ._optimizers import SPECS
from ._shapes import Shape, transformer

# Float32 rounding over a few steps: XLA's division and square root differ
# between backends by an ulp or so (1.2e-7), and a clipped chain's norm sums in
# another order; 1e-5 is ~80 ulps of the leaf's largest element.
RTOL = 1e-5
STEPS = 3
PERTURBATION = 1e-3


def optimizers_to_check() -> dict[str, Callable[[], Any]]:
    """Every optimizer the benchmarks build, and the clipped chain, by name.

    The one list the device check reads: the harness's (`_optimizers.SPECS`),
    which holds every library optimizer of the registry (``O.optimizers()``)
    and ``chain`` = ``O.chain(O.clip_by_global_norm(1.0), O.adamw(cosine))``.

    Example:
        >>> sorted(optimizers_to_check())[:3]
        ['adagrad', 'adam', 'adamw']
    """
    return {name: functools.partial(spec.cadence, None) for name, spec in SPECS.items()}


def unchecked() -> list[str]:
    """Library optimizers of the registry that `optimizers_to_check` does not build."""
    names = set(optimizers_to_check())
    library = [n for n, cls in O.optimizers().items() if cls.__module__.startswith("cadence.")]
    return sorted(n for n in library if n not in names)


def shape(dry_run: bool) -> Shape:
    """A small transformer: every kind of leaf (matrices, vectors), quick to compile."""
    if dry_run:  # embeddings and a final norm: two matrices, two vectors
        return Shape("parity", "parity tree", transformer(0, 8, 16, 32, 8))
    return Shape("parity", "parity tree", transformer(2, 64, 256, 512, 128))


def difference(a: Any, b: Any) -> tuple[float, str]:
    """The largest per-leaf relative difference of two trees, and the path of that leaf
    ("" when they are equal).

    Integer leaves (step counts) differ by 0 or infinity; a NaN in one tree and
    not the other is infinite too.

    Example:
        >>> import numpy as np
        >>> difference({"w": np.array([1.0, 2.0])}, {"w": np.array([1.0, 2.5])})
        (0.2, "['w']")
    """
    flat_a = jax.tree_util.tree_leaves_with_path(a)
    flat_b = jax.tree_util.tree_leaves_with_path(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError("difference: the two trees have different structures")
    worst, where = 0.0, ""
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        # bfloat16 is a NumPy extension type (kind "V"), not a subtype of inexact.
        if not (np.issubdtype(y.dtype, np.inexact) or y.dtype.kind == "V"):
            d = 0.0 if np.array_equal(x, y) else math.inf
        else:
            x, y = x.astype(np.float64), y.astype(np.float64)
            nan_x, nan_y = np.isnan(x), np.isnan(y)
            if np.any(nan_x != nan_y):
                d = math.inf
            else:
                diff = np.max(np.abs(np.where(nan_x, 0.0, x - y)), initial=0.0)
                scale = np.max(np.abs(np.where(nan_y, 0.0, y)), initial=0.0)
                d = float(diff / scale) if scale > 0 else (0.0 if diff == 0 else math.inf)
        if d > worst:
            worst, where = d, jax.tree_util.keystr(path)
    return worst, where


def _jitted(tx: Any, path: str) -> tuple[Callable, Callable]:
    """Jitted ``init`` and one step of `path` that returns (params, state, updates or None).

    `tx` is closed over, as users jit a step; jit compiles once per device.
    """

    def by_update(p: Any, s: Any, g: Any) -> tuple[Any, Any, Any]:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, u

    def by_step(p: Any, s: Any, g: Any) -> tuple[Any, Any, None]:
        p, s = tx.step(g, s, p)
        return p, s, None

    return jax.jit(tx.init), jax.jit(by_step if path == "step" else by_update)


def _run(
    device: Any,
    fns: tuple[Callable, Callable],
    params_np: dict[str, np.ndarray],
    grads_np: list[dict[str, np.ndarray]],
) -> Any:
    """Params, state (and the last updates for ``update``) after the steps, run on `device`."""
    init, step = fns
    with jax.default_device(device):
        params = jax.device_put(_jax.to_jax(params_np, "float32"), device)
        state = init(params)
        updates = None
        for g in grads_np:
            grads = jax.device_put(_jax.to_jax(g, "float32"), device)
            params, state, updates = step(params, state, grads)
        return jax.device_get((params, state, updates))


def check(
    accelerator: Any,
    reference: Any,
    dry_run: bool,
    deadline: float,
    rtol: float = RTOL,
) -> dict[str, Any]:
    """Every optimizer, both paths, on `accelerator` against `reference`; then the control.

    Optimizers not started before the monotonic `deadline` are reported as skipped.
    """
    tree = shape(dry_run)
    params_np, _ = tree.arrays(seed=0)
    grads_np = [tree.arrays(seed=1 + k)[1] for k in range(STEPS)]
    builders = optimizers_to_check()
    rows = []
    for name, build in builders.items():
        for path in ("step", "update"):
            row: dict[str, Any] = {"optimizer": name, "path": path}
            if time.monotonic() > deadline:
                rows.append(row | {"max_rel_diff": None, "ok": False, "error": "out of time"})
                continue
            try:
                fns = _jitted(build(), path)
                a = _run(accelerator, fns, params_np, grads_np)
                b = _run(reference, fns, params_np, grads_np)
                diff, leaf = difference(a, b)
                row |= {"max_rel_diff": diff, "worst_leaf": leaf, "ok": diff <= rtol}
            except Exception as e:  # reported; the other optimizers still run
                row |= {"max_rel_diff": None, "ok": False, "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
    fns = _jitted(builders["adamw"](), "step")
    perturbed = {k: v * np.float32(1 + PERTURBATION) for k, v in params_np.items()}
    a = _run(accelerator, fns, params_np, grads_np)
    b = _run(reference, fns, perturbed, grads_np)
    diff, leaf = difference(a, b)
    control = {
        "optimizer": "adamw",
        "path": "step",
        "perturbation": PERTURBATION,
        "max_rel_diff": diff,
        "worst_leaf": leaf,
        "flagged": diff > rtol,
    }
    return {
        "rtol": rtol,
        "steps": STEPS,
        "tree": tree.describe(),
        "devices": {"accelerator": str(accelerator), "reference": str(reference)},
        "optimizers": list(builders),
        "unchecked": unchecked(),
        "rows": rows,
        "control": control,
        "all_ok": all(r["ok"] for r in rows) and control["flagged"],
    }
