"""A fresh state can be donated: no array object appears twice in (params, state).

XLA refuses to donate one buffer twice. Groups that do not override a
hyperparameter share its array in the state's record, and some wrappers
start two fields at the same value; `init` copies such repeats.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cadence import optimizers as O

from .examples import EVERYTHING, grads, params


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_a_fresh_state_holds_each_array_once(name):
    p = params()
    state = EVERYTHING[name].init(p)
    arrays = [x for x in jax.tree.leaves((p, state)) if isinstance(x, jax.Array)]
    assert len({id(x) for x in arrays}) == len(arrays)


def test_a_donated_step_runs_from_a_fresh_state_of_a_wrapped_grouped_optimizer():
    # Before `init` copied repeats, XLA raised "donate the same buffer twice".
    opt = O.skip_nonfinite(O.adamw(0.01, groups={"*/b": {"weight_decay": 0.0}}))
    step = jax.jit(opt.step, donate_argnums=(1, 2))
    p = params()
    expected, _ = jax.jit(opt.step)(grads(0), opt.init(p), p)
    new, _ = step(grads(0), opt.init(params()), params())
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
