"""The CUDA backend: device arrays in, device arrays out, kernels from ``kernels.cuda``.

Inputs are CuPy arrays, PyTorch CUDA tensors, Numba device arrays (also those
of Numba's CUDA simulator) or any object with ``__cuda_array_interface__``.
Results are arrays of x's kind: CuPy arrays for CuPy, tensors for PyTorch, Numba
device arrays otherwise. Nothing crosses to the host except, for ``eps == 0``,
the C variances checked for zeros, and the sums of sharded batches.

An operation is two launches (``kernels.cuda``): a reduction whose last block
computes the coefficients, and the apply pass; a call that computes its
statistics adds one. Per call the host does little: the layout, kernels,
launch configurations and workspace of an operation on a shape are worked
out once (:meth:`CudaBackend.plan`); arrays enter the kernels as
:class:`DeviceArg` records (pointer, shape, dtype), without array views; and
with ``config.CUDA_LAUNCH == "direct"`` each launch passes those pointers to
the compiled kernel of its signature (:class:`_DirectLauncher`), skipping
Numba's argument typing.

Streams: kernels run on the caller's current stream: CuPy's current stream for
CuPy arrays, PyTorch's for tensors, the legacy default stream otherwise. An
input bound to another stream (a Numba device array made on a stream, or an
interface that names one) is waited for once per call with an event, never by
blocking the host. Each stream has its own workspace (partial sums,
coefficients) and launch counters, used under a lock from the first launch of
an operation to its last.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import config
from ._arrays import is_cupy_array, is_torch_tensor
from ._validation import dtype_of
from .kernels import formulas as f

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # NumPy < 2
    from numpy import byte_bounds

_F64 = np.dtype(np.float64)
_I32 = np.dtype(np.int32)

#: Streams whose workspaces are kept at most (one per stream a program launches on).
_MAX_SLOTS = 64

#: The CUDA array interface's numbers for the legacy and per-thread default streams.
_LEGACY_DEFAULT_STREAM = 1
_PER_THREAD_DEFAULT_STREAM = 2


class DeviceArg:
    """An array as a kernel argument: a C-contiguous block of device memory.

    Attributes
    ----------
    base : array
        The array object that owns the memory (kept alive while the record is).
    offset : int
        Elements from the start of ``base`` to the first element.
    shape : tuple of int
        Shape the kernel sees (C order).
    dtype : numpy.dtype
    ptr : int or None
        Device address of the first element (None in the CUDA simulator).
    kind : _Kind
        How to allocate like ``base``, view it and find its stream.
    stream : int or None
        A stream the data must be waited for before use, or None.
    """

    __slots__ = ("base", "offset", "shape", "dtype", "ptr", "kind", "stream")

    def __init__(self, base, offset, shape, dtype, ptr, kind, stream=None) -> None:
        self.base, self.offset, self.shape, self.dtype = base, offset, shape, dtype
        self.ptr, self.kind, self.stream = ptr, kind, stream

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def sub(self, offset: int, shape: tuple[int, ...]) -> DeviceArg:
        """Elements ``[offset, offset + prod(shape))`` of this record, as ``shape``."""
        ptr = None if self.ptr is None else self.ptr + offset * self.dtype.itemsize
        return DeviceArg(self.base, self.offset + offset, shape, self.dtype, ptr, self.kind)

    def view(self):
        """An array object of the record's kind for Numba's own launch route."""
        return self.kind.view(self.base, self.offset, self.shape)


class CudaBackend:
    """Array plumbing and launches around the ``@cuda.jit`` kernels."""

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
        self._kinds: dict[type, _Kind] = {}
        self._slots: dict[tuple, _StreamSlot] = {}
        self._plans: dict[tuple, SimpleNamespace] = {}
        self._slots_lock = threading.Lock()
        self._direct = None if self.simulated else _DirectLauncher()

    # --- arrays -------------------------------------------------------------------
    def kind(self, a: Any) -> _Kind:
        """The :class:`_Kind` of a CUDA array."""
        kind = self._kinds.get(type(a))
        if kind is None:
            kind = self._kinds[type(a)] = _kind_for(a, self)
        return kind

    @staticmethod
    def kernel_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
        """The kernel layout of a canonical shape (the canonical shape itself)."""
        return shape

    def view(self, a: Any, shape: tuple[int, ...]) -> DeviceArg:
        """``a`` as a :class:`DeviceArg` of ``shape``; strided CuPy arrays and PyTorch
        tensors are copied on the device first."""
        kind = self.kind(a)
        if not kind.contiguous(a):
            a = kind.make_contiguous(a)
        return DeviceArg(a, 0, shape, kind.dtype(a), kind.ptr(a), kind, kind.stream_of(a))

    def channel_arg(self, a: Any) -> DeviceArg:
        """gamma as the kernels take it: (C,), in its own dtype (the kernels cast)."""
        return self.view(a, (a.shape[0],))

    def channel_rows(self, a: Any, n_dir: int) -> DeviceArg:
        """A (C,) or (V, C) per-channel array as (rows, C): the kernels take row
        ``min(v, rows - 1)`` for direction v."""
        shape = tuple(a.shape)
        return self.view(a, (shape[0] if len(shape) == 2 else 1, shape[-1]))

    def is_stat_array(self, a: Any) -> bool:
        """Whether a statistics array (mean, invstd) goes to the kernels as it is:
        float64, one dimension, C-contiguous."""
        return dtype_of(a) == _F64 and a.ndim == 1 and self.kind(a).contiguous(a)

    def stat_arg(self, a: Any) -> DeviceArg:
        """A statistics array for which :meth:`is_stat_array` holds, as a kernel argument."""
        return self.view(a, (a.shape[0],))

    def float64(self, a: Any):
        """A per-channel array as a float64 array of its kind (cast on the device)."""
        n = math.prod(a.shape)
        src = self.view(a, (n,))
        if src.dtype == _F64:
            return src.base
        dst = self.empty((n,), _F64, src)
        self._copy(src, DeviceArg(dst, 0, (n,), _F64, src.kind.ptr(dst), src.kind))
        return dst

    def empty(self, shape: tuple[int, ...], dtype: np.dtype, like: DeviceArg):
        """An uninitialised array of ``like``'s kind."""
        return like.kind.empty(shape, dtype, like.base)

    def writable_view(self, a: Any, shape: tuple[int, ...]) -> DeviceArg:
        """The caller's ``out`` as a :class:`DeviceArg` of ``shape`` (C-contiguous only)."""
        kind = self.kind(a)
        if not kind.contiguous(a):
            raise ValueError("out must be C-contiguous")
        return DeviceArg(a, 0, shape, kind.dtype(a), kind.ptr(a), kind, kind.stream_of(a))

    @staticmethod
    def overlaps(a: Any, b: Any) -> bool:
        """Whether the device memory ranges of two arrays intersect (False when a
        range is unknown, as for the simulator's arrays)."""
        ra, rb = _byte_range(a), _byte_range(b)
        return ra is not None and rb is not None and ra[0] < rb[1] and rb[0] < ra[1]

    def zeros(self, shape: tuple[int, ...]) -> DeviceArg:
        return self.from_host(np.zeros(shape))

    def to_host(self, a: Any) -> np.ndarray:
        """A device array (or record) on the host, once the work of its stream is done."""
        if isinstance(a, DeviceArg):
            kind, base = a.kind, a.view()
        else:
            kind, base = self.kind(a), a
        self._slot(kind, base).synchronize()
        return kind.to_host(base)

    def from_host(self, a: np.ndarray) -> DeviceArg:
        d = self.cuda.to_device(np.ascontiguousarray(a))
        return self.view(d, d.shape)

    def wrap(self, a: Any, like: Any = None):
        """A result as the caller's kind of array (converted without a copy when it
        was made by another kind, as the sums of sharded batches are)."""
        if like is None or type(a) is type(like):
            return a
        if is_cupy_array(like):
            import cupy

            return cupy.asarray(a)
        if is_torch_tensor(like):
            import torch

            return torch.as_tensor(a, device=like.device)
        return a

    def assign(self, dst, v: int, src: DeviceArg) -> None:
        """``dst[v] = src``, cast to dst's dtype, on the device (dst of src's kind)."""
        n = src.size
        kind = self.kind(dst)
        whole = DeviceArg(dst, 0, (math.prod(dst.shape),), kind.dtype(dst), kind.ptr(dst), kind)
        self._copy(src.sub(0, (n,)), whole.sub(v * n, (n,)))

    @staticmethod
    def freeze(a: Any):
        return a  # device arrays have no read-only flag

    # --- plans --------------------------------------------------------------------
    def plan(self, terms: int, dims: tuple[int, int, int], n_dir: int, dtype: np.dtype,
             present: tuple[bool, ...], params: bool, batched: bool):  # fmt: skip
        """The kernels, launch configurations and workspace layout of one operation on
        one layout; ``present`` says which of (dz, h, u, w, u_gamma, u_beta) are
        given; ``params`` whether the gamma and beta outputs are wanted, as (V, C)
        arrays when ``batched``, else (C,)."""
        key = (terms, dims, n_dir, dtype, present, params, batched, config.version)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 4096:
                self._plans.clear()
            plan = self._plans[key] = _make_plan(self.kernels, terms, dims, n_dir, dtype,
                                                 present, params, batched)  # fmt: skip
        return plan

    def _stats_plan(self, dims: tuple[int, int, int], dtype: np.dtype) -> SimpleNamespace:
        key = ("stats", dims, dtype, config.version)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _make_stats_plan(self.kernels, dims, dtype)
        return plan

    # --- operations ---------------------------------------------------------------
    def execute(self, p, x3, mean, invstd, dz, h, u, w, ug, ub, gamma, count, out):
        """Reduce and compute the coefficients (one launch), apply (one launch).

        Returns ``(out, params)``: ``out`` (V, pre, C, post) of x's kind and dtype,
        and the (V, C) gamma and beta outputs when the plan asks for them, else None.
        """
        out, pg, pb = _outputs(p, x3, out)
        self._reduce_and_apply(p, x3, mean, invstd, dz, h, u, w, ug, ub, gamma, count, out, pg,
                               pb)  # fmt: skip
        return out.base, (None if pg is None else (pg.base, pb.base))

    def execute_pair(self, p, first_terms, x3, mean, invstd, dz, u, ug, ub, gamma, count):
        """Two operations on the same dz and u in two launches: ``first_terms`` (whose
        sums must be among those of plan ``p``) and the operation of ``p``. The
        reduction's last blocks compute both coefficient sets; the apply launch
        writes both results.

        Returns ``(out, params)``: ``out`` is (2V, pre, C, post) with the first
        operation's result in ``out[:V]`` and p's in ``out[V:]``; ``params`` as
        :meth:`execute` returns them for ``p``.
        """
        out = _fresh(x3.kind, (2 * p.n_dir, *p.out_shape[1:]), x3.dtype, x3.base)
        _, pg, pb = _outputs(p, x3, out)
        self._reduce_and_apply(p, x3, mean, invstd, dz, None, u, None, ug, ub, gamma, count,
                               out, pg, pb, first_terms)  # fmt: skip
        return out.base, (None if pg is None else (pg.base, pb.base))

    def _reduce_and_apply(self, p, x3, mean, invstd, dz, h, u, w, ug, ub, gamma, count, out, pg,
                          pb, first_terms=None):  # fmt: skip
        """The launches of :meth:`execute`, or with ``first_terms`` those of
        :meth:`execute_pair`: the coefficients then fill twice the rows, the first
        operation's first."""
        kind, n_coef = x3.kind, math.prod(p.coef_shape)
        pair = first_terms is not None
        site = " pair" if pair else ""  # launch sites of different argument shapes
        slot = self._slot(kind, x3.base)
        with slot.lock:
            slot.wait_for((x3, mean, invstd, dz, h, u, w, ug, ub, gamma, out))
            ws = slot.workspace(p.workspace + (n_coef if pair else 0), kind, x3.base)
            coef = ws.sub(p.coef_at, ((2 if pair else 1) * p.n_dir, *p.coef_shape[1:]))
            own, first = coef, None
            if pair:
                own, first = coef.sub(n_coef, p.coef_shape), coef.sub(0, p.coef_shape)
            if p.reduces:
                counter = slot.counter(p.groups, kind, x3.base)
                args = (x3, mean, invstd, dz, h, u, w, ws.sub(0, p.part_shape), counter,
                        ws.sub(p.sums_at, p.sums_shape), p.terms, gamma, float(count), ug, ub,
                        own, pg, pb, first_terms or 0, first)  # fmt: skip
                self._launch(slot, p.reduce, p.reduce_grid, args, p, "reduce" + site)
            else:  # no sums needed: coef stands in for them
                args = (p.terms, coef, gamma, invstd, float(count), ug, ub, coef, pg, pb)
                self._launch(slot, self.kernels.coefficients, p.coef_grid, args, p, "coef")
            args = (x3, mean, dz, h, u, w, coef, out)
            self._launch(slot, self.kernels.apply_affine, p.apply_grid, args, p, "apply" + site)

    def execute_from_sums(self, p, sums, x3, mean, invstd, dz, h, u, w, ug, ub, gamma, count,
                          out):  # fmt: skip
        """:meth:`execute` given the (V, N_SUMS, C) sums (of all ranks, for sharded
        batches): a coefficients launch and the apply launch."""
        kind = x3.kind
        out, pg, pb = _outputs(p, x3, out)
        coef = _fresh(kind, p.coef_shape, _F64, x3.base)
        slot = self._slot(kind, x3.base)
        with slot.lock:
            slot.wait_for((x3, mean, invstd, dz, h, u, w, ug, ub, gamma, out, sums))
            args = (p.terms, sums, gamma, invstd, float(count), ug, ub, coef, pg, pb)
            self._launch(slot, self.kernels.coefficients, p.coef_grid, args, p, "coef")
            args = (x3, mean, dz, h, u, w, coef, out)
            self._launch(slot, self.kernels.apply_affine, p.apply_grid, args, p, "apply")
        return out.base, (None if pg is None else (pg.base, pb.base))

    def apply_coefficients(self, p, x3, mean, coef, out):
        """The apply launch alone, with coefficients made elsewhere (the forward pass's,
        made with its statistics)."""
        if out is None:
            out = _fresh(x3.kind, p.out_shape, x3.dtype, x3.base)
        slot = self._slot(x3.kind, x3.base)
        with slot.lock:
            slot.wait_for((x3, mean, out))
            args = (x3, mean, None, None, None, None, coef, out)
            self._launch(slot, self.kernels.apply_affine, p.apply_grid, args, p, "apply")
        return out.base

    def batch_stats(self, x3: DeviceArg, count: int, eps: float, forward: Any = None):
        """Mean, variance and invstd of a batch, each (C,) float64 of x's kind, in one
        launch; with ``forward = (gamma, beta)`` (as (1, C) records) the forward
        pass's coefficients too (else None)."""
        kind, base = x3.kind, x3.base
        p = self._stats_plan(x3.shape, x3.dtype)
        mean, var, invstd = (_fresh(kind, (p.n_ch,), _F64, base) for _ in range(3))
        coef = gamma = beta = None
        if forward is not None:
            coef = _fresh(kind, (1, f.N_COEF, p.n_ch), _F64, base)
            gamma, beta = (t.sub(0, (p.n_ch,)) for t in forward)
        slot = self._slot(kind, base)
        with slot.lock:
            slot.wait_for((x3, gamma, beta))
            ws = slot.workspace(p.workspace, kind, base)
            counter = slot.counter(p.groups, kind, base)
            args = (x3, None, ws.sub(0, p.part_shape), counter, None, float(count), eps, mean,
                    var, invstd, gamma, beta, coef)  # fmt: skip
            site = "forward" if coef is not None else "stats"
            self._launch(slot, p.reduce, p.reduce_grid, args, p, site)
        return mean.base, var.base, invstd.base, coef

    def moment_sums(self, x3, mean, invstd, dz, h, u, w, n_dir: int) -> DeviceArg:
        """The (V, N_SUMS, C) float64 sums of the inputs present: every slot that
        ``formulas.filled_sum_slots`` names, the others zero (one launch)."""
        present = (dz is not None, h is not None, u is not None, w is not None, False, False)
        p = self.plan(f.TERM_RVP, x3.shape, n_dir, x3.dtype, present, False, True)
        kind, base = x3.kind, x3.base
        sums = _fresh(kind, p.sums_shape, _F64, base)
        slot = self._slot(kind, base)
        with slot.lock:
            slot.wait_for((x3, mean, invstd, dz, h, u, w))
            ws = slot.workspace(p.workspace, kind, base)
            counter = slot.counter(p.groups, kind, base)
            args = (x3, mean, invstd, dz, h, u, w, ws.sub(0, p.part_shape), counter, sums, 0,
                    None, 1.0, None, None, None, None, None, 0, None)  # fmt: skip
            self._launch(slot, p.reduce, p.reduce_grid, args)
        return sums

    def shifted_sums(self, x3: DeviceArg, shift: DeviceArg) -> DeviceArg:
        """Per-channel sums of ``x - shift`` and its square, (2, C) float64 (one launch)."""
        kind, base = x3.kind, x3.base
        p = self._stats_plan(x3.shape, x3.dtype)
        sums = _fresh(kind, (2, p.n_ch), _F64, base)
        slot = self._slot(kind, base)
        with slot.lock:
            slot.wait_for((x3, shift))
            ws = slot.workspace(p.workspace, kind, base)
            counter = slot.counter(p.groups, kind, base)
            args = (x3, shift, ws.sub(0, p.part_shape), counter, sums, 1.0, 0.0, None, None,
                    None, None, None, None)  # fmt: skip
            self._launch(slot, p.reduce, p.reduce_grid, args)
        return sums

    def finish_stats(self, x3: DeviceArg, shift: DeviceArg, sums: DeviceArg, count: int,
                     eps: float):  # fmt: skip
        """Mean, variance and invstd from sums about ``shift`` (one launch, on the
        stream of the batch ``x3``, in x's kind of array)."""
        kind, base = x3.kind, x3.base
        n_ch = shift.shape[0]
        mean, var, invstd = (_fresh(kind, (n_ch,), _F64, base) for _ in range(3))
        slot = self._slot(kind, base)
        grid = _grid_1d(n_ch)
        with slot.lock:
            slot.wait_for((shift, sums))
            args = (shift, sums, float(count), eps, mean, var, invstd)
            self._launch(slot, self.kernels.finish_stats, grid, args)
        return mean.base, var.base, invstd.base

    # --- launches -----------------------------------------------------------------
    def _copy(self, src: DeviceArg, dst: DeviceArg) -> None:
        """``dst[:] = src`` for 1-D records of equal size, cast to dst's dtype."""
        slot = self._slot(dst.kind, dst.base)
        with slot.lock:
            slot.wait_for((src, dst))
            self._launch(slot, self.kernels.copy_flat, _grid_1d(dst.size), (src, dst))

    def _launch(self, slot: _StreamSlot, kernel, grid: tuple, args: tuple, plan=None,
                site: str = "") -> None:  # fmt: skip
        """Launch ``kernel`` on ``slot``'s stream with ``grid = (blocks, threads)``.

        A launch at call ``site`` of a ``plan`` has the same argument types every
        time (the plan's key fixes them), so the direct route keeps its signature
        there.
        """
        if self._direct is not None and config.CUDA_LAUNCH == "direct":
            if plan is None:
                signature = signature_of(args)
            else:
                signature = plan.signatures.get(site)
                if signature is None:
                    signature = plan.signatures[site] = signature_of(args)
            self._direct.launch(slot, kernel, grid, args, signature)
            return
        views = [a.view() if type(a) is DeviceArg else a for a in args]
        kernel[grid[0], grid[1], slot.numba_stream](*views)

    def _slot(self, kind: _Kind, like: Any) -> _StreamSlot:
        """The :class:`_StreamSlot` of the stream a call on ``like`` runs on."""
        key = kind.stream_key(like)
        slot = self._slots.get(key)
        if slot is None:
            with self._slots_lock:
                slot = self._slots.get(key)
                if slot is None:
                    if len(self._slots) >= _MAX_SLOTS:
                        # The pools numbabn allocates from reuse memory in stream order,
                        # so dropping the slots of streams gone or idle is safe.
                        self._slots.clear()
                    slot = self._slots[key] = _StreamSlot(self, key[1])
        return slot


# --- plans ---------------------------------------------------------------------------
def _make_plan(kernels, terms, dims, n_dir, dtype, present, params, batched) -> SimpleNamespace:
    """See :meth:`CudaBackend.plan`."""
    pre, n_ch, post = dims
    block, width = config.CUDA_BLOCK, _width()
    groups, lanes = _groups(n_ch, post, block, width)
    slices = _slices(pre * post, lanes, groups * n_dir)
    p = SimpleNamespace(terms=terms, n_dir=n_dir, n_ch=n_ch, params=params, groups=groups)
    p.signatures = {}  # of the direct launches, by call site
    p.params_shape = (n_dir, n_ch) if batched else (n_ch,)
    p.reduces = bool(terms & ~f.TERM_PARAM)
    p.reduce = kernels.build(block, width).moment_reduce
    p.reduce_grid = ((slices, groups, n_dir), block)
    p.part_shape = (slices, n_dir, f.N_SUMS, n_ch)
    p.sums_shape = (n_dir, f.N_SUMS, n_ch)
    p.coef_shape = (n_dir, f.N_COEF, n_ch)
    p.sums_at = math.prod(p.part_shape) if p.reduces else 0
    p.coef_at = p.sums_at + (math.prod(p.sums_shape) if p.reduces else 0)
    p.workspace = p.coef_at + math.prod(p.coef_shape)
    p.out_shape = (n_dir, *dims)
    p.apply_grid = _grid_1d(n_dir * pre * n_ch * post)
    p.coef_grid = _grid_1d(n_dir * n_ch)
    return p


def _make_stats_plan(kernels, dims, dtype) -> SimpleNamespace:
    """The launch of a statistics pass over a batch of canonical ``dims``."""
    pre, n_ch, post = dims
    block, width = config.CUDA_BLOCK, _width()
    groups, lanes = _groups(n_ch, post, block, width)
    slices = _slices(pre * post, lanes, groups)
    p = SimpleNamespace(n_ch=n_ch, groups=groups, part_shape=(slices, 1, 2, n_ch), signatures={})
    p.reduce = kernels.build(block, width).stats_reduce
    p.reduce_grid = ((slices, groups, 1), block)
    p.workspace = math.prod(p.part_shape)
    return p


def _width() -> int:
    """Channels of a reduction block when channels are contiguous."""
    return min(config.CUDA_CONTIGUOUS_CHANNELS, config.CUDA_BLOCK)


def _groups(n_ch: int, post: int, block: int, width: int) -> tuple[int, int]:
    """(channel groups, lanes per channel) of a reduction: ``width`` channels a
    block, its other threads on other rows, when channels are contiguous; else the
    whole block on one channel."""
    if post == 1:
        return -(-n_ch // width), block // width
    return n_ch, block


def _slices(per_channel: int, lanes: int, other_blocks: int) -> int:
    """Blocks along the reduced elements of a channel, shared by ``lanes`` threads
    of a block: about ``config.CUDA_ELEMENTS_PER_THREAD`` elements a thread, at
    most ``config.CUDA_MAX_BLOCKS`` blocks in all (shape-only, so deterministic)."""
    wanted = -(-per_channel // (lanes * config.CUDA_ELEMENTS_PER_THREAD))
    return max(1, min(wanted, config.CUDA_MAX_BLOCKS // max(1, other_blocks)))


def _grid_1d(n_threads: int) -> tuple[int, int]:
    """(blocks, threads) of a grid-stride kernel over ``n_threads`` items."""
    block = config.CUDA_BLOCK
    return max(1, min(config.CUDA_MAX_BLOCKS, -(-n_threads // block))), block


def _fresh(kind: _Kind, shape: tuple[int, ...], dtype: np.dtype, like: Any,
           kernel_shape: tuple[int, ...] | None = None) -> DeviceArg:  # fmt: skip
    """A new array of ``kind`` and ``shape`` as a :class:`DeviceArg` (of
    ``kernel_shape``, the same number of elements, when given)."""
    a = kind.empty(shape, dtype, like)
    return DeviceArg(a, 0, kernel_shape or shape, dtype, kind.ptr(a), kind)


def _outputs(p, x3, out):
    """``(out, gamma output, beta output)`` of a call by plan ``p``: ``out`` made when
    None, the (V, C) parameter outputs only when the plan returns them."""
    pg = pb = None
    if p.params:
        pg, pb = (_fresh(x3.kind, p.params_shape, x3.dtype, x3.base, (p.n_dir, p.n_ch))
                  for _ in range(2))  # fmt: skip
    if out is None:
        out = _fresh(x3.kind, p.out_shape, x3.dtype, x3.base)
    return out, pg, pb


# --- streams -------------------------------------------------------------------------
class _StreamSlot:
    """What the launches on one stream share: the stream as each launch route wants
    it, the workspace and counters of the reductions, and the lock that keeps one
    operation's launches together."""

    def __init__(self, backend: CudaBackend, ptr: int) -> None:
        self.backend, self.ptr = backend, ptr
        self.lock = threading.Lock()
        self._workspace: DeviceArg | None = None
        self._counter: DeviceArg | None = None
        self.functions: dict[tuple, Any] = {}  # compiled kernels of the direct route
        cuda = backend.cuda
        if backend.simulated or ptr == 0:
            self.numba_stream = 0
        else:
            self.numba_stream = cuda.external_stream(ptr)
        self._core_stream = None

    @property
    def core_stream(self):
        """The stream as ``cuda.core`` launches take it."""
        if self._core_stream is None:
            from numba.cuda.cudadrv.driver import ExperimentalStream

            self._core_stream = ExperimentalStream.from_handle(self.ptr)
        return self._core_stream

    def workspace(self, n: int, kind: _Kind, like: Any) -> DeviceArg:
        """At least ``n`` float64 elements of scratch memory (grown as needed)."""
        ws = self._workspace
        if ws is None or ws.shape[0] < n:
            ws = self._workspace = _fresh(kind, (max(n, 1),), _F64, like)
        return ws

    def counter(self, n: int, kind: _Kind, like: Any) -> DeviceArg:
        """At least ``n`` int32 counters, zero between launches."""
        c = self._counter
        if c is None or c.shape[0] < n:
            a = kind.zeros((max(n, 1024),), _I32, like)
            c = self._counter = DeviceArg(a, 0, (a.shape[0],), _I32, kind.ptr(a), kind)
        return c

    def wait_for(self, args: tuple) -> None:
        """Make this stream wait for the streams the arguments are bound to (once each)."""
        waited = None
        for a in args:
            if a is None or type(a) is not DeviceArg or a.stream is None:
                continue
            s = a.stream
            if s == self.ptr or (self.ptr == 0 and s == _LEGACY_DEFAULT_STREAM):
                continue
            if waited is None:
                waited = set()
            if s not in waited:
                waited.add(s)
                self._wait(s)

    def _wait(self, stream: int) -> None:
        """This stream waits for the work queued so far on ``stream`` (an event; the
        host does not block)."""
        if self.backend.simulated:
            return
        cuda = self.backend.cuda
        other = (cuda.legacy_default_stream() if stream == _LEGACY_DEFAULT_STREAM
                 else cuda.per_thread_default_stream() if stream == _PER_THREAD_DEFAULT_STREAM
                 else cuda.external_stream(stream))  # fmt: skip
        event = cuda.event(timing=False)
        event.record(stream=other)
        event.wait(stream=self.numba_stream or cuda.legacy_default_stream())

    def synchronize(self) -> None:
        """Block the host until the work queued on this stream is done."""
        if self.backend.simulated:
            return
        cuda = self.backend.cuda
        (self.numba_stream or cuda.legacy_default_stream()).synchronize()


# --- the direct launch route ---------------------------------------------------------
class _DirectLauncher:
    """Launches without Numba's dispatcher: the compiled kernel of each signature is
    looked up once per stream slot, and the arguments are marshalled straight from
    :class:`DeviceArg` records, as Numba's launcher marshals a C-contiguous device
    array (see :func:`marshal`)."""

    def __init__(self) -> None:
        from cuda.core import LaunchConfig, launch
        from numba.cuda._compat import CUDA_CORE_GE_1_0

        self._launch, self._config_type = launch, LaunchConfig
        self._cooperative_key = "is_cooperative" if CUDA_CORE_GE_1_0 else "cooperative_launch"
        self._configs: dict[tuple, Any] = {}

    def launch(self, slot: _StreamSlot, kernel, grid: tuple, args: tuple, signature) -> None:
        """Launch ``kernel``, compiled for ``signature``, on ``slot``'s stream."""
        function = slot.functions.get((kernel, signature))
        if function is None:
            compiled = kernel.compile(signature)
            function = compiled._codelibrary.get_cufunc().kernel
            slot.functions[(kernel, signature)] = function
        config_ = self._configs.get(grid)
        if config_ is None:
            blocks, threads = grid
            blocks = blocks if isinstance(blocks, tuple) else (blocks, 1, 1)
            config_ = self._configs[grid] = self._config_type(
                grid=blocks, block=(threads, 1, 1), shmem_size=0, **{self._cooperative_key: False}
            )
        self._launch(slot.core_stream, config_, function, *marshal(args))


def signature_of(args: tuple) -> tuple:
    """The Numba argument types of a launch: C-contiguous arrays, none, int64, float64."""
    from numba import types

    sig = []
    for a in args:
        if a is None:
            sig.append(types.none)
        elif type(a) is DeviceArg:
            sig.append(_array_type(a.dtype, len(a.shape)))
        elif isinstance(a, int):
            sig.append(types.int64)
        elif isinstance(a, float):
            sig.append(types.float64)
        else:
            raise TypeError(f"a kernel argument of type {type(a).__name__}")
    return tuple(sig)


def _array_type(dtype: np.dtype, ndim: int):
    key = (dtype, ndim)
    t = _ARRAY_TYPES.get(key)
    if t is None:
        from numba import types
        from numba.np.numpy_support import from_dtype

        t = _ARRAY_TYPES[key] = types.Array(from_dtype(dtype), ndim, "C")
    return t


_ARRAY_TYPES: dict[tuple, Any] = {}


def marshal(args: tuple) -> list:
    """The kernel parameters of a launch, as Numba's launcher builds them: per array
    its meminfo and parent (0), size, itemsize, pointer, shape and byte strides; a
    null pointer for None (``kernels.cuda.NoneAsNullPointer``); int64 and float64
    scalars as ctypes values."""
    params: list = []
    for a in args:
        if type(a) is DeviceArg:
            shape, itemsize = a.shape, a.dtype.itemsize
            params += (0, 0, math.prod(shape), itemsize, a.ptr, *shape,
                       *_c_strides(shape, itemsize))  # fmt: skip
        elif a is None:
            params.append(ctypes.c_uint64(0))
        elif isinstance(a, int):
            params.append(ctypes.c_int64(a))
        else:
            params.append(ctypes.c_double(a))
    return params


# --- kinds of CUDA arrays ------------------------------------------------------------
class _Kind:
    """How the backend treats one type of CUDA array."""

    def __init__(self, backend: CudaBackend) -> None:
        self.cuda = backend.cuda

    def dtype(self, a) -> np.dtype:
        return dtype_of(a)

    def contiguous(self, a) -> bool:
        raise NotImplementedError

    def make_contiguous(self, a):
        raise ValueError(
            "a non-contiguous device array was given; numbabn copies strided CUDA inputs "
            "only when they are CuPy arrays or PyTorch tensors: pass a contiguous array "
            "(e.g. cupy.ascontiguousarray(a))"
        )

    def ptr(self, a) -> int | None:
        raise NotImplementedError

    def stream_of(self, a) -> int | None:
        """A stream to wait for before reading ``a``, or None."""
        return None

    def stream_key(self, like) -> tuple[int, int]:
        """(device, stream) a call on ``like`` runs on."""
        return 0, 0

    def empty(self, shape, dtype, like):
        raise NotImplementedError

    def zeros(self, shape, dtype, like):
        return self.cuda.to_device(np.zeros(shape, dtype))

    def view(self, base, offset: int, shape):
        n, total = math.prod(shape), math.prod(base.shape)
        if offset == 0 and n == total:
            return base.reshape(shape)
        return base.reshape(total)[offset : offset + n].reshape(shape)

    def to_host(self, a) -> np.ndarray:
        return a.copy_to_host()


class _NumbaKind(_Kind):
    """Numba device arrays, and any other object with ``__cuda_array_interface__``
    (viewed as a Numba device array where a view is needed). Results are Numba
    device arrays, from CuPy's memory pool once CuPy is imported (a pool
    allocation is far cheaper than ``cudaMalloc``)."""

    def contiguous(self, a) -> bool:
        if hasattr(a, "is_c_contiguous"):
            return a.is_c_contiguous()
        cai = a.__cuda_array_interface__
        strides = cai.get("strides")
        if strides is None:
            return True
        itemsize = np.dtype(cai["typestr"]).itemsize
        return tuple(strides) == _c_strides(tuple(cai["shape"]), itemsize)

    def dtype(self, a) -> np.dtype:
        dt = getattr(a, "dtype", None)
        return dt if isinstance(dt, np.dtype) else np.dtype(a.__cuda_array_interface__["typestr"])

    def ptr(self, a) -> int:
        if hasattr(a, "device_ctypes_pointer"):
            return a.device_ctypes_pointer.value or 0
        return a.__cuda_array_interface__["data"][0]

    def stream_of(self, a) -> int | None:
        if hasattr(a, "is_c_contiguous"):  # a Numba device array: the stream it is bound to
            stream = a.stream
            return int(stream) if stream != 0 else None
        return a.__cuda_array_interface__.get("stream")

    def stream_key(self, like) -> tuple[int, int]:
        return self.cuda.get_current_device().id, 0

    def empty(self, shape, dtype, like):
        cupy = sys.modules.get("cupy")
        if cupy is None:
            return self.cuda.device_array(shape, dtype)
        return self.cuda.as_cuda_array(cupy.empty(shape, dtype), sync=False)

    def view(self, base, offset, shape):
        if not hasattr(base, "is_c_contiguous"):
            base = self.cuda.as_cuda_array(base, sync=False)
        return super().view(base, offset, shape)


class _SimulatorKind(_NumbaKind):
    """The arrays of Numba's CUDA simulator: no pointers, no streams."""

    def contiguous(self, a) -> bool:
        return a.is_c_contiguous()

    def ptr(self, a) -> None:
        return None

    def stream_of(self, a) -> None:
        return None

    def stream_key(self, like) -> tuple[int, int]:
        return 0, 0

    def empty(self, shape, dtype, like):
        return self.cuda.device_array(shape, dtype)


class _CupyKind(_Kind):
    """CuPy arrays: results from CuPy's memory pool, launches on CuPy's current
    stream (which is also the stream CuPy's array interface names, so inputs need
    no wait)."""

    def __init__(self, backend: CudaBackend) -> None:
        super().__init__(backend)
        import cupy

        self.cupy = cupy

    def contiguous(self, a) -> bool:
        return a.flags.c_contiguous

    def make_contiguous(self, a):
        return self.cupy.ascontiguousarray(a)

    def ptr(self, a) -> int:
        return a.data.ptr

    def stream_key(self, like) -> tuple[int, int]:
        return like.device.id, self.cupy.cuda.get_current_stream().ptr

    def empty(self, shape, dtype, like):
        return self.cupy.empty(shape, dtype)

    def zeros(self, shape, dtype, like):
        return self.cupy.zeros(shape, dtype)

    def to_host(self, a) -> np.ndarray:
        return self.cupy.asnumpy(a)


class _TorchKind(_Kind):
    """PyTorch CUDA tensors: results from PyTorch's caching allocator, launches on
    PyTorch's current stream of the tensor's device."""

    def __init__(self, backend: CudaBackend) -> None:
        super().__init__(backend)
        import torch

        self.torch = torch

    def contiguous(self, a) -> bool:
        return a.is_contiguous()

    def make_contiguous(self, a):
        return a.contiguous()

    def ptr(self, a) -> int:
        return a.data_ptr()

    def stream_key(self, like) -> tuple[int, int]:
        device = like.device
        return device.index, self.torch.cuda.current_stream(device).cuda_stream

    def _dtype(self, dtype):
        return getattr(self.torch, np.dtype(dtype).name)

    def empty(self, shape, dtype, like):
        return self.torch.empty(shape, dtype=self._dtype(dtype), device=like.device)

    def zeros(self, shape, dtype, like):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=like.device)

    def view(self, base, offset, shape):
        flat = base.reshape(-1)
        return flat[offset : offset + math.prod(shape)].view(shape)

    def to_host(self, a) -> np.ndarray:
        return a.cpu().numpy()


def _kind_for(a: Any, backend: CudaBackend) -> _Kind:
    if backend.simulated:
        return _SimulatorKind(backend)
    if is_cupy_array(a):
        return _CupyKind(backend)
    if is_torch_tensor(a):
        return _TorchKind(backend)
    return _NumbaKind(backend)


@lru_cache(maxsize=1024)
def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Byte strides of a C-contiguous array (cached: a plan's shapes recur)."""
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _byte_range(a: Any) -> tuple[int, int] | None:
    """[first, last + 1) byte addresses of a CUDA array, from its array interface."""
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None:
        return None
    size = math.prod(cai["shape"])
    if size == 0:
        return cai["data"][0], cai["data"][0]
    return byte_bounds(SimpleNamespace(__array_interface__={**cai, "version": 3}, size=size))
