"""Parity cases for ``state_dtype="8bit"`` against bitsandbytes' 8-bit optimizers on CPU.

- the dynamic quantization maps (``bitsandbytes.functional.create_dynamic_map``,
  signed and unsigned);
- blockwise quantization of fixed vectors (``quantize_blockwise`` on CPU,
  blocks of 256, a short last block, a zero block): codes and absmax;
- `STEPS` updates of `adamw` against ``bitsandbytes.optim.AdamW8bit``, with
  and without weight decay, and of `adam` against ``Adam8bit`` (weight decay
  0: bitsandbytes' Adam8bit decays the weights like AdamW, torch's Adam adds
  the decay to the gradient), on
  fixed gradients whose scale varies over four orders of magnitude between
  updates: one leaf of 17 x 256 elements (8-bit state) and one of 100 (under
  bitsandbytes' ``min_8bit_size``, float32 state).

``python -m tests.reference.generate eight_bit`` writes `GOLDEN`;
``tests/optimizers/test_eight_bit.py`` compares cadence against it and against
live bitsandbytes.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadence import optimizers as O

GOLDEN = "eight_bit.json"

STEPS = 50
SEED = 20261130
LEAVES = {"w": (17, 256), "b": (100,)}
QUANTIZE_SIZE = 4099  # 17 blocks, the last one of 3 elements


@dataclass(frozen=True)
class Case:
    """One optimizer built both ways: cadence's, and bitsandbytes' class with its options.

    `tolerance`: the largest parameter difference after `STEPS` updates, as
    a fraction of the largest parameter movement (see the test module).
    """

    build: Any
    reference: str
    options: dict[str, Any]
    tolerance: float = 1e-5


CASES = {
    "adam": Case(
        lambda: O.adam(2e-3, b1=0.8, b2=0.99, state_dtype="8bit"),
        "Adam8bit",
        {"lr": 2e-3, "betas": (0.8, 0.99)},
    ),
    "adamw": Case(
        lambda: O.adamw(1e-3, weight_decay=0.0, state_dtype="8bit"),
        "AdamW8bit",
        {"lr": 1e-3, "weight_decay": 0.0},
    ),
    # Decoupled decay: cadence's float32 AdamW is as far from torch.optim.AdamW
    # on these gradients (1.5e-4 of the movement): `update` returns the decay
    # as part of a delta, torch multiplies the parameter in place.
    "adamw_decay": Case(
        lambda: O.adamw(1e-3, weight_decay=1e-2, state_dtype="8bit"),
        "AdamW8bit",
        {"lr": 1e-3, "weight_decay": 1e-2},
        tolerance=3e-4,
    ),
}


def problem() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Initial float32 parameters and the (STEPS, *shape) gradients of each leaf."""
    rng = np.random.default_rng(SEED)
    init, grads = {}, {}
    for name, shape in LEAVES.items():
        init[name] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        scale = 10.0 ** rng.uniform(-3, 1, size=(STEPS,) + (1,) * len(shape))
        grads[name] = (rng.standard_normal((STEPS, *shape)) * scale).astype(np.float32)
    return init, grads


def quantize_inputs() -> dict[str, np.ndarray]:
    """Vectors to quantize: moments of either sign (signed map) and squares (unsigned)."""
    rng = np.random.default_rng([SEED, 1])
    x = rng.standard_normal(QUANTIZE_SIZE) * rng.uniform(0, 1, QUANTIZE_SIZE) ** 6
    x[256:512] = 0.0  # a block whose absmax is 0
    return {
        "signed": x.astype(np.float32),
        "unsigned": (x * x).astype(np.float32),
    }


def run_reference(case: Case) -> dict[str, np.ndarray]:
    """bitsandbytes' parameters after `STEPS` updates."""
    import bitsandbytes
    import torch

    init, grads = problem()
    params = {n: torch.nn.Parameter(torch.tensor(v)) for n, v in init.items()}
    opt = getattr(bitsandbytes.optim, case.reference)(list(params.values()), **case.options)
    for k in range(STEPS):
        for n, p in params.items():
            p.grad = torch.tensor(grads[n][k])
        opt.step()
    return {n: p.detach().numpy().copy() for n, p in params.items()}


def quantize_reference(x: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """bitsandbytes' CPU blockwise quantization of `x`: codes and absmax."""
    import bitsandbytes.functional as F
    import torch

    code = F.create_dynamic_map(signed=signed)
    codes, absmax = F.quantize_blockwise(torch.tensor(x), code=code, blocksize=256)
    return codes.numpy(), absmax.absmax.numpy()


def dynamic_maps() -> dict[str, np.ndarray]:
    import bitsandbytes.functional as F

    return {
        kind: F.create_dynamic_map(signed=kind == "signed").numpy()
        for kind in ("signed", "unsigned")
    }


def generate() -> dict[str, Any]:
    import torch

    quantized = {}
    for kind, x in quantize_inputs().items():
        codes, absmax = quantize_reference(x, kind == "signed")
        quantized[kind] = {"codes": bytes(codes).hex(), "absmax": absmax.tolist()}
    return {
        "meta": {
            "bitsandbytes": importlib.metadata.version("bitsandbytes"),
            "torch": torch.__version__,
            "steps": STEPS,
            "leaves": {n: list(s) for n, s in LEAVES.items()},
        },
        "maps": {kind: m.tolist() for kind, m in dynamic_maps().items()},
        "quantize": quantized,
        "cases": {
            name: {n: p.ravel().tolist() for n, p in run_reference(case).items()}
            for name, case in CASES.items()
        },
    }
