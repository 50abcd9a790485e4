"""`radam`, `adamax`, `adadelta`, `ademamix`: state sharded like the parameters, exact resume.

(Their arithmetic is checked against torch and optax in
``test_adaptive_parity.py``; the invariants every optimizer shares run on
their `examples.OPTIMIZERS` entries.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cadence import checkpoint
from cadence import optimizers as O

from .examples import OPTIMIZERS, grads, params

NAMES = sorted(
    n for n in OPTIMIZERS if n.split("_")[0] in ("radam", "adamax", "adadelta", "ademamix")
)


def test_every_path_has_an_example():
    assert {n.split("_")[0] for n in NAMES} == {"radam", "adamax", "adadelta", "ademamix"}
    assert OPTIMIZERS["radam_decoupled"].decoupled_weight_decay


@pytest.mark.parametrize("name", NAMES)
def test_state_is_sharded_like_the_parameters(name):
    opt = OPTIMIZERS[name]
    mesh = jax.make_mesh((1,), ("model",))
    sharded = NamedSharding(mesh, P("model"))
    p = jax.tree.map(lambda x: jax.device_put(x, sharded), params())
    shardings = O.state_shardings(opt, p)
    for buffer in opt.buffers():
        leaves = jax.tree.leaves(getattr(shardings, buffer))
        assert leaves and all(s == sharded for s in leaves), buffer
    assert shardings.count == NamedSharding(mesh, P())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_resume_is_bit_identical(name, tmp_path):
    opt = OPTIMIZERS[name]
    p = params()
    state = opt.init(p)
    step = jax.jit(opt.step)
    # Past RAdam's switch to the rectified step (update 6), across the save.
    for k in range(4):
        p, state = step(grads(k), state, p)
    checkpoint.save(tmp_path, 4, p, state, optimizer=opt)
    restored = checkpoint.restore(tmp_path)
    assert restored.optimizer == opt
    rp, rs = restored.params, restored.opt_state
    for k in range(4, 8):
        p, state = step(grads(k), state, p)
        rp, rs = step(grads(k), rs, rp)
    for a, b in zip(jax.tree.leaves((p, state)), jax.tree.leaves((rp, rs)), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert bool(jnp.all(jnp.isfinite(p["encoder"]["w"])))
