"""Learning-rate schedules: pure, composable functions of the step.

Every schedule is a frozen dataclass and a JAX pytree; ``s(k)`` is the value
used by the k-th update (from 0). A schedule can drive any hyperparameter:
``one_cycle_momentum`` and ``cyclic_momentum`` (``s.momentum()`` of a
``one_cycle`` or ``cyclic`` lr) are the momentum torch's OneCycleLR and
CyclicLR cycle by default, for ``O.sgd(momentum=)`` or ``O.adam(b1=)``.

Example:
    >>> from cadence import schedules as S
    >>> s = S.warmup(S.cosine(1e-3, 900, end=1e-5), 100)
    >>> [round(float(s(t)), 7) for t in (0, 50, 100, 1000)]
    [0.0, 0.0005, 0.001, 1e-05]
"""

from ._base import Schedule as Schedule
from ._combinators import clip as clip
from ._combinators import join as join
from ._combinators import per_epoch as per_epoch
from ._combinators import restarts as restarts
from ._combinators import shift as shift
from ._combinators import warmup as warmup
from ._config import from_config as from_config
from ._config import to_config as to_config
from ._cycles import cyclic as cyclic
from ._cycles import cyclic_momentum as cyclic_momentum
from ._cycles import one_cycle as one_cycle
from ._cycles import one_cycle_momentum as one_cycle_momentum
from ._language_models import inverse_sqrt as inverse_sqrt
from ._language_models import noam as noam
from ._language_models import wsd as wsd
from ._plot import plot as plot
from ._primitives import constant as constant
from ._primitives import cosine as cosine
from ._primitives import exponential as exponential
from ._primitives import from_fn as from_fn
from ._primitives import linear as linear
from ._primitives import multistep as multistep
from ._primitives import piecewise as piecewise
from ._primitives import polynomial as polynomial
from ._primitives import step_decay as step_decay
from ._registry import NAMES as NAMES
from ._registry import get as get
from ._swa import swa as swa
