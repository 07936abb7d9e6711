"""The CPU backend: NumPy arrays in, NumPy arrays out, kernels from ``kernels.cpu``."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import config


class CpuBackend:
    """Array plumbing around the ``@njit`` kernels."""

    name = "cpu"

    def __init__(self) -> None:
        from ._cache import ensure_cache_dir

        ensure_cache_dir()
        from .kernels import cpu

        self.kernels = cpu

    # --- arrays -------------------------------------------------------------------
    @staticmethod
    def owns(a: Any) -> bool:
        return isinstance(a, np.ndarray)

    @staticmethod
    def contiguous(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only, C-contiguous view of ``a`` with ``shape`` (copies only if needed).

        Kernel inputs are always read-only views, so Numba compiles one
        specialisation per dtype whatever the caller's writeable flags.
        """
        return _readonly(np.ascontiguousarray(a).reshape(shape))

    @staticmethod
    def float64(a: np.ndarray) -> np.ndarray:
        return _readonly(np.ascontiguousarray(a, dtype=np.float64))

    @staticmethod
    def broadcast(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(a, shape)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def zeros(shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    @staticmethod
    def to_host(a: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def cast(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return a.astype(dtype)

    @staticmethod
    def freeze(a: np.ndarray) -> np.ndarray:
        a.setflags(write=False)
        return a

    # --- kernels ------------------------------------------------------------------
    def shifted_sums(self, x3: np.ndarray, shift: np.ndarray) -> np.ndarray:
        return self.kernels.shifted_sums(x3, _readonly(shift), _chunks(x3.shape[0]))

    def moment_sums(self, x3, mean, invstd, dz, h, u, w, n_dir: int) -> np.ndarray:
        return self.kernels.moment_sums(x3, mean, invstd, dz, h, u, w, n_dir, _chunks(x3.shape[0]))

    def finish_stats(self, first, second, count: int, eps: float):
        return self.kernels.finish_stats(first, second, float(count), eps)

    def coefficients(self, terms: int, sums, gamma, invstd, count: int, ug, ub):
        return self.kernels.coefficients(terms, sums, gamma, invstd, float(count), ug, ub)

    def apply_affine(self, x3, mean, invstd, dz, h, u, w, coef, out) -> None:
        self.kernels.apply_affine(x3, mean, invstd, dz, h, u, w, coef, out)


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.setflags(write=False)
    return view


def _chunks(pre: int) -> int:
    return max(1, min(pre, config.REDUCE_CHUNKS))
