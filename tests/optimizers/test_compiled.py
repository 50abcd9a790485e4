"""What XLA makes of a donated training step: no copies of the state, one kernel trace per shape."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

from cadence import optimizers as O

from .examples import OPTIMIZERS

# Lion's parameter loop reads the old momentum while the momentum loop
# overwrites it in place; XLA keeps the old value with a copy (optax's Lion
# compiles to the same copy). So do ADOPT's first-moment and parameter loops
# with the old second moment (one copy of ``nu`` per leaf), and Rprop's
# parameter, prev and step_size loops, which each read the old prev (the sign
# change). `step`'s single pass on CPU has none of these copies. Every other
# optimizer reads each buffer once.
OLD_VALUE_READ = {"lion", "adopt", "adopt_decoupled", "rprop", "rprop_groups"}
NO_COPY = sorted(set(OPTIMIZERS) - OLD_VALUE_READ)

# ASGD's average reads the new parameters: in bfloat16 XLA writes the rounded
# update once (a temporary) and adds it to the parameter and to the average
# in two loops, so the old parameter is kept with a copy until both read it.
BF16_COPY = {"asgd", "asgd_groups"}

# `%name = f32[256]{0} copy(...)`: an array-sized copy in the entry computation.
_ARRAY_COPY = re.compile(r"= \w+\[\d[\d,]*\]\S* copy\(")


# Weight decay added to the gradient that two loops then read (the buffer's
# and the parameter's): XLA computes the decayed gradient once into a
# temporary, as torch does (``grad = grad.add(param, alpha=weight_decay)``).
# LARS's gradient scaled by its trust ratio is such a gradient too.
DECAYED_GRADIENT_TEMPORARY = {"sgd_nesterov", "rmsprop_centered", "nadam", "lars", "lars_clip"}

# A whole-leaf update: Adafactor scales its update by the update's own RMS,
# so the update exists whole before the parameter is written (torch
# allocates it too); so does LAMB, by its trust ratio (the update's norm).
WHOLE_LEAF_TEMPORARY = {"adafactor", "lamb", "lamb_groups"}


def compiled_step(opt, dtype):
    w = jnp.linspace(-1.0, 1.0, 256, dtype=dtype).reshape(16, 16)
    # Paths that the group patterns of the examples match.
    params = {"encoder": {"w": w, "b": w / 2}, "head": {"w": -w, "b": w * 2}}
    state = opt.init(params)

    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params).compile()
    return compiled, [str(w.message) for w in caught]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", NO_COPY)
def test_donated_step_copies_no_state(name, dtype):
    compiled, caught = compiled_step(OPTIMIZERS[name], dtype)
    text = compiled.as_text()
    entry = text[text.find("\nENTRY") :]
    copies = dtype == jnp.bfloat16 and name in BF16_COPY
    if not copies:
        assert _ARRAY_COPY.findall(entry) == []
    assert not [m for m in caught if "donated" in m], caught
    if name not in DECAYED_GRADIENT_TEMPORARY | WHOLE_LEAF_TEMPORARY and not copies:
        # Nothing parameter-sized is allocated besides the outputs.
        assert compiled.memory_analysis().temp_size_in_bytes < 256 * jnp.dtype(dtype).itemsize


def test_kernel_is_traced_once_per_leaf_signature(monkeypatch):
    calls = []
    kernel = O.adamw.kernel

    def counting(self, *args):
        calls.append(args[1].shape)
        return kernel(self, *args)

    monkeypatch.setattr(O.adamw, "kernel", counting)
    opt = O.adamw(1e-3)
    params = {f"w{i}": jnp.ones((4, 3)) for i in range(12)} | {"b": jnp.ones(3)}
    state = opt.init(params)
    jax.jit(opt.update).lower(params, state, params)
    assert sorted(calls) == [(3,), (4, 3)]
    # Eagerly every leaf runs its own kernel (no jit to share).
    calls.clear()
    opt.update(params, state, params)
    assert len(calls) == 13
