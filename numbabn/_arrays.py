"""Kinds of array arguments: NumPy (host) or CUDA (device), told apart without
importing CuPy, PyTorch or the CUDA driver.

CUDA arrays are objects exposing ``__cuda_array_interface__`` (CuPy, PyTorch
CUDA tensors, Numba device arrays) or ``__cuda_ndarray__`` (the arrays of
Numba's CUDA simulator).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_cuda_array(a: Any) -> bool:
    """True for objects that live on a CUDA device (or in Numba's CUDA simulator)."""
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "__cuda_ndarray__")


def is_cupy_array(a: Any) -> bool:
    """True for CuPy arrays (checked by module name: CuPy need not be imported)."""
    return type(a).__module__.split(".")[0] == "cupy"


def is_torch_tensor(a: Any) -> bool:
    """True for PyTorch tensors (checked by module name: PyTorch need not be imported)."""
    return type(a).__module__.split(".")[0] == "torch"


def array_kind(name: str, a: Any) -> str:
    """``"cpu"`` or ``"cuda"`` for an array argument; TypeError for anything else."""
    if isinstance(a, np.ndarray):
        return "cpu"
    if is_cuda_array(a):
        return "cuda"
    raise TypeError(
        f"{name} must be a NumPy array or a CUDA array (CuPy, Numba device array), "
        f"got {type(a).__name__}"
    )
