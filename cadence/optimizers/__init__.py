"""Optimizers with torch.optim's numerics, as optax-compatible transformations.

Every optimizer is a frozen dataclass and a JAX pytree with
``init(params) -> state`` and ``update(grads, state, params) -> (deltas, state)``;
``optax.apply_updates(params, deltas)`` applies the step. Every float
hyperparameter takes a number, a cadence schedule or a callable of the count.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from cadence import optimizers as O, schedules as S
    >>> opt = O.chain(O.clip_by_global_norm(1.0), O.adamw(S.cosine(1e-2, 100)))
    >>> params = {"w": jnp.ones(3)}
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([0.9899, 0.9899, 0.9899], dtype=float32)
"""

from ._adadelta import adadelta as adadelta
from ._adafactor import adafactor as adafactor
from ._adamax import adamax as adamax
from ._ademamix import ademamix as ademamix
from ._adopt import adopt as adopt
from ._asgd import asgd as asgd
from ._average import average as average
from ._average import lookahead as lookahead
from ._averaged import averaged_params as averaged_params
from ._base import Transformation as Transformation
from ._config import from_config as from_config
from ._declare import flag as flag
from ._declare import hyper as hyper
from ._declare import optimizer_type as optimizer_type
from ._declare import optimizers as optimizers
from ._flatten import flatten as flatten
from ._hyperparams import hyperparams as hyperparams
from ._lamb import lamb as lamb
from ._lars import lars as lars
from ._lbfgs import lbfgs as lbfgs
from ._muon import muon as muon
from ._nadam import nadam as nadam
from ._optimizer import Optimizer as Optimizer
from ._optimizers import adagrad as adagrad
from ._optimizers import adam as adam
from ._optimizers import adamw as adamw
from ._optimizers import lion as lion
from ._optimizers import rmsprop as rmsprop
from ._optimizers import sgd as sgd
from ._param_groups import add_param_group as add_param_group
from ._partition import partition as partition
from ._partition import rules as rules
from ._precision import loss_scale as loss_scale
from ._precision import master_weights as master_weights
from ._precision import scale_loss as scale_loss
from ._radam import radam as radam
from ._rprop import rprop as rprop
from ._schedule_free import schedule_free_adamw as schedule_free_adamw
from ._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from ._schedule_free import schedule_free_sgd as schedule_free_sgd
from ._sharding import state_shardings as state_shardings
from ._transforms import chain as chain
from ._transforms import clip_by_global_norm as clip_by_global_norm
from ._transforms import clip_by_value as clip_by_value
from ._trees import Leaves as Leaves
from ._wrappers import accumulate as accumulate
from ._wrappers import reduce_on_plateau as reduce_on_plateau
from ._wrappers import skip_nonfinite as skip_nonfinite
from ._zero import shard_state as shard_state
