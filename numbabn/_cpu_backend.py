"""The CPU backend: NumPy arrays in, NumPy arrays out, kernels from ``kernels.cpu``."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np

from . import config
from .kernels import formulas as f


class CpuBackend:
    """Array plumbing around the ``@njit`` kernels."""

    name = "cpu"

    def __init__(self) -> None:
        from ._cache import ensure_cache_dir

        ensure_cache_dir()
        _choose_threading_layer()
        _start_thread_pool()
        from .kernels import cpu

        self.kernels = cpu
        self._workqueue_lock = threading.Lock()

    def _serialized(self):
        """A lock around kernel calls if Numba runs the workqueue layer (not thread-safe)."""
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return contextlib.nullcontext()
        return self._workqueue_lock if layer == "workqueue" else contextlib.nullcontext()

    # --- arrays -------------------------------------------------------------------
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
    def channel_rows(a: np.ndarray, n_dir: int) -> np.ndarray:
        """A (C,) or (V, C) per-channel array as a (V, C) float64 array."""
        return _readonly(np.ascontiguousarray(np.broadcast_to(a, (n_dir, a.shape[-1])), np.float64))

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def writable_view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A view of the caller's ``out`` with ``shape``; ValueError unless it can be written."""
        if not a.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        if not a.flags.writeable:
            raise ValueError("out is read-only")
        return a.reshape(shape)

    @staticmethod
    def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the memory bounds of two arrays intersect."""
        return np.may_share_memory(a, b)

    @staticmethod
    def zeros(shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)

    @staticmethod
    def to_host(a: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def from_host(a: np.ndarray) -> np.ndarray:
        return a

    @staticmethod
    def wrap(a: np.ndarray, like: Any = None) -> np.ndarray:
        """A result as the caller's kind of array (here: already NumPy)."""
        return a

    @staticmethod
    def assign(dst: np.ndarray, v: int, src: np.ndarray) -> None:
        """``dst[v] = src``, cast to dst's dtype."""
        dst[v] = src

    @staticmethod
    def freeze(a: np.ndarray) -> np.ndarray:
        a.setflags(write=False)
        return a

    @staticmethod
    def parameter_outputs(coef: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """The (V, C) gamma and beta outputs of the coefficient array, in ``dtype``."""
        return coef[:, f.P_GAMMA, :].astype(dtype), coef[:, f.P_BETA, :].astype(dtype)

    # --- kernels ------------------------------------------------------------------
    # Arrays arrive in the canonical layout (pre, C, post) / (V, pre, C, post).
    # When post == 1 the channel axis is the contiguous one, and the kernels get
    # the "rows" views (pre, C) / (V, pre, C) so their inner loops run along it.

    @staticmethod
    def first_elements(x3: np.ndarray) -> np.ndarray:
        """The first element of each channel, as a (C,) float64 array."""
        return _readonly(np.array(x3[0, :, 0], dtype=np.float64))

    def _kernel(self, name: str, elements: int):
        """The parallel kernel ``name``, or its serial twin for small arrays."""
        if elements <= config.SERIAL_MAX_ELEMENTS:
            return self.kernels.serial[name]
        return getattr(self.kernels, name)

    def shifted_sums(self, x3: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Per-channel sums of ``x - shift`` and its square, (2, C) float64."""
        n_chunks, n_blocks = _tiling(x3.shape)
        kernel = self._kernel("shifted_sums", x3.size)
        with self._serialized():
            return kernel(_rows(x3), _readonly(shift), n_chunks, n_blocks)

    def moment_sums(self, x3, mean, invstd, dz, h, u, w, n_dir: int) -> np.ndarray:
        n_chunks, n_blocks = _tiling(x3.shape)
        r = _rows
        kernel = self._kernel("moment_sums", x3.size * n_dir)
        with self._serialized():
            return kernel(r(x3), mean, invstd, r(dz), r(h), r(u), r(w), n_dir, n_chunks, n_blocks)

    def finish_stats(self, shift, sums, count: int, eps: float):
        return self.kernels.finish_stats(_readonly(shift), sums, float(count), eps)

    def coefficients(self, terms: int, sums, gamma, invstd, count: int, ug, ub):
        return self.kernels.coefficients(terms, sums, gamma, invstd, float(count), ug, ub)

    def apply_affine(self, x3, mean, dz, h, u, w, coef, out) -> None:
        r = _rows
        kernel = self._kernel("apply_affine", out.size)
        tile_rows = max(1, config.APPLY_TILE_ELEMENTS // (x3.shape[1] * x3.shape[2]))
        with self._serialized():
            kernel(r(x3), mean, r(dz), r(h), r(u), r(w), coef, r(out), tile_rows)


def _rows(a: np.ndarray | None) -> np.ndarray | None:
    """Drop the trailing post axis when it has length 1 (a free view)."""
    return a[..., 0] if a is not None and a.shape[-1] == 1 else a


def _tiling(dims: tuple[int, int, int]) -> tuple[int, int]:
    """(row chunks, channel blocks) of a reduction over a (pre, C, post) array.

    Chunks hold at least ``config.MIN_CHUNK_ROWS`` rows of the rows layout (or
    as many elements in planes), so partial buffers stay small next to the
    data; channels split into blocks of ``config.CHANNEL_BLOCK`` (rows layout)
    or one channel per block (planes layout). Depends on the shape alone.
    """
    pre, n_ch, post = dims
    n_chunks = max(1, min(pre, config.REDUCE_CHUNKS, pre * post // config.MIN_CHUNK_ROWS))
    width = config.CHANNEL_BLOCK if post == 1 else 1
    return n_chunks, (n_ch + width - 1) // width


def _choose_threading_layer() -> None:
    """Ask for a thread-safe Numba threading layer (TBB or OpenMP).

    Numba's default ``workqueue`` layer aborts the process when two Python
    threads run parallel kernels at once. Unless the user chose a layer
    (``NUMBA_THREADING_LAYER``), or one is already running, numbabn asks for
    ``"threadsafe"``: TBB if installed, else OpenMP (GNU libgomp, which ships
    with gcc's runtime on Linux).
    """
    import os

    import numba

    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        numba.threading_layer()  # raises ValueError until a layer is launched
    except ValueError:
        numba.config.THREADING_LAYER = "threadsafe"


def _start_thread_pool() -> None:
    """Start Numba's thread pool with OpenMP's idle threads spinning briefly, then asleep.

    A sleeping thread takes 40-80 µs to wake on the development machine, a
    spinning one 2-3 µs, and each operation runs two or three parallel
    kernels back to back. The pool therefore starts with libgomp's
    ``GOMP_SPINCOUNT`` at ``config.OMP_SPIN_COUNT`` (10,000 spins: 0.1-0.3 ms
    here): threads stay awake between the kernels of a call, then sleep
    instead of starving the BLAS threads of nearby matrix products (libgomp's
    default spins for milliseconds, under which an exact network HVP once ran
    2x slower). OpenMP reads the variable once, when its library loads, so it
    is set only while the pool starts: other OpenMP runtimes loaded later
    (PyTorch's) keep their own defaults. A ``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` the user set is left alone, and so is a pool already
    running.
    """
    import os

    from numba.np.ufunc import parallel

    from . import config

    chosen = "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ
    if not chosen:
        os.environ["GOMP_SPINCOUNT"] = str(config.OMP_SPIN_COUNT)
    try:
        parallel._launch_threads()  # Numba's own entry point; a no-op once started
    finally:
        if not chosen:
            del os.environ["GOMP_SPINCOUNT"]


def _readonly(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.setflags(write=False)
    return view
