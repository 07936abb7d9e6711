"""Choose the backend from the array types: NumPy -> CPU, CUDA arrays -> CUDA.

Backends are created on first use, so importing numbabn compiles nothing and
never touches CuPy or the CUDA driver. The kinds of arrays themselves are told
apart in :mod:`numbabn._arrays`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ._arrays import array_kind, is_cuda_array, is_cupy_array

__all__ = ["BACKENDS", "array_kind", "is_cuda_array", "is_cupy_array", "select_backend"]

BACKENDS = ("auto", "cpu", "cuda")


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
    if backend == "auto" and _all_numpy(arrays, optional):
        return cpu_backend()  # the common case, without building the table of kinds below
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
    return cpu_backend() if kind == "cpu" else cuda_backend()


def _all_numpy(arrays: dict[str, Any], optional: tuple[str, ...]) -> bool:
    """Whether every entry is a NumPy array, or None where ``optional`` allows it."""
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) and (a is not None or name not in optional):
            return False
    return True


@cache
def cpu_backend():
    """The CPU backend, created (and its thread pool started) on first use."""
    from ._cpu_backend import CpuBackend

    return CpuBackend()


@cache
def cuda_backend():
    """The CUDA backend, created on first use."""
    from ._cuda_backend import CudaBackend

    return CudaBackend()
