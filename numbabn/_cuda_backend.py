"""The CUDA backend: device arrays in, device arrays out, kernels from ``kernels.cuda``.

Inputs are CuPy arrays, Numba device arrays (also those of Numba's CUDA
simulator) or any object with ``__cuda_array_interface__`` (PyTorch CUDA
tensors, ...). They are viewed as Numba device arrays without a copy; the
results come back as CuPy arrays when x is a CuPy array, and as Numba device
arrays otherwise (which CuPy and PyTorch take without a copy through the CUDA
array interface). Nothing crosses to the host except, for ``eps == 0``, the C
variances checked for zeros.

Streams and memory: the kernels run on the default stream. An input made on the
legacy default stream (CuPy's default) needs no wait; one made on another
stream is waited for, as the CUDA array interface asks. Work arrays and results
come from CuPy's memory pool once CuPy is imported (a pool allocation costs a
few microseconds, ``cudaMalloc`` about 70-150 on an H100 machine), else from
Numba's allocator.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import config
from ._dispatch import is_cupy_array
from .kernels import formulas as f

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy < 2
    from numpy import byte_bounds


class CudaBackend:
    """Array plumbing around the ``@cuda.jit`` kernels."""

    name = "cuda"

    def __init__(self) -> None:
        from numba import config as numba_config
        from numba import cuda

        if not cuda.is_available():
            raise RuntimeError(
                "CUDA arrays were given, but CUDA is not usable on this machine "
                "(numba.cuda.is_available() is False: no driver or no device)"
            )
        from .kernels import cuda as kernels

        self.cuda = cuda
        self.kernels = kernels
        self.simulated = bool(numba_config.ENABLE_CUDASIM)

    # --- arrays -------------------------------------------------------------------
    def device(self, a: Any):
        """A Numba device-array view of a CUDA array (no copy); None stays None."""
        if a is None or getattr(a, "__cuda_ndarray__", False):
            return a
        stream = a.__cuda_array_interface__.get("stream")
        return self.cuda.as_cuda_array(a, sync=stream not in (None, _LEGACY_DEFAULT_STREAM))

    def contiguous(self, a: Any, shape: tuple[int, ...]):
        """A C-contiguous device array with ``shape``; strided CuPy arrays are copied
        on the device first."""
        d = self.device(a)
        if not d.is_c_contiguous():
            if not is_cupy_array(a):
                raise ValueError(
                    "a non-contiguous device array was given; numbabn copies strided "
                    "CUDA inputs only when they are CuPy arrays: pass a contiguous array "
                    "(e.g. cupy.ascontiguousarray(a))"
                )
            import cupy

            d = self.cuda.as_cuda_array(cupy.ascontiguousarray(a))
        return d.reshape(shape)

    def writable_view(self, a: Any, shape: tuple[int, ...]):
        """A device-array view of the caller's ``out`` with ``shape`` (C-contiguous only)."""
        d = self.device(a)
        if not d.is_c_contiguous():
            raise ValueError("out must be C-contiguous")
        return d.reshape(shape)

    @staticmethod
    def overlaps(a: Any, b: Any) -> bool:
        """Whether the device memory ranges of two arrays intersect (False when a
        range is unknown, as for the simulator's arrays)."""
        ra, rb = _byte_range(a), _byte_range(b)
        return ra is not None and rb is not None and ra[0] < rb[1] and rb[0] < ra[1]

    def float64(self, a: Any):
        return self.channel_rows(a, 1).reshape(tuple(a.shape)[-1])

    def channel_rows(self, a: Any, n_dir: int):
        """A (C,) or (V, C) per-channel array as a (V, C) float64 device array."""
        n_ch = tuple(a.shape)[-1]
        src = self.contiguous(a, (1 if a.ndim == 1 else a.shape[0], n_ch))
        dst = self.empty((n_dir, n_ch), np.float64)
        self._launch(self.kernels.to_float64_rows, n_dir * n_ch, src, dst)
        return dst

    def empty(self, shape: tuple[int, ...], dtype: np.dtype):
        """An uninitialised device array, from CuPy's pool when CuPy is in use."""
        cupy = sys.modules.get("cupy")
        if cupy is None or self.simulated:
            return self.cuda.device_array(shape, dtype)
        return self.cuda.as_cuda_array(cupy.empty(shape, dtype), sync=False)

    def zeros(self, shape: tuple[int, int, int]):
        a = self.empty(shape, np.float64)
        self._launch(self.kernels.fill, math.prod(shape), a, 0.0)
        return a

    def to_host(self, a: Any) -> np.ndarray:
        return self.device(a).copy_to_host()

    def from_host(self, a: np.ndarray):
        return self.cuda.to_device(np.ascontiguousarray(a))

    @staticmethod
    def wrap(a: Any, like: Any = None):
        """A result as the caller's kind of array: CuPy if ``like`` is CuPy."""
        if like is not None and is_cupy_array(like):
            import cupy

            return cupy.asarray(a)
        return a

    def assign(self, dst, v: int, src) -> None:
        """``dst[v] = src``, cast to dst's dtype, on the device (src contiguous)."""
        n = src.size
        self._launch(self.kernels.copy_flat, n, src.reshape(n), dst[v].reshape(n))

    @staticmethod
    def freeze(a: Any):
        return a  # device arrays have no read-only flag

    def parameter_outputs(self, coef, dtype: np.dtype):
        n_dir, _, n_ch = coef.shape
        pg = self.empty((n_dir, n_ch), dtype)
        pb = self.empty((n_dir, n_ch), dtype)
        self._launch(self.kernels.parameter_outputs, n_dir * n_ch, coef, pg, pb)
        return pg, pb

    # --- kernels ------------------------------------------------------------------
    def first_elements(self, x3):
        out = self.empty(x3.shape[1], np.float64)
        self._launch(self.kernels.first_elements, x3.shape[1], x3, out)
        return out

    def shifted_sums(self, x3, shift):
        k = self.kernels.build(config.CUDA_BLOCK, _width())
        part = self._reduce(k.shifted_partials, x3, 1, 2, x3, self.device(shift))
        return self._merge(part, 1, 2)[0]

    def moment_sums(self, x3, mean, invstd, dz, h, u, w, n_dir: int):
        k = self.kernels.build(config.CUDA_BLOCK, _width())
        d = self.device
        args = (x3, d(mean), d(invstd), dz, h, u, w)
        part = self._reduce(k.moment_partials, x3, n_dir, f.N_SUMS, *args)
        return self._merge(part, n_dir, f.N_SUMS)

    def finish_stats(self, shift, sums, count: int, eps: float):
        n_ch = sums.shape[1]
        mean, var, invstd = (self.empty(n_ch, np.float64) for _ in range(3))
        args = (self.device(shift), sums, float(count), eps, mean, var, invstd)
        self._launch(self.kernels.finish_stats, n_ch, *args)
        return mean, var, invstd

    def coefficients(self, terms: int, sums, gamma, invstd, count: int, ug, ub):
        n_dir, _, n_ch = sums.shape
        coef = self.empty((n_dir, f.N_COEF, n_ch), np.float64)
        args = (terms, sums, gamma, self.device(invstd), float(count), ug, ub, coef)
        self._launch(self.kernels.coefficients, n_dir * n_ch, *args)
        return coef

    def apply_affine(self, x3, mean, dz, h, u, w, coef, out) -> None:
        args = (x3, self.device(mean), dz, h, u, w, coef, out)
        self._launch(self.kernels.apply_affine, out.size, *args)

    # --- launches -----------------------------------------------------------------
    def _launch(self, kernel, n_threads: int, *args) -> None:
        block = config.CUDA_BLOCK
        blocks = max(1, min(config.CUDA_MAX_BLOCKS, -(-n_threads // block)))
        kernel[blocks, block](*args)

    def _reduce(self, kernel, x3, n_dir: int, n_slots: int, *args):
        """Launch a partial-sum kernel; returns the (S, V, n_slots, C) partials."""
        pre, n_ch, post = x3.shape
        block = config.CUDA_BLOCK
        if post == 1:  # `width` channels a block, its other threads on other rows
            groups, lanes = -(-n_ch // _width()), block // _width()
        else:  # the whole block on one channel
            groups, lanes = n_ch, block
        slices = _slices(pre * post, lanes, groups * n_dir)
        part = self.empty((slices, n_dir, n_slots, n_ch), np.float64)
        kernel[(slices, groups, n_dir), block](*args, part)
        return part

    def _merge(self, part, n_dir: int, n_slots: int):
        out = self.empty((n_dir, n_slots, part.shape[3]), np.float64)
        self._launch(self.kernels.merge_partials, out.size, part, out)
        return out


#: The CUDA array interface's number for the legacy default stream.
_LEGACY_DEFAULT_STREAM = 1


def _width() -> int:
    """Channels of a reduction block when channels are contiguous."""
    return min(config.CUDA_CONTIGUOUS_CHANNELS, config.CUDA_BLOCK)


def _slices(per_channel: int, lanes: int, other_blocks: int) -> int:
    """Blocks along the reduced elements of a channel, shared by ``lanes`` threads
    of a block: about ``config.CUDA_ELEMENTS_PER_THREAD`` elements a thread, at
    most ``config.CUDA_MAX_BLOCKS`` blocks in all (shape-only, so deterministic)."""
    wanted = -(-per_channel // (lanes * config.CUDA_ELEMENTS_PER_THREAD))
    return max(1, min(wanted, config.CUDA_MAX_BLOCKS // max(1, other_blocks)))


def _byte_range(a: Any) -> tuple[int, int] | None:
    """[first, last + 1) byte addresses of a CUDA array, from its array interface."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None:
        return None
    size = math.prod(cai["shape"])
    if size == 0:
        return cai["data"][0], cai["data"][0]
    return byte_bounds(SimpleNamespace(__array_interface__={**cai, "version": 3}, size=size))
