"""CUDA kernels (Numba ``@cuda.jit``) on the canonical layout ``(pre, C, post)``.

The same reduce -> coefficients -> apply structure as the CPU kernels, and the
same scalar math (:mod:`formulas`, compiled here as device functions), in two
launches per operation:

* a reduction kernel: each block writes its partial sums (its lanes reduced in
  shared memory in a fixed tree order) to a partials array; the last block of
  each channel group to finish, told by an atomic counter, sums the partials of
  its channels in block order (float64, deterministic, no floating-point
  atomics) and turns them into the per-channel results: the affine
  coefficients of an operation (and its gamma and beta outputs), or the
  statistics of a batch (and the forward pass's coefficients);
* the apply kernel, a grid-stride loop over the output in memory order.

Coalescing: when post > 1, the threads of a block share one channel and walk
its elements along the contiguous post axis; when post == 1 (BN1d,
channels-last) a block covers ``width`` consecutive channels, the threads of a
warp read consecutive channels of a row. Accumulation is in float64.

The counters (one int32 per channel group) are a device array that each last
block resets to zero, so the next launch on the stream finds them ready.
Sharded batches (``comm``) stop after the merge: the merged sums go to the
host for the allreduce, and :func:`finish_stats` or :func:`coefficients` run
as launches of their own.

Nothing is compiled at import: kernels have no explicit signature and are
built per block size by :func:`build` (shared-memory sizes are compile-time
constants), so importing this module never touches the CUDA driver.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

from numba import config, cuda, float64, int32, types

from . import formulas as f


class NoneAsNullPointer:
    """Launch-time marshalling of a ``None`` kernel argument (an absent array).

    Numba-CUDA types ``None`` as ``none`` and lowers it to one opaque pointer
    parameter, but its launcher has no rule for passing one: a kernel launched
    with ``None`` raises ``NotImplementedError: (none, None)`` on a GPU. (The
    simulator calls the Python function and never marshals arguments.) The
    kernels only test such arguments with ``is None``, a branch pruned at compile
    time, so a null pointer is passed.
    """

    def prepare_args(self, ty, val, stream=None, retr=None):
        if isinstance(ty, types.NoneType):
            return types.uintp, 0
        return ty, val


#: ``@kernel``: ``cuda.jit`` with None arguments marshalled (the simulator's jit
#: takes no ``extensions`` and needs none).
kernel = cuda.jit if config.ENABLE_CUDASIM else cuda.jit(extensions=[NoneAsNullPointer()])

#: Device functions are inlined into the kernels at the IR level. Besides speed,
#: this lets ``cuda.compile_ptx`` compile every kernel without a driver (a
#: separately compiled device function asks the driver for the target device).
_device = cuda.jit(device=True, inline="always")
_channel_coefficients = _device(f.channel_coefficients)
_channel_variance = _device(f.channel_variance)
_affine = _device(f.affine_value)


def _slot_masks() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bit masks of the sum slots a reduction fills, direction-independent and per
    direction, indexed by ``8*dz + 4*h + 2*u + w`` (each 1 when present): the table
    ``formulas.SUM_SLOTS_OF_INPUTS`` as compile-time constants."""
    once, per_direction = [], []
    for index in range(16):
        present = [bool(index >> bit & 1) for bit in (3, 2, 1, 0)]
        slots = f.filled_sum_slots(*present)
        once.append(sum(1 << q for q in slots[0]))
        per_direction.append(sum(1 << q for q in slots[1]))
    return tuple(once), tuple(per_direction)


_ONCE_MASKS, _DIRECTION_MASKS = _slot_masks()


@_device
def _thread_channel(n_ch, post, width):
    """``(channel, lane, lanes, stride)`` of this thread in a reduction block:
    the ``lanes`` threads of a channel are ``stride`` apart in the block.

    post > 1: the whole block walks one channel along post. post == 1 (channels
    contiguous): the block covers ``width`` consecutive channels, a warp reads
    them along a row, and its ``blockDim.x // width`` lanes take every
    ``lanes``-th row.
    """
    t = cuda.threadIdx.x
    if post == 1:
        lanes = cuda.blockDim.x // width
        return cuda.blockIdx.y * width + t % width, t // width, lanes, width
    return cuda.blockIdx.y, t, cuda.blockDim.x, 1


@_device
def _group_channels(n_ch, post, width):
    """``(first channel, number of channels)`` of this block's channel group."""
    if post == 1:
        c0 = cuda.blockIdx.y * width
        return c0, min(width, n_ch - c0)
    return cuda.blockIdx.y, 1


@_device
def _block_slice(total):
    """The elements [lo, hi) of a channel that this block's slice covers."""
    s = cuda.blockIdx.x
    n = cuda.gridDim.x
    return s * total // n, (s + 1) * total // n


@_device
def _reduce_lanes(sm, mask, lanes, stride):
    """Tree-sum the lanes of each channel for the slots ``q`` set in ``mask``:
    thread ``t = lane*stride + k`` holds ``sm[q, t]``; the sums land in lane 0
    (``sm[q, k]``)."""
    t = cuda.threadIdx.x
    step = lanes // 2
    while step > 0:
        cuda.syncthreads()
        if t < step * stride:
            for q in range(sm.shape[0]):
                if mask >> q & 1:
                    sm[q, t] += sm[q, t + step * stride]
        step //= 2
    cuda.syncthreads()


@_device
def _is_last_block(counter, group, blocks):
    """Whether this block is the last of the ``blocks`` blocks of channel group
    ``group`` to get here; that block resets the group's counter to zero.

    Every thread fences its writes to global memory before the block counts
    itself, so the last block sees the partials of all the others.
    """
    flag = cuda.shared.array(1, int32)
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        last = cuda.atomic.add(counter, group, 1) == blocks - 1
        if last:
            counter[group] = 0
        flag[0] = 1 if last else 0
    cuda.syncthreads()
    return flag[0] == 1


@_device
def _finish_channel(c, shift_c, s1, s2, count, eps, mean, var, invstd):
    """Mean, biased variance and invstd of channel ``c`` from its sums about ``shift_c``."""
    mean[c] = shift_c + s1 / count
    var[c] = _channel_variance(s1, s2, count)
    invstd[c] = 1.0 / (var[c] + eps) ** 0.5


@_device
def _row(a, v):
    """Row ``v`` of a (rows, C) per-channel array: the only row when it has one."""
    return min(v, a.shape[0] - 1)


@_device
def _coefficients_of(terms, sums, v, c, gamma, invstd, count, ug, ub, coef, p_gamma, p_beta):
    """The coefficients of direction ``v``, channel ``c``, and its gamma and beta
    outputs (cast to their dtype) when those arrays are given."""
    ug_vc = 0.0 if ug is None else float64(ug[_row(ug, v), c])
    ub_vc = 0.0 if ub is None else float64(ub[_row(ub, v), c])
    _channel_coefficients(terms, sums, v, c, float64(gamma[c]), invstd[c], count, ug_vc, ub_vc,
                          coef)  # fmt: skip
    if p_gamma is not None:
        p_gamma[v, c] = coef[v, f.P_GAMMA, c]
        p_beta[v, c] = coef[v, f.P_BETA, c]


@kernel
def finish_stats(shift, sums, count, eps, mean, var, invstd):
    """Mean, biased variance and invstd per channel from the sums about ``shift``
    (sharded batches: the sums of all ranks)."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        _finish_channel(c, shift[c], sums[0, c], sums[1, c], count, eps, mean, var, invstd)


@kernel
def coefficients(terms, sums, gamma, invstd, count, ug, ub, coef, p_gamma, p_beta):
    """Affine coefficients, one thread per (direction, channel), from merged sums
    (sharded batches: the sums of all ranks)."""
    n_dir, _, n_ch = coef.shape
    for e in range(cuda.grid(1), n_dir * n_ch, cuda.gridsize(1)):
        v = e // n_ch
        c = e - v * n_ch
        _coefficients_of(terms, sums, v, c, gamma, invstd, count, ug, ub, coef, p_gamma, p_beta)


@kernel
def apply_affine(x, mean, dz, h, u, w, coef, out):
    """Grid-stride apply pass; see ``formulas.affine_value``. ``u`` may carry fewer
    directions than ``out`` (a divisor of V): direction v reads ``u[v % len(u)]``."""
    n_dir, pre, n_ch, post = out.shape
    per_dir = pre * n_ch * post
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, n_dir * per_dir, stride):
        v = e // per_dir
        r = e - v * per_dir
        i = r // (n_ch * post)
        r -= i * n_ch * post
        c = r // post
        j = r - c * post
        xc = float64(x[i, c, j]) - mean[c]
        uv = float64(u[v % u.shape[0], i, c, j]) if u is not None else 0.0
        wv = float64(w[v, i, c, j]) if w is not None else 0.0
        dzv = float64(dz[i, c, j]) if dz is not None else 0.0
        hv = float64(h[i, c, j]) if h is not None else 0.0
        out[v, i, c, j] = _affine(coef, v, c, xc, uv, wv, dzv, hv)


@kernel
def copy_flat(src, dst):
    """``dst[e] = src[e]`` for 1-D arrays, cast to dst's dtype."""
    for e in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[e] = src[e]


@cache
def build(block: int, width: int) -> SimpleNamespace:
    """The reduction kernels for thread blocks of ``block`` threads, covering
    ``width`` channels at a time when channels are contiguous (both powers of 2,
    ``width <= block``).

    Array sizes of ``cuda.local.array`` and ``cuda.shared.array`` must be
    compile-time constants: closure variables are, module attributes are not.
    """
    n_sums = f.N_SUMS

    @kernel
    def stats_reduce(x, shift, part, counter, sums, count, eps, mean, var, invstd, gamma, beta,
                     coef):  # fmt: skip
        """Per-block ``sum(x - shift[c])`` and ``sum((x - shift[c])**2)`` into part
        (S, 1, 2, C); the last block of a channel group merges them.

        ``shift`` None: each channel's first element. The merged sums go to
        ``sums`` (2, C) when given; with ``mean`` given, the statistics go to
        mean, var and invstd, and with ``coef`` given, the forward pass's
        coefficients ``gamma * xhat + beta`` too.
        """
        pre, n_ch, post = x.shape
        c, lane, lanes, stride = _thread_channel(n_ch, post, width)
        lo, hi = _block_slice(pre * post)
        s1 = 0.0
        s2 = 0.0
        if c < n_ch:
            shift_c = float64(x[0, c, 0]) if shift is None else shift[c]
            for m in range(lo + lane, hi, lanes):
                i = m // post
                d = float64(x[i, c, m - i * post]) - shift_c
                s1 += d
                s2 += d * d
        sm = cuda.shared.array((2, block), float64)
        t = cuda.threadIdx.x
        sm[0, t] = s1
        sm[1, t] = s2
        _reduce_lanes(sm, 3, lanes, stride)
        if lane == 0 and c < n_ch:
            part[cuda.blockIdx.x, 0, 0, c] = sm[0, t]
            part[cuda.blockIdx.x, 0, 1, c] = sm[1, t]
        if not _is_last_block(counter, cuda.blockIdx.y, cuda.gridDim.x):
            return
        c0, n_group = _group_channels(n_ch, post, width)
        for k in range(t, n_group, cuda.blockDim.x):
            c = c0 + k
            a1 = 0.0
            a2 = 0.0
            for s in range(cuda.gridDim.x):
                a1 += part[s, 0, 0, c]
                a2 += part[s, 0, 1, c]
            if sums is not None:
                sums[0, c] = a1
                sums[1, c] = a2
            if mean is not None:
                shift_c = float64(x[0, c, 0]) if shift is None else shift[c]
                _finish_channel(c, shift_c, a1, a2, count, eps, mean, var, invstd)
                if coef is not None:  # the forward pass: u_gamma = gamma, u_beta = beta
                    g = float64(gamma[c])
                    # TERM_PARAM reads no sums: coef stands in for the sums argument.
                    _channel_coefficients(f.TERM_PARAM, coef, 0, c, g, invstd[c], count, g,
                                          float64(beta[c]), coef)  # fmt: skip

    @kernel
    def moment_reduce(x, mean, invstd, dz, h, u, w, part, counter, sums, terms, gamma, count, ug,
                      ub, coef, p_gamma, p_beta, terms2, coef2):  # fmt: skip
        """Per-block moment sums (the ``S_*`` slots) of direction blockIdx.z into part
        (S, V, N_SUMS, C); the last block of a channel group merges them into sums
        (V, N_SUMS, C), and with ``coef`` given computes the coefficients of
        ``terms`` (and the gamma and beta outputs when ``p_gamma`` is given), and
        with ``coef2`` given those of a second operation, ``terms2``, from the same
        sums (numbabn.vjp_backward).

        Only the slots ``formulas.filled_sum_slots`` names for the inputs present
        are written (direction-independent ones by direction 0); the others are
        zero in ``sums``. ``gamma`` (C,) and ``ug``, ``ub`` (1 or V rows, C) are
        in x's dtype.
        """
        pre, n_ch, post = x.shape
        c, lane, lanes, stride = _thread_channel(n_ch, post, width)
        lo, hi = _block_slice(pre * post)
        v = cuda.blockIdx.z
        combo = ((8 if dz is not None else 0) + (4 if h is not None else 0)
                 + (2 if u is not None else 0) + (1 if w is not None else 0))  # fmt: skip
        once = _ONCE_MASKS[combo]
        mask = _DIRECTION_MASKS[combo] | (once if v == 0 else 0)
        acc = cuda.local.array(n_sums, float64)
        for q in range(n_sums):
            acc[q] = 0.0
        if c < n_ch:
            m_c = mean[c]
            s_c = invstd[c]
            for m in range(lo + lane, hi, lanes):
                i = m // post
                j = m - i * post
                xh = (float64(x[i, c, j]) - m_c) * s_c
                d = float64(dz[i, c, j]) if dz is not None else 0.0
                hv = float64(h[i, c, j]) if h is not None else 0.0
                if v == 0:
                    if dz is not None:
                        acc[f.S_DZ] += d
                        acc[f.S_XDZ] += xh * d
                    if h is not None:
                        acc[f.S_H] += hv
                        acc[f.S_HX] += hv * xh
                        acc[f.S_HXX] += hv * xh * xh
                if u is not None:
                    uv = float64(u[v, i, c, j])
                    acc[f.S_U] += uv
                    acc[f.S_XU] += xh * uv
                    if dz is not None:
                        acc[f.S_DZU] += d * uv
                    if h is not None:
                        acc[f.S_HU] += hv * uv
                        acc[f.S_HXU] += hv * xh * uv
                if w is not None:
                    wv = float64(w[v, i, c, j])
                    acc[f.S_W] += wv
                    acc[f.S_XW] += xh * wv
        sm = cuda.shared.array((n_sums, block), float64)
        t = cuda.threadIdx.x
        for q in range(n_sums):
            sm[q, t] = acc[q]
        _reduce_lanes(sm, mask, lanes, stride)
        if lane == 0 and c < n_ch:
            for q in range(n_sums):
                if mask >> q & 1:
                    part[cuda.blockIdx.x, v, q, c] = sm[q, t]
        blocks = cuda.gridDim.x * cuda.gridDim.z
        if not _is_last_block(counter, cuda.blockIdx.y, blocks):
            return
        c0, n_group = _group_channels(n_ch, post, width)
        n_dir = cuda.gridDim.z
        all_slots = _DIRECTION_MASKS[combo] | once
        for e in range(t, n_dir * n_group, cuda.blockDim.x):
            v = e // n_group
            c = c0 + e - v * n_group
            for q in range(n_sums):
                total = 0.0
                if all_slots >> q & 1:
                    src = 0 if once >> q & 1 else v
                    for s in range(cuda.gridDim.x):
                        total += part[s, src, q, c]
                sums[v, q, c] = total
            if coef is not None:
                _coefficients_of(terms, sums, v, c, gamma, invstd, count, ug, ub, coef, p_gamma,
                                 p_beta)  # fmt: skip
            if coef2 is not None:
                _coefficients_of(terms2, sums, v, c, gamma, invstd, count, ug, ub, coef2, None,
                                 None)  # fmt: skip

    return SimpleNamespace(stats_reduce=stats_reduce, moment_reduce=moment_reduce)
