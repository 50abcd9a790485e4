"""cadence: learning-rate schedules and PyTorch-exact optimizers for JAX."""

from cadence import checkpoint as checkpoint
from cadence import optimizers as optimizers
from cadence import schedules as schedules

__version__ = "0.1.0"
