"""Argument checks shared by every public function.

Each check raises a ``TypeError`` or ``ValueError`` whose message starts with
the argument's name, so that no bad input reaches a kernel.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32, _F64 = FLOAT_DTYPES


def dtype_of(a: Any) -> Any:
    """The NumPy dtype of an array argument; PyTorch tensors' dtypes are mapped by
    name, and a dtype NumPy cannot name is returned as it is."""
    dt = a.dtype
    if isinstance(dt, np.dtype):
        return dt
    try:
        return np.dtype(str(dt).removeprefix("torch."))
    except TypeError:
        return dt


def require_float_dtype(name: str, dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = dtype
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {dt}; numbabn supports float32 and float64 arrays only")
    return dt


def require_same_dtype(reference: str, dtype: np.dtype, **arrays: Any) -> None:
    """Every array in ``arrays`` (None entries skipped) must have ``dtype``."""
    for name, a in arrays.items():
        if a is not None and dtype_of(a) != dtype:
            raise TypeError(
                f"{name} has dtype {dtype_of(a)} but {reference} has dtype {dtype}; "
                "every array argument must share the dtype of x"
            )


def call_dtype(x: Any, gamma: Any, arrays: dict[str, Any]) -> np.dtype:
    """The dtype of a call: x's, which must be float32 or float64 and shared by
    gamma and every array in ``arrays`` (None entries skipped).

    The common case (NumPy's own dtype objects, all alike) is recognised by
    identity; anything else goes through the checks that name the culprit.
    """
    dt = x.dtype
    if (dt is _F64 or dt is _F32) and gamma.dtype is dt:
        for a in arrays.values():
            if a is not None and a.dtype is not dt:
                break
        else:
            return dt
    dt = require_float_dtype("x", dtype_of(x))
    for name, a in arrays.items():
        if a is not None:
            require_float_dtype(name, dtype_of(a))
    require_same_dtype("x", dt, gamma=gamma, **arrays)
    return dt


def require_shape(name: str, a: Any, shape: tuple[int, ...], meaning: str) -> None:
    """``a.shape`` must equal ``shape``; ``meaning`` says what it must match."""
    if a.shape != shape and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected {tuple(shape)} ({meaning})")


def normalize_axis(axis: Any, ndim: int) -> int:
    """Return the channel axis as a non-negative int, NumPy style."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def normalize_eps(eps: Any) -> float:
    """Return ``eps`` as a finite, non-negative float."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0.0:
        raise ValueError(f"eps must be finite and non-negative, got {eps}")
    return eps
