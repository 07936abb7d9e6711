"""numbabn: fast closed-form first- and second-order derivatives of BatchNorm.

Array-in/array-out functions on NumPy (CPU, Numba ``@njit``) or CUDA arrays
(Numba ``@cuda.jit``), chosen from the array type. See the README and
DESIGN.md for the math.
"""

import os as _os

# Spinning OpenMP threads starve the BLAS threads of the matrix products that
# surround BatchNorm in a network (an exact network HVP ran 2x slower on two
# cores); large kernels run as fast either way. OpenMP reads this once, when it
# first loads, so it only takes effect if numbabn is imported before any other
# OpenMP user (e.g. torch). Set OMP_WAIT_POLICY yourself to choose otherwise.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .curvature import ggnvp, hvp, rop_backward, rvp
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
]

__version__ = "0.1.0"
