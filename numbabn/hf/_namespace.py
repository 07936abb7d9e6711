"""The array namespace (NumPy or CuPy) that hf's code takes from its inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import is_cupy_array


def _xp(a: Any):
    """The array namespace of ``a``: CuPy for CuPy arrays, else NumPy."""
    if is_cupy_array(a):
        import cupy

        return cupy
    return np
