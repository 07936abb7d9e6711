"""CUDA kernels (Numba ``@cuda.jit``) on the canonical layout ``(pre, C, post)``.

The same reduce -> coefficients -> apply structure as the CPU kernels, and the
same scalar math (:mod:`formulas`, compiled here as device functions):

* reductions write per-block partial sums (a block reduces its lanes in shared
  memory in a fixed tree order) to a partials array, and a second kernel sums
  the partials in block order: deterministic, no floating-point atomics;
* coefficients are computed on the device, one thread per (direction, channel);
* the apply kernel is a grid-stride loop over the output in memory order (as
  are all elementwise kernels: a launch may have fewer threads than elements).

Coalescing: when post > 1, the threads of a block share one channel and walk
its elements along the contiguous post axis; when post == 1 (BN1d,
channels-last) each thread owns one channel and the threads of a warp read
consecutive channels of a row. Accumulation is in float64.

Nothing is compiled at import: kernels have no explicit signature and are
built per block size by :func:`build` (shared-memory sizes are compile-time
constants), so importing this module never touches the CUDA driver.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

from numba import config, cuda, float64, types

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
def _block_slice(total):
    """The elements [lo, hi) of a channel that this block's slice covers."""
    s = cuda.blockIdx.x
    n = cuda.gridDim.x
    return s * total // n, (s + 1) * total // n


@_device
def _reduce_lanes(sm, n_slots, lanes, stride):
    """Tree-sum the lanes of each channel: thread ``t = lane*stride + k`` holds
    ``sm[q, t]``; the sums land in lane 0 (``sm[q, k]``)."""
    t = cuda.threadIdx.x
    step = lanes // 2
    while step > 0:
        cuda.syncthreads()
        if t < step * stride:
            for q in range(n_slots):
                sm[q, t] += sm[q, t + step * stride]
        step //= 2
    cuda.syncthreads()


@_device
def _is_direction_independent(q):
    """``q in formulas.DIRECTION_INDEPENDENT_SLOTS``."""
    for slot in f.DIRECTION_INDEPENDENT_SLOTS:
        if q == slot:
            return True
    return False


@kernel
def merge_partials(part, out):
    """``out[v, q, c] = sum over blocks s of part[s, v, q, c]``, in block order.

    Direction-independent slots of the moment sums come from direction 0.
    """
    n_dir, n_q, n_ch = out.shape
    for e in range(cuda.grid(1), n_dir * n_q * n_ch, cuda.gridsize(1)):
        v = e // (n_q * n_ch)
        r = e - v * n_q * n_ch
        q = r // n_ch
        c = r - q * n_ch
        src = v
        if n_q == f.N_SUMS and _is_direction_independent(q):
            src = 0
        acc = 0.0
        for s in range(part.shape[0]):
            acc += part[s, src, q, c]
        out[v, q, c] = acc


@kernel
def finish_stats(shift, sums, count, eps, mean, var, invstd):
    """Mean, biased variance and invstd per channel from the sums about ``shift``."""
    for c in range(cuda.grid(1), mean.shape[0], cuda.gridsize(1)):
        mean[c] = shift[c] + sums[0, c] / count
        var[c] = _channel_variance(sums[0, c], sums[1, c], count)
        invstd[c] = 1.0 / (var[c] + eps) ** 0.5


@kernel
def first_elements(x, out):
    """``out[c] = x[0, c, 0]`` as float64: one sample of each channel."""
    for c in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[c] = float64(x[0, c, 0])


@kernel
def coefficients(terms, sums, gamma, invstd, count, ug, ub, coef):
    """Affine coefficients, one thread per (direction, channel)."""
    n_dir, _, n_ch = sums.shape
    for e in range(cuda.grid(1), n_dir * n_ch, cuda.gridsize(1)):
        v = e // n_ch
        c = e - v * n_ch
        ug_vc = 0.0 if ug is None else ug[v, c]
        ub_vc = 0.0 if ub is None else ub[v, c]
        _channel_coefficients(terms, sums, v, c, gamma[c], invstd[c], count, ug_vc, ub_vc, coef)


@kernel
def apply_affine(x, mean, dz, h, u, w, coef, out):
    """Grid-stride apply pass; see ``formulas.affine_value``."""
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
        uv = float64(u[v, i, c, j]) if u is not None else 0.0
        wv = float64(w[v, i, c, j]) if w is not None else 0.0
        dzv = float64(dz[i, c, j]) if dz is not None else 0.0
        hv = float64(h[i, c, j]) if h is not None else 0.0
        out[v, i, c, j] = _affine(coef, v, c, xc, uv, wv, dzv, hv)


@kernel
def to_float64_rows(src, dst):
    """``dst[v, c] = src[v, c]`` (or ``src[0, c]`` when src has one row), as float64."""
    n_dir, n_ch = dst.shape
    for e in range(cuda.grid(1), n_dir * n_ch, cuda.gridsize(1)):
        v = e // n_ch
        c = e - v * n_ch
        dst[v, c] = float64(src[min(v, src.shape[0] - 1), c])


@kernel
def parameter_outputs(coef, p_gamma, p_beta):
    """The gamma and beta outputs of the coefficients, cast to the output dtype."""
    n_dir, n_ch = p_gamma.shape
    for e in range(cuda.grid(1), n_dir * n_ch, cuda.gridsize(1)):
        v = e // n_ch
        c = e - v * n_ch
        p_gamma[v, c] = coef[v, f.P_GAMMA, c]
        p_beta[v, c] = coef[v, f.P_BETA, c]


@kernel
def copy_flat(src, dst):
    """``dst[e] = src[e]`` for 1-D arrays, cast to dst's dtype."""
    for e in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[e] = src[e]


@kernel
def fill(a, value):
    """``a[...] = value`` for a 3-D array."""
    n0, n1, n2 = a.shape
    for e in range(cuda.grid(1), n0 * n1 * n2, cuda.gridsize(1)):
        i = e // (n1 * n2)
        r = e - i * n1 * n2
        a[i, r // n2, r % n2] = value


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
    def shifted_partials(x, shift, part):
        """Per-block ``sum(x - shift[c])`` and ``sum((x - shift[c])**2)``.
        part: (S, 1, 2, C)."""
        pre, n_ch, post = x.shape
        c, lane, lanes, stride = _thread_channel(n_ch, post, width)
        lo, hi = _block_slice(pre * post)
        s1 = 0.0
        s2 = 0.0
        if c < n_ch:
            shift_c = shift[c]
            for m in range(lo + lane, hi, lanes):
                i = m // post
                d = float64(x[i, c, m - i * post]) - shift_c
                s1 += d
                s2 += d * d
        sm = cuda.shared.array((2, block), float64)
        t = cuda.threadIdx.x
        sm[0, t] = s1
        sm[1, t] = s2
        _reduce_lanes(sm, 2, lanes, stride)
        if lane == 0 and c < n_ch:
            part[cuda.blockIdx.x, 0, 0, c] = sm[0, t]
            part[cuda.blockIdx.x, 0, 1, c] = sm[1, t]

    @kernel
    def moment_partials(x, mean, invstd, dz, h, u, w, part):
        """Per-block moment sums (the ``S_*`` slots) of direction blockIdx.z.

        part: (S, V, N_SUMS, C); direction-independent slots only for v = 0.
        """
        pre, n_ch, post = x.shape
        c, lane, lanes, stride = _thread_channel(n_ch, post, width)
        lo, hi = _block_slice(pre * post)
        v = cuda.blockIdx.z
        acc = cuda.local.array(n_sums, float64)
        for q in range(f.N_SUMS):
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
                    acc[f.S_DZU] += d * uv
                    acc[f.S_HU] += hv * uv
                    acc[f.S_HXU] += hv * xh * uv
                if w is not None:
                    wv = float64(w[v, i, c, j])
                    acc[f.S_W] += wv
                    acc[f.S_XW] += xh * wv
        sm = cuda.shared.array((n_sums, block), float64)
        t = cuda.threadIdx.x
        for q in range(f.N_SUMS):
            sm[q, t] = acc[q]
        _reduce_lanes(sm, f.N_SUMS, lanes, stride)
        if lane == 0 and c < n_ch:
            for q in range(f.N_SUMS):
                part[cuda.blockIdx.x, v, q, c] = sm[q, t]

    return SimpleNamespace(shifted_partials=shifted_partials, moment_partials=moment_partials)
