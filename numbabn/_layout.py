"""The canonical layout: any array with channel axis ``axis`` as ``(pre, C, post)``.

For a C-contiguous array the reshape is a free view; anything else (Fortran
order, strided or negative-stride views) is copied once into C order first.
"""

from __future__ import annotations

import math
from functools import lru_cache


@lru_cache(maxsize=1024)
def canonical_dims(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """``(pre, C, post)`` for an array of ``shape`` with channel axis ``axis`` (>= 0).

    Cached: a training loop asks for the same few shapes on every call.
    """
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
