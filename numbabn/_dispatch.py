"""Choose the backend from the array types: NumPy -> CPU, CUDA arrays -> CUDA.

CUDA arrays are objects exposing ``__cuda_array_interface__`` (CuPy, PyTorch
CUDA tensors, Numba device arrays) or ``__cuda_ndarray__`` (the arrays of
Numba's CUDA simulator). Backends are created on first use, so importing
numbabn compiles nothing and never touches CuPy or the CUDA driver.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

BACKENDS = ("auto", "cpu", "cuda")


def is_cuda_array(a: Any) -> bool:
    """True for objects that live on a CUDA device (or in Numba's CUDA simulator)."""
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "__cuda_ndarray__")


def is_cupy_array(a: Any) -> bool:
    """True for CuPy arrays (checked by module name: CuPy need not be imported)."""
    return type(a).__module__.split(".")[0] == "cupy"


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


def select_backend(arrays: dict[str, Any], backend: str = "auto", optional: tuple[str, ...] = ()):
    """Return the backend object for ``arrays``.

    Entries named in ``optional`` may be None and are then skipped; any other
    None is a TypeError like every non-array.

    Raises
    ------
    TypeError
        For a non-array, or a call that mixes host and device arrays.
    ValueError
        For an unknown ``backend`` name, or one that does not match the arrays.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kinds = {
        name: array_kind(name, a)
        for name, a in arrays.items()
        if a is not None or name not in optional
    }
    found = set(kinds.values())
    if len(found) > 1:
        host = sorted(n for n, k in kinds.items() if k == "cpu")
        device = sorted(n for n, k in kinds.items() if k == "cuda")
        raise TypeError(
            f"cannot mix host and device arrays in one call: {', '.join(host)} on the host "
            f"(NumPy), {', '.join(device)} on a CUDA device"
        )
    kind = found.pop() if found else "cpu"
    if backend != "auto" and backend != kind:
        where = "NumPy (host)" if kind == "cpu" else "CUDA (device)"
        raise ValueError(
            f"backend={backend!r} was requested but the arrays are {where} arrays; "
            "move them first (numbabn never copies between host and device)"
        )
    return _cpu() if kind == "cpu" else _cuda()


@cache
def _cpu():
    from ._cpu_backend import CpuBackend

    return CpuBackend()


@cache
def _cuda():
    from ._cuda_backend import CudaBackend

    return CudaBackend()
