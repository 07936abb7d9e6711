"""numbabn: fast closed-form first- and second-order derivatives of BatchNorm.

Array-in/array-out functions on NumPy (CPU, Numba ``@njit``) or CUDA arrays
(Numba ``@cuda.jit``), chosen from the array type. See the README and
docs/design.md for the math.
"""

from .curvature import ggnvp, hvp, rop_backward, rvp, vjp_backward
from .layer import forward, jvp, vjp
from .stats import BatchStats, batch_stats

__all__ = [
    "BatchStats",
    "batch_stats",
    "forward",
    "jvp",
    "vjp",
    "rvp",
    "hvp",
    "ggnvp",
    "rop_backward",
    "vjp_backward",
]

__version__ = "0.1.0"
