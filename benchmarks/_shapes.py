"""The parameter trees the step is timed on: (a) one big leaf, (b) a transformer, (c) many leaves.

Every tree is a flat dict of leaf name -> shape, so the same layout can be
built as JAX arrays, torch tensors or abstract shapes for compile timing.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
    """A named parameter layout and its dtype (``float32`` or ``bfloat16``)."""

    key: str
    label: str
    leaves: dict[str, tuple[int, ...]]
    dtype: str = "float32"

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.leaves.values())

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else 4

    def describe(self) -> str:
        leaves, params = f"{self.n_leaves} leaves", f"{self.n_params:,} params"
        return f"({self.key}) {self.label}: {leaves}, {params}, {self.dtype}"

    def arrays(self, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Float32 NumPy (params, grads); each library casts to `dtype` itself."""
        rng = np.random.default_rng(seed)
        params, grads = {}, {}
        for name, shape in self.leaves.items():
            params[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            # Nonzero gradients of a fixed scale keep every moment away from
            # zero and denormals however many steps are timed.
            grads[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-2)
        return params, grads


def one_leaf(n: int) -> dict[str, tuple[int, ...]]:
    return {"w": (n,)}


def transformer(layers: int, d: int, ff: int, vocab: int, ctx: int) -> dict[str, tuple[int, ...]]:
    """A GPT-like layout: embeddings, then per layer q/k/v/o and a 2-matrix MLP with biases
    and two layer norms (16 leaves per layer), then a final norm."""
    leaves: dict[str, tuple[int, ...]] = {"embed": (vocab, d), "pos": (ctx, d)}
    for i in range(layers):
        p = f"layer{i:02d}"
        for name in ("q", "k", "v", "o"):
            leaves[f"{p}/attn/{name}/w"] = (d, d)
            leaves[f"{p}/attn/{name}/b"] = (d,)
        leaves[f"{p}/mlp/up/w"] = (d, ff)
        leaves[f"{p}/mlp/up/b"] = (ff,)
        leaves[f"{p}/mlp/down/w"] = (ff, d)
        leaves[f"{p}/mlp/down/b"] = (d,)
        for ln in ("ln1", "ln2"):
            leaves[f"{p}/{ln}/scale"] = (d,)
            leaves[f"{p}/{ln}/bias"] = (d,)
    leaves["ln_f/scale"] = (d,)
    leaves["ln_f/bias"] = (d,)
    return leaves


def many_leaves(count: int, size: int) -> dict[str, tuple[int, ...]]:
    return {f"leaf{i:05d}": (size,) for i in range(count)}


def shapes(quick: bool) -> dict[str, Shape]:
    """The four step shapes, full size or (``quick``) tiny."""
    if quick:
        tf = transformer(layers=2, d=32, ff=128, vocab=256, ctx=64)
        return {
            "a": Shape("a", "one leaf", one_leaf(1 << 16)),
            "b": Shape("b", "transformer-like", tf),
            "c": Shape("c", "many small leaves", many_leaves(40, 100)),
            "bf16": Shape("bf16", "transformer-like, bf16 params", tf, "bfloat16"),
        }
    # 9 layers of d=320 plus a 16k vocabulary: 16.7M params over 148 leaves.
    tf = transformer(layers=9, d=320, ff=1280, vocab=16384, ctx=1024)
    return {
        "a": Shape("a", "one leaf", one_leaf(16 * 2**20)),
        "b": Shape("b", "transformer-like", tf),
        "c": Shape("c", "many small leaves", many_leaves(2000, 1000)),
        "bf16": Shape("bf16", "transformer-like, bf16 params", tf, "bfloat16"),
    }
