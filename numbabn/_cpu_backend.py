"""The CPU backend: NumPy arrays in, NumPy arrays out, kernels from ``kernels.cpu``.

Arrays reach the kernels in the canonical layout ``(pre, C, post)`` /
``(V, pre, C, post)``, except that a trailing ``post`` axis of length 1 is
dropped: the "rows" layout ``(pre, C)`` / ``(V, pre, C)``, where the channel
axis is the contiguous one and the kernels' inner loops run along it.

Every kernel is called through the entry point of its compiled specialisation
once that is known (:class:`_Kernel`), and the kernels and tiling of an
operation on a layout are worked out once (:meth:`CpuBackend.plan`): on a small
batch the Python around the kernels would otherwise cost more than they do.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np

from . import config
from .kernels import formulas as f

_F64 = np.dtype(np.float64)


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
        self._kernels: dict[tuple, _Kernel] = {}
        self._plans: dict[tuple, _Plan] = {}
        self._tilings: dict[tuple, tuple[int, int]] = {}
        self._stats_plans: dict[tuple, tuple] = {}

    def _serialized(self):
        """A lock around parallel kernel calls if Numba runs the workqueue layer (not
        thread-safe)."""
        import numba

        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            return contextlib.nullcontext()
        return self._workqueue_lock if layer == "workqueue" else contextlib.nullcontext()

    # --- arrays -------------------------------------------------------------------
    @staticmethod
    def kernel_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
        """The kernel layout of a canonical shape: a trailing post axis of 1 dropped."""
        return shape[:-1] if shape[-1] == 1 else shape

    @staticmethod
    def view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """``a`` as a C-contiguous array of the kernel-layout ``shape`` (copied only
        when not contiguous). The kernels never write their inputs."""
        return np.ascontiguousarray(a).reshape(shape)

    @staticmethod
    def float64(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float64)

    channel_arg = float64  # gamma as the kernels take it

    @staticmethod
    def channel_rows(a: np.ndarray, n_dir: int) -> np.ndarray:
        """A (C,) or (V, C) per-channel array as a (V, C) float64 array."""
        if a.ndim == 2 or n_dir == 1:  # (V, C) as it is, or (C,) as one row: a view
            return np.ascontiguousarray(a, dtype=np.float64).reshape(n_dir, a.shape[-1])
        return np.ascontiguousarray(np.broadcast_to(a, (n_dir, a.shape[-1])), np.float64)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: np.dtype, like: Any = None) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def writable_view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A view of the caller's ``out`` with the kernel-layout ``shape``; ValueError
        unless it can be written."""
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
    def is_stat_array(a: Any) -> bool:
        """Whether a statistics array (mean, invstd) goes to the kernels as it is:
        a float64, C-contiguous NumPy array of one dimension."""
        return (
            isinstance(a, np.ndarray) and a.dtype == _F64 and a.ndim == 1 and a.flags.c_contiguous
        )

    @staticmethod
    def stat_arg(a: np.ndarray) -> np.ndarray:
        """A statistics array for which :meth:`is_stat_array` holds, as the kernels take it."""
        return a

    # --- operations ---------------------------------------------------------------
    def plan(self, terms: int, dims: tuple[int, int, int], n_dir: int, dtype: np.dtype,
             present: tuple[bool, ...], params: bool, batched: bool) -> _Plan:  # fmt: skip
        """The kernels and tiling of one operation on one layout (:meth:`execute`).

        ``present`` says which of (dz, h, u, w, u_gamma, u_beta) are given;
        ``params`` whether the gamma and beta outputs are wanted, as (V, C) arrays
        when ``batched``, else (C,).
        """
        key = (terms, dims, n_dir, dtype, present, params, batched, config.version)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = self._make_plan(terms, dims, n_dir, dtype, present, params)
            plan.params = None if not params else slice(None) if batched else 0
        return plan

    def _make_plan(self, terms, dims, n_dir, dtype, present, params) -> _Plan:
        shape = self.kernel_shape(dims)
        elements = dims[0] * dims[1] * dims[2]
        absent = tuple(not p for p in present[:4])
        p = _Plan()
        p.terms, p.n_dir, p.dtype, p.params = terms, n_dir, dtype, params
        p.out_shape = (n_dir, *shape)
        p.n_chunks, p.n_blocks = _tiling(dims)
        p.tile_rows = max(1, config.APPLY_TILE_ELEMENTS // (elements // dims[0]))
        p.zeros = None
        p.moments = None
        if terms & ~f.TERM_PARAM:
            p.moments, p.moments_serial = self._kernel("moment_sums", elements * n_dir,
                                                       (dtype.char, len(shape), *absent),
                                                       _MOMENT_INPUTS)  # fmt: skip
        else:
            p.zeros = np.zeros((n_dir, f.N_SUMS, dims[1]))
            p.zeros.setflags(write=False)
        p.coefficients = self._coefficients(terms, not present[4], not present[5])
        p.apply, p.apply_serial = self._kernel("apply_affine", elements * n_dir,
                                               (dtype.char, len(shape), *absent),
                                               _APPLY_INPUTS)  # fmt: skip
        return p

    def execute(self, p: _Plan, x3, mean, invstd, dz, h, u, w, ug, ub, gamma, count, out,
                sums=None):  # fmt: skip
        """Reduce, compute the coefficients, apply (docs/design.md §4), by plan ``p``; with
        ``sums`` given (those of all ranks, for sharded batches), no reduction.

        Returns ``(out, params)``: ``out`` in the kernel layout of (V, pre, C, post)
        in x's dtype, and the gamma and beta outputs in x's dtype when the plan asks
        for them, else None.
        """
        if sums is None:
            sums = self._moment_sums(p, x3, mean, invstd, dz, h, u, w)
        coef = p.coefficients.call(sums, gamma, invstd, float(count), ug, ub)
        if out is None:
            out = np.empty(p.out_shape, p.dtype)
        self._apply(p, x3, mean, dz, h, u, w, coef, out)
        return out, _parameter_outputs(p, coef)

    def execute_pair(self, p: _Plan, first_terms: int, x3, mean, invstd, dz, u, ug, ub, gamma,
                     count):  # fmt: skip
        """Two operations on the same dz and u with one reduction and one apply pass:
        ``first_terms`` (whose sums must be among those of plan ``p``) and the
        operation of ``p``; both take ``ug`` and ``ub``.

        Returns ``(out, params)``: ``out`` is (2V, pre, C, post) with the first
        operation's result in ``out[:V]`` and p's in ``out[V:]``; ``params`` as
        :meth:`execute` returns them for ``p``.
        """
        sums = self._moment_sums(p, x3, mean, invstd, dz, None, u, None)
        first = self._coefficients(first_terms, ug is None, ub is None)
        count = float(count)
        second = p.coefficients.call(sums, gamma, invstd, count, ug, ub)
        coef = np.concatenate((first.call(sums, gamma, invstd, count, ug, ub), second))
        out = np.empty((2 * p.n_dir, *p.out_shape[1:]), p.dtype)
        self._apply(p, x3, mean, dz, None, u, None, coef, out)
        return out, _parameter_outputs(p, second)

    def _coefficients(self, terms: int, no_ug: bool, no_ub: bool) -> _Kernel:
        """The coefficients kernel of ``terms`` for absent (or present) tangents."""
        kernel = self.kernels._coefficients_kernel(terms)
        return self._entry(kernel, ("coefficients", terms, no_ug, no_ub), (1, 2, 4, 5))

    def _moment_sums(self, p: _Plan, x3, mean, invstd, dz, h, u, w):
        if p.moments is None:
            return p.zeros
        if p.moments_serial:
            return p.moments.call(x3, mean, invstd, dz, h, u, w, p.n_dir, p.n_chunks, p.n_blocks)
        with self._serialized():
            return p.moments.call(x3, mean, invstd, dz, h, u, w, p.n_dir, p.n_chunks, p.n_blocks)

    def _apply(self, p: _Plan, x3, mean, dz, h, u, w, coef, out) -> None:
        if p.apply_serial:
            p.apply.call(x3, mean, dz, h, u, w, coef, out, p.tile_rows)
        else:
            with self._serialized():
                p.apply.call(x3, mean, dz, h, u, w, coef, out, p.tile_rows)

    def execute_from_sums(self, p: _Plan, sums, x3, mean, invstd, dz, h, u, w, ug, ub, gamma,
                          count, out):  # fmt: skip
        """:meth:`execute` given the (V, N_SUMS, C) sums (of all ranks, for sharded
        batches)."""
        return self.execute(p, x3, mean, invstd, dz, h, u, w, ug, ub, gamma, count, out, sums)

    def batch_stats(self, x3: np.ndarray, count: int, eps: float, forward: Any = None):
        """Mean, variance and invstd of a batch in kernel layout, each (C,) float64,
        and None: the forward coefficients (``forward``) are left to :meth:`execute`."""
        key = (x3.shape, x3.dtype, config.version)
        plan = self._stats_plans.get(key)
        if plan is None:
            shifted, serial = self._kernel("shifted_sums", x3.size, (x3.dtype.char, x3.ndim),
                                           (0, 1))  # fmt: skip
            finish = self._entry(self.kernels.finish_stats, ("finish_stats",), (0,))
            plan = self._stats_plans[key] = (shifted, serial, _tiling((*x3.shape, 1)[:3]), finish)
        shifted, serial, (n_chunks, n_blocks), finish = plan
        shift = np.array(x3[0, :, 0] if x3.ndim == 3 else x3[0], dtype=np.float64)
        if serial:
            sums = shifted.call(x3, shift, n_chunks, n_blocks)
        else:
            with self._serialized():
                sums = shifted.call(x3, shift, n_chunks, n_blocks)
        mean, var, invstd = finish.call(shift, sums, float(count), eps)
        return mean, var, invstd, None

    # --- kernels ------------------------------------------------------------------
    @staticmethod
    def first_elements(x3: np.ndarray) -> np.ndarray:
        """The first element of each channel, as a (C,) float64 array."""
        return np.array(x3[0, :, 0] if x3.ndim == 3 else x3[0], dtype=np.float64)

    def _entry(self, dispatcher, key: tuple, inputs: tuple[int, ...]) -> _Kernel:
        """The :class:`_Kernel` of ``dispatcher`` under ``key`` (one per key)."""
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._kernels[key] = _Kernel(dispatcher, inputs)
        return kernel

    def _kernel(self, name: str, elements: int, key: tuple, inputs: tuple[int, ...]):
        """``(kernel, serial)``: the parallel kernel ``name``, or its serial twin for
        small arrays, as a :class:`_Kernel` for argument types ``key``."""
        serial = elements <= config.SERIAL_MAX_ELEMENTS
        dispatcher = self.kernels.serial[name] if serial else getattr(self.kernels, name)
        return self._entry(dispatcher, (name, serial, *key), inputs), serial

    def shifted_sums(self, x3: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Per-channel sums of ``x - shift`` and its square, (2, C) float64."""
        shape = x3.shape
        key = (shape, config.version)
        tiling = self._tilings.get(key)
        if tiling is None:
            tiling = self._tilings[key] = _tiling((*shape, 1)[:3])
        kernel, serial = self._kernel("shifted_sums", x3.size, (x3.dtype.char, x3.ndim), (0, 1))
        if serial:
            return kernel.call(x3, shift, *tiling)
        with self._serialized():
            return kernel.call(x3, shift, *tiling)

    def moment_sums(self, x3, mean, invstd, dz, h, u, w, n_dir: int) -> np.ndarray:
        """The (V, N_SUMS, C) float64 sums of the inputs present (every slot that
        ``formulas.filled_sum_slots`` names; the others zero)."""
        n_chunks, n_blocks = _tiling((*x3.shape, 1)[:3])
        absent = (dz is None, h is None, u is None, w is None)
        key = (x3.dtype.char, x3.ndim, *absent)
        kernel, serial = self._kernel("moment_sums", x3.size * n_dir, key, _MOMENT_INPUTS)
        args = (x3, mean, invstd, dz, h, u, w, n_dir, n_chunks, n_blocks)
        if serial:
            return kernel.call(*args)
        with self._serialized():
            return kernel.call(*args)

    def finish_stats(self, x3, shift, sums, count: int, eps: float):
        """Mean, variance and invstd from the sums about ``shift`` (x3 unused here)."""
        kernel = self._entry(self.kernels.finish_stats, ("finish_stats",), (0,))
        return kernel.call(shift, sums, float(count), eps)


def _parameter_outputs(p: _Plan, coef: np.ndarray):
    """The gamma and beta outputs in the dtype of x when plan ``p`` asks for them."""
    if p.params is None:
        return None
    v, dtype = p.params, p.dtype
    return coef[v, f.P_GAMMA].astype(dtype), coef[v, f.P_BETA].astype(dtype)


#: Argument positions of the kernels' inputs: passed as read-only views on the
#: first call, so that Numba compiles one specialisation whatever the caller's
#: writeable flags.
_MOMENT_INPUTS = (0, 1, 2, 3, 4, 5, 6)
_APPLY_INPUTS = (0, 1, 2, 3, 4, 5)

#: Plans kept at most (a few per shape and operation of a model).
_MAX_PLANS = 4096


class _Plan:
    """The kernels and constants of one operation on one layout (see
    :meth:`CpuBackend.plan`)."""

    __slots__ = ("terms", "n_dir", "dtype", "params", "out_shape", "n_chunks", "n_blocks",
                 "tile_rows", "zeros", "moments", "moments_serial", "coefficients", "apply",
                 "apply_serial")  # fmt: skip


class _Kernel:
    """One specialisation of a compiled kernel, called as ``kernel.call(*args)``.

    The first call goes through Numba's dispatcher, with the input arrays (the
    argument positions ``inputs``) as read-only views; ``call`` then becomes the
    entry point of the specialisation that ran, which skips the dispatcher's
    typing and overload lookup. Each instance therefore serves one set of
    argument types: the backend keys them on the dtype, the number of
    dimensions and which optional arrays are None, and passes C-contiguous
    arrays only (float64 where the kernel reads float64).
    """

    __slots__ = ("call", "_dispatcher", "_inputs")

    def __init__(self, dispatcher, inputs: tuple[int, ...]) -> None:
        self._dispatcher, self._inputs = dispatcher, inputs
        self.call = self._first_call

    def _first_call(self, *args):
        inputs = self._inputs
        args = tuple(_readonly(a) if i in inputs and a is not None else a
                     for i, a in enumerate(args))  # fmt: skip
        dispatcher = self._dispatcher
        result = dispatcher(*args)
        compiled = dispatcher.overloads.get(tuple(dispatcher.typeof_pyval(a) for a in args))
        if compiled is not None:  # else Numba converted an argument: keep dispatching
            self.call = compiled.entry_point
        return result


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

    A sleeping thread takes far longer to wake than a spinning one, and each
    operation runs two or three parallel kernels back to back. The pool
    therefore starts with libgomp's ``GOMP_SPINCOUNT`` at
    ``config.OMP_SPIN_COUNT``: threads stay awake between the kernels of a
    call, then sleep instead of starving the BLAS threads of nearby matrix
    products (libgomp's default spins for milliseconds, long enough to slow an
    exact network HVP down). OpenMP reads the variable once, when its library
    loads, so it is set only while the pool starts: other OpenMP runtimes
    loaded later (PyTorch's) keep their own defaults. A ``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` the user set is left alone, and so is a pool already
    running.
    """
    import os

    from numba.np.ufunc import parallel

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
