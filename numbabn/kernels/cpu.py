"""CPU kernels (Numba ``@njit``) on the canonical layout ``(pre, C, post)``.

Every array argument is C-contiguous; ``x``-shaped arrays are ``(pre, C, post)``
and per-direction arrays ``(V, pre, C, post)``. Optional arrays are passed as
``None``: Numba compiles one specialisation per combination and prunes the
branches that test them, so each operation only reads what it needs.

Reductions split the ``pre`` axis into ``n_chunks`` fixed chunks, one partial
buffer each, merged serially in chunk order: results do not depend on the
number of threads. Accumulation is in float64 whatever the input dtype.
"""

import functools
import types

import numpy as np
from numba import njit, prange

from . import formulas as f

#: The only fast-math liberties taken: reassociation (vectorised reductions) and
#: fused multiply-add contraction. No nnan/ninf: NaN and inf behave as in NumPy.
FASTMATH = {"reassoc", "contract"}

#: Compiler options of every function here: cached on disk, no GIL (callable
#: from several Python threads), and NumPy's error model (x/0 gives inf or NaN
#: instead of raising, and no division checks block vectorisation).
_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
_scalar = njit(**_OPTIONS)
_inline = njit(fastmath=FASTMATH, inline="always", **_OPTIONS)  # helpers of the kernels
_channel_coefficients = njit(inline="always", **_OPTIONS)(f.channel_coefficients)
_channel_variance = _scalar(f.channel_variance)
_affine = _scalar(f.affine_value)


#: Fewest channels in a block for which the rows-layout reduction adds up four
#: rows per pass (:func:`_wide_rows_moments`): narrower blocks keep their
#: accumulators in L1 and go faster row by row (the measured crossover).
WIDE_BLOCK = 512

#: Elements of x (rows x channel block) in one tile of :func:`_rows_moments`:
#: each direction sweeps the tile in turn, while the tile's x and dz stay in
#: cache and that direction's accumulators in L1 (see :func:`_row_tiles`).
DIRECTION_TILE_ELEMENTS = 16384

#: Fewest channels in a block for which :func:`_rows_moments` merges the loop
#: of the sums of h into another: the merged loops measure slower on narrower
#: blocks, whose rows are too short for them (the crossover lies between 16
#: and 48 channels, by dtype and operation).
MERGED_MIN_CHANNELS = 48

#: Most channels in a block for which :func:`_rows_moments` adds the sums of h
#: in the loop of those of h*u (hvp): wider blocks measure slower, as the
#: accumulators of both loops of a row no longer stay in L1 together.
JOINED_MAX_CHANNELS = 192

#: Serial twins of the parallel kernels, by name: the same code compiled without
#: threads, for arrays too small to repay starting a parallel region. Results
#: do not depend on the thread count either way: the tiling is the same.
serial = {}


def _kernel(fn):
    """Compile ``fn`` as a parallel kernel and register its serial twin in ``serial``."""
    serial[fn.__name__] = njit(fastmath=FASTMATH, **_OPTIONS)(_copy(fn, "serial"))
    return njit(parallel=True, fastmath=FASTMATH, **_OPTIONS)(fn)


def _copy(fn, suffix, **constants):
    """A copy of ``fn`` named ``<qualname>_<suffix>`` (its own entry in Numba's
    on-disk cache), whose globals add ``constants`` (compile-time constants)."""
    scope = {**fn.__globals__, **constants} if constants else fn.__globals__
    twin = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__)
    twin.__qualname__ = f"{fn.__qualname__}_{suffix}"
    return twin


@_scalar
def _task_bounds(task, n_chunks, n_blocks, pre, n_ch):
    """Rows [lo, hi) and channels [c0, c1) of reduction task ``task``.

    Tasks tile (row chunk k) x (channel block b); the tiling depends only on the
    shape, never on the thread count.
    """
    k = task // n_blocks
    b = task - k * n_blocks
    width = (n_ch + n_blocks - 1) // n_blocks
    c0 = min(n_ch, b * width)
    return k, k * pre // n_chunks, (k + 1) * pre // n_chunks, c0, min(n_ch, c0 + width)


@_scalar
def _merge_chunks(part):
    """Sum the per-chunk partial buffers in chunk order (deterministic)."""
    out = np.zeros(part.shape[1:])
    for k in range(part.shape[0]):
        out += part[k]
    return out


@_kernel
def shifted_sums(x, shift, n_chunks, n_blocks):
    """Per-channel ``sum(x - shift)`` and ``sum((x - shift)**2)``.

    ``shift`` is a (C,) float64 array: a value near each channel's mean (see
    :func:`finish_stats`). ``x`` is (pre, C, post), or (pre, C) for the rows
    layout (post = 1, the channel axis contiguous). Returns an array of shape
    (2, C), float64.
    """
    pre, n_ch = x.shape[0], x.shape[1]
    part = np.zeros((n_chunks, 2, n_ch))
    for task in prange(n_chunks * n_blocks):
        k, lo, hi, c0, c1 = _task_bounds(task, n_chunks, n_blocks, pre, n_ch)
        if x.ndim == 2:
            _rows_shifted_sums(x, shift, lo, hi, c0, c1, part[k])
        else:
            _plane_shifted_sums(x, shift, lo, hi, c0, c1, part[k])
    return _merge_chunks(part)


@_inline
def _plane_shifted_sums(x, shift, lo, hi, c0, c1, acc):
    """shifted_sums on rows [lo, hi) x channels [c0, c1) of the (pre, C, post) layout."""
    for i in range(lo, hi):
        for c in range(c0, c1):
            s1 = 0.0
            s2 = 0.0
            for j in range(x.shape[2]):
                d = np.float64(x[i, c, j]) - shift[c]
                s1 += d
                s2 += d * d
            acc[0, c] += s1
            acc[1, c] += s2


@_inline
def _rows_shifted_sums(x, shift, lo, hi, c0, c1, acc):
    """shifted_sums on rows [lo, hi) x channels [c0, c1) of the (pre, C) layout.

    Blocks of at least ``WIDE_BLOCK`` channels take four rows per pass while
    four remain (faster on wide rows); the rest go row by row (x - shift has no
    zero factor to pad with). The loops index 1-D slices from 0 (see
    :func:`_four_rows`).
    """
    shift_b, a_1, a_2 = shift[c0:c1], acc[0, c0:c1], acc[1, c0:c1]
    rest = lo
    if c1 - c0 >= WIDE_BLOCK:
        rest = lo + (hi - lo) // 4 * 4
        for i in range(lo, rest, 4):
            xs = _four_rows(x, i, hi, c0, c1, x[i, c0:c1])
            for c in range(c1 - c0):
                d = _centred4(_at4(xs, c), shift_b[c])
                a_1[c] += _sum4(d)
                a_2[c] += _dot4(d, d)
    for i in range(rest, hi):
        x_row = x[i, c0:c1]
        for c in range(x_row.shape[0]):
            d = np.float64(x_row[c]) - shift_b[c]
            a_1[c] += d
            a_2[c] += d * d


@_kernel
def moment_sums(x, mean, invstd, dz, h, u, w, n_dir, n_chunks, n_blocks):
    """Per-channel sums of the products that an operation needs.

    Fills the ``S_*`` slots of :mod:`formulas` that the given arrays allow and
    returns them as an array of shape (n_dir, N_SUMS, C), float64. Slots of
    absent arrays stay zero; direction-independent slots are copied to every
    direction.

    Layouts: ``x``, ``dz``, ``h`` are (pre, C, post) and ``u``, ``w`` are
    (V, pre, C, post); or, for the rows layout (post = 1), (pre, C) and
    (V, pre, C), with the inner loop along the contiguous channel axis.
    """
    pre, n_ch = x.shape[0], x.shape[1]
    part = np.zeros((n_chunks, n_dir, f.N_SUMS, n_ch))
    for task in prange(n_chunks * n_blocks):
        k, lo, hi, c0, c1 = _task_bounds(task, n_chunks, n_blocks, pre, n_ch)
        if x.ndim == 2 and c1 - c0 >= WIDE_BLOCK:
            _wide_rows_moments(x, mean, invstd, dz, h, u, w, n_dir, lo, hi, c0, c1, part[k])
        elif x.ndim == 2:
            _rows_moments(x, mean, invstd, dz, h, u, w, n_dir, lo, hi, c0, c1, part[k])
        else:
            _plane_moments(x, mean, invstd, dz, h, u, w, n_dir, lo, hi, c0, c1, part[k])
    sums = _merge_chunks(part)
    for v in range(1, n_dir):
        for slot in f.DIRECTION_INDEPENDENT_SLOTS:
            sums[v, slot, :] = sums[0, slot, :]
    return sums


@_inline
def _rows_moments(x, mean, invstd, dz, h, u, w, n_dir, lo, hi, c0, c1, acc):
    """moment_sums on rows [lo, hi) x channels [c0, c1) of the (pre, C) layout.

    Rows go in tiles (:func:`_row_tiles`). Per tile: the sums of h (when
    given) in their own loop, then each direction in turn, row by row, with
    one loop for the sums of dz, u and w (the direction-independent ones ride
    along with direction 0) and one for those of h*u. Loops updating at most
    about five accumulators vectorise; one loop over all ten is much slower.
    On blocks of at least ``MERGED_MIN_CHANNELS`` the loops are fewer, with
    x read and scaled fewer times and the loads overlapping the arithmetic
    instead of alternating with it: without dz (ggnvp) the three loops are
    one, whose seven accumulators still vectorise; with dz (hvp), on blocks
    of at most ``JOINED_MAX_CHANNELS``, the sums of h join those of h*u. Each
    sum still adds its rows in the same order, so the bits are those of three
    loops.

    The loops index 1-D slices of the channel block from 0: Numba then knows
    the indices are non-negative, skips the wraparound handling and the loops
    vectorise, which indexing ``[c0, c1)`` directly prevents.
    """
    mean_b, invstd_b = mean[c0:c1], invstd[c0:c1]
    a_dz, a_xdz = acc[0, f.S_DZ, c0:c1], acc[0, f.S_XDZ, c0:c1]
    a_h, a_hx, a_hxx = acc[0, f.S_H, c0:c1], acc[0, f.S_HX, c0:c1], acc[0, f.S_HXX, c0:c1]
    n = c1 - c0
    merged = n >= MERGED_MIN_CHANNELS
    fused = merged and dz is None  # the sums of h and h*u join those of u
    joined = fused or (merged and n <= JOINED_MAX_CHANNELS)  # the sums of h join those of h*u
    tile = _row_tiles(n)
    for t0 in range(lo, hi, tile):
        t1 = min(hi, t0 + tile)
        if h is not None and not (u is not None and joined):
            for i in range(t0, t1):
                x_row, h_row = x[i, c0:c1], h[i, c0:c1]
                for c in range(n):
                    xh = (np.float64(x_row[c]) - mean_b[c]) * invstd_b[c]
                    hv = np.float64(h_row[c])
                    a_h[c] += hv
                    a_hx[c] += hv * xh
                    a_hxx[c] += hv * xh * xh
        for v in range(n_dir):
            a_u, a_xu, a_dzu = acc[v, f.S_U, c0:c1], acc[v, f.S_XU, c0:c1], acc[v, f.S_DZU, c0:c1]
            a_w, a_xw = acc[v, f.S_W, c0:c1], acc[v, f.S_XW, c0:c1]
            a_hu, a_hxu = acc[v, f.S_HU, c0:c1], acc[v, f.S_HXU, c0:c1]
            once = v == 0  # direction-independent sums ride along with direction 0
            for i in range(t0, t1):
                x_row = x[i, c0:c1]
                if dz is not None:
                    dz_row = dz[i, c0:c1]
                if u is not None:
                    u_row = u[v, i, c0:c1]
                if w is not None:
                    w_row = w[v, i, c0:c1]
                if h is not None:
                    h_row = h[i, c0:c1]
                for c in range(n):
                    xh = (np.float64(x_row[c]) - mean_b[c]) * invstd_b[c]
                    if dz is not None:
                        d = np.float64(dz_row[c])
                        if once:
                            a_dz[c] += d
                            a_xdz[c] += xh * d
                    if u is not None:
                        uv = np.float64(u_row[c])
                        a_u[c] += uv
                        a_xu[c] += xh * uv
                        if dz is not None:
                            a_dzu[c] += d * uv
                    if w is not None:
                        wv = np.float64(w_row[c])
                        a_w[c] += wv
                        a_xw[c] += xh * wv
                    if h is not None and u is not None and fused:
                        _add_h_sums(np.float64(h_row[c]), uv, xh, once, c, a_h, a_hx, a_hxx,
                                    a_hu, a_hxu)  # fmt: skip
                if h is not None and u is not None and not fused:
                    for c in range(n):
                        xh = (np.float64(x_row[c]) - mean_b[c]) * invstd_b[c]
                        _add_h_sums(np.float64(h_row[c]), np.float64(u_row[c]), xh, once and joined,
                                    c, a_h, a_hx, a_hxx, a_hu, a_hxu)  # fmt: skip


@_inline
def _add_h_sums(hv, uv, xh, with_h, c, a_h, a_hx, a_hxx, a_hu, a_hxu):
    """Add one element's sums of h*u at channel ``c`` of :func:`_rows_moments`, and
    those of h when ``with_h`` (in direction 0 of the loop they join)."""
    if with_h:
        a_h[c] += hv
        a_hx[c] += hv * xh
        a_hxx[c] += hv * xh * xh
    hu = hv * uv
    a_hu[c] += hu
    a_hxu[c] += hu * xh


@_scalar
def _row_tiles(width):
    """Rows per tile of :func:`_rows_moments` over ``width`` channels: about
    ``DIRECTION_TILE_ELEMENTS`` elements.

    Each accumulator still adds up its rows in order, so the tiling changes
    the speed of several directions (V = 16: accumulators of all directions
    no longer cycle through L2 every few rows) but never the bits.
    """
    return max(1, DIRECTION_TILE_ELEMENTS // max(1, width))


@_inline
def _wide_rows_moments(x, mean, invstd, dz, h, u, w, n_dir, lo, hi, c0, c1, acc):
    """:func:`_rows_moments` for channel blocks of at least ``WIDE_BLOCK`` channels.

    Rows go four at a time (see :func:`_four_rows`): each accumulator is then
    loaded and stored once per four rows instead of once per row. The loops
    are those of :func:`_rows_moments`. Four rows a pass win on wide channel
    blocks and lose on narrow ones, hence two versions.

    With both u and w (rop_backward), w's sums get a loop of their own: seven
    accumulators in one loop no longer vectorise well on wide rows, while on
    narrow rows the split loses, so :func:`_rows_moments` keeps one loop.
    Without dz (ggnvp) the sums of h and h*u join u's loop, as there: those
    seven accumulators take fewer arithmetic operations and measure faster.
    """
    n = c1 - c0
    mean_b, invstd_b = mean[c0:c1], invstd[c0:c1]
    a_dz, a_xdz = acc[0, f.S_DZ, c0:c1], acc[0, f.S_XDZ, c0:c1]
    a_h, a_hx, a_hxx = acc[0, f.S_H, c0:c1], acc[0, f.S_HX, c0:c1], acc[0, f.S_HXX, c0:c1]
    zero = np.zeros(n, x.dtype)
    fused = dz is None and u is not None  # the sums of h and h*u join u's loop
    for i in range(lo, hi, 4):
        xs = _four_rows(x, i, hi, c0, c1, x[i, c0:c1])
        if dz is not None:
            dzs = _four_rows(dz, i, hi, c0, c1, zero)
        if h is not None:
            hs = _four_rows(h, i, hi, c0, c1, zero)
        if h is not None and not fused:
            for c in range(n):
                xh = _xhat4(_at4(xs, c), mean_b[c], invstd_b[c])
                hv = _at4(hs, c)
                a_h[c] += _sum4(hv)
                a_hx[c] += _dot4(hv, xh)
                a_hxx[c] += _dot4(_mul4(hv, xh), xh)
        for v in range(n_dir):
            a_u, a_xu, a_dzu = acc[v, f.S_U, c0:c1], acc[v, f.S_XU, c0:c1], acc[v, f.S_DZU, c0:c1]
            a_w, a_xw = acc[v, f.S_W, c0:c1], acc[v, f.S_XW, c0:c1]
            a_hu, a_hxu = acc[v, f.S_HU, c0:c1], acc[v, f.S_HXU, c0:c1]
            if u is not None:
                us = _four_rows(u[v], i, hi, c0, c1, zero)
            if w is not None:
                ws = _four_rows(w[v], i, hi, c0, c1, zero)
            once = v == 0  # direction-independent sums ride along with direction 0
            for c in range(n):
                xh = _xhat4(_at4(xs, c), mean_b[c], invstd_b[c])
                if dz is not None:
                    d = _at4(dzs, c)
                    if once:
                        a_dz[c] += _sum4(d)
                        a_xdz[c] += _dot4(xh, d)
                if u is not None:
                    uv = _at4(us, c)
                    a_u[c] += _sum4(uv)
                    a_xu[c] += _dot4(xh, uv)
                    if dz is not None:
                        a_dzu[c] += _dot4(d, uv)
                if w is not None and u is None:
                    wv = _at4(ws, c)
                    a_w[c] += _sum4(wv)
                    a_xw[c] += _dot4(xh, wv)
                if h is not None and fused:
                    hv = _at4(hs, c)
                    if once:
                        a_h[c] += _sum4(hv)
                        a_hx[c] += _dot4(hv, xh)
                        a_hxx[c] += _dot4(_mul4(hv, xh), xh)
                    hu = _mul4(hv, uv)
                    a_hu[c] += _sum4(hu)
                    a_hxu[c] += _dot4(hu, xh)
            if w is not None and u is not None:
                for c in range(n):
                    xh = _xhat4(_at4(xs, c), mean_b[c], invstd_b[c])
                    wv = _at4(ws, c)
                    a_w[c] += _sum4(wv)
                    a_xw[c] += _dot4(xh, wv)
            if h is not None and u is not None and not fused:
                for c in range(n):
                    xh = _xhat4(_at4(xs, c), mean_b[c], invstd_b[c])
                    hu = _mul4(_at4(hs, c), _at4(us, c))
                    a_hu[c] += _sum4(hu)
                    a_hxu[c] += _dot4(hu, xh)


@_inline
def _four_rows(a, i, hi, c0, c1, pad):
    """Rows i..i+3 of a 2-D array, each as its channel block [c0, c1); rows at
    or past ``hi`` are ``pad``.

    The rows-layout reductions add up four rows per pass over the channel
    block. In the last block of a chunk, dz, h, u and w pad with zeros: every
    sum has one of them as a factor (or is one), so the padding adds nothing;
    x pads with a row of its own. The 1-D slices are indexed from 0: Numba then
    knows the indices are non-negative and the loops vectorise.
    """
    return (
        a[i, c0:c1],
        a[i + 1, c0:c1] if i + 1 < hi else pad,
        a[i + 2, c0:c1] if i + 2 < hi else pad,
        a[i + 3, c0:c1] if i + 3 < hi else pad,
    )


@_inline
def _at4(rows, c):
    """Element ``c`` of four rows, as float64."""
    r0, r1, r2, r3 = rows
    return np.float64(r0[c]), np.float64(r1[c]), np.float64(r2[c]), np.float64(r3[c])


@_inline
def _centred4(xv, m):
    return xv[0] - m, xv[1] - m, xv[2] - m, xv[3] - m


@_inline
def _xhat4(xv, m, s):
    return (xv[0] - m) * s, (xv[1] - m) * s, (xv[2] - m) * s, (xv[3] - m) * s


@_inline
def _mul4(p, q):
    return p[0] * q[0], p[1] * q[1], p[2] * q[2], p[3] * q[3]


@_inline
def _sum4(p):
    return (p[0] + p[1]) + (p[2] + p[3])


@_inline
def _dot4(p, q):
    return (p[0] * q[0] + p[1] * q[1]) + (p[2] * q[2] + p[3] * q[3])


@_inline
def _plane_moments(x, mean, invstd, dz, h, u, w, n_dir, lo, hi, c0, c1, acc):
    """moment_sums on rows [lo, hi) x channels [c0, c1) of the (pre, C, post) layout."""
    post = x.shape[2]
    for i in range(lo, hi):
        for c in range(c0, c1):
            m_c = mean[c]
            s_c = invstd[c]
            s_dz = 0.0
            s_xdz = 0.0
            s_h = 0.0
            s_hx = 0.0
            s_hxx = 0.0
            if dz is not None or h is not None:
                for j in range(post):
                    xh = (np.float64(x[i, c, j]) - m_c) * s_c
                    if dz is not None:
                        d = np.float64(dz[i, c, j])
                        s_dz += d
                        s_xdz += xh * d
                    if h is not None:
                        hv = np.float64(h[i, c, j])
                        s_h += hv
                        s_hx += hv * xh
                        s_hxx += hv * xh * xh
            acc[0, f.S_DZ, c] += s_dz
            acc[0, f.S_XDZ, c] += s_xdz
            acc[0, f.S_H, c] += s_h
            acc[0, f.S_HX, c] += s_hx
            acc[0, f.S_HXX, c] += s_hxx
            for v in range(n_dir):
                s_u = 0.0
                s_xu = 0.0
                s_dzu = 0.0
                s_hu = 0.0
                s_hxu = 0.0
                s_w = 0.0
                s_xw = 0.0
                for j in range(post):
                    xh = (np.float64(x[i, c, j]) - m_c) * s_c
                    if u is not None:
                        uv = np.float64(u[v, i, c, j])
                        s_u += uv
                        s_xu += xh * uv
                        if dz is not None:
                            s_dzu += np.float64(dz[i, c, j]) * uv
                        if h is not None:
                            hu = np.float64(h[i, c, j]) * uv
                            s_hu += hu
                            s_hxu += hu * xh
                    if w is not None:
                        wv = np.float64(w[v, i, c, j])
                        s_w += wv
                        s_xw += xh * wv
                acc[v, f.S_U, c] += s_u
                acc[v, f.S_XU, c] += s_xu
                acc[v, f.S_DZU, c] += s_dzu
                acc[v, f.S_HU, c] += s_hu
                acc[v, f.S_HXU, c] += s_hxu
                acc[v, f.S_W, c] += s_w
                acc[v, f.S_XW, c] += s_xw


@_scalar
def finish_stats(shift, sums, count, eps):
    """Mean, biased variance and invstd from the :func:`shifted_sums` about ``shift``.

    Returns ``(mean, var, invstd)``, float64. The variance is exact up to
    rounding of order ``eps_machine * (1 + (mean - shift)**2 / var)``: the
    shift must lie near the mean (a sample of the channel, or the mean of an
    earlier pass).
    """
    n_ch = sums.shape[1]
    mean = np.empty(n_ch)
    var = np.empty(n_ch)
    invstd = np.empty(n_ch)
    for c in range(n_ch):
        mean[c] = shift[c] + sums[0, c] / count
        var[c] = _channel_variance(sums[0, c], sums[1, c], count)
        invstd[c] = 1.0 / np.sqrt(var[c] + eps)
    return mean, var, invstd


def coefficients(terms, sums, gamma, invstd, count, ug, ub):
    """Affine coefficients (V, N_COEF, C) from the sums (V, N_SUMS, C).

    ``terms`` is a bitwise OR of ``formulas.TERM_*``; ``ug`` and ``ub`` are
    the (V, C) tangents of gamma and beta, or None. Each ``terms`` value has
    its own compiled kernel (:func:`_coefficients_kernel`).
    """
    return _coefficients_kernel(terms)(sums, gamma, invstd, count, ug, ub)


@functools.cache
def _coefficients_kernel(terms):
    """:func:`_coefficients_of_terms` compiled with ``TERMS = terms`` as a constant.

    The tests on the terms then fold away at compile time and the loop over
    channels vectorises, with bitwise the results of one kernel that tests
    ``terms`` per channel.
    """
    return _scalar(_copy(_coefficients_of_terms, str(terms), TERMS=terms))


def _coefficients_of_terms(sums, gamma, invstd, count, ug, ub):
    """:func:`coefficients` for the global constant ``TERMS`` (set by the compiler)."""
    terms = TERMS  # noqa: F821 (a global of each compiled copy only)
    n_dir, _, n_ch = sums.shape
    coef = np.empty((n_dir, f.N_COEF, n_ch))
    for v in range(n_dir):
        for c in range(n_ch):
            ug_vc = 0.0 if ug is None else ug[v, c]
            ub_vc = 0.0 if ub is None else ub[v, c]
            _channel_coefficients(terms, sums, v, c, gamma[c], invstd[c], count, ug_vc, ub_vc, coef)
    return coef


@_kernel
def apply_affine(x, mean, dz, h, u, w, coef, out, tile_rows):
    """Write ``out[v] = K_U*u[v] + K_W*w[v] + K_DZ*dz + K_X*xc + K_1
    + h*(KH_U*u[v] + KH_X*xc + KH_1)`` with per-channel coefficients and
    ``xc = x - mean`` (``formulas.affine_value``).

    Layouts as in :func:`moment_sums`; ``out`` is (V, pre, C, post), or
    (V, pre, C) for rows, in the input dtype. ``u`` may carry fewer directions
    than ``out`` (a divisor of V): direction v then reads ``u[v % len(u)]``, so
    that two operations on the same u are applied in one pass. Every element
    is written once, so the parallel loop has no race. Tasks are tiles of ``tile_rows`` rows,
    direction-fastest: the V directions of a tile run back to back while its
    x, dz and h are still in cache, and each writes one contiguous run of out.
    """
    n_dir, pre, n_ch = out.shape[0], out.shape[1], out.shape[2]
    n_tiles = (pre + tile_rows - 1) // tile_rows
    for task in prange(n_tiles * n_dir):
        tile = task // n_dir
        v = task - tile * n_dir
        vu = v
        if u is not None:
            vu = v % u.shape[0]
        for i in range(tile * tile_rows, min(pre, (tile + 1) * tile_rows)):
            if x.ndim == 2:
                _rows_apply(x, mean, dz, h, u, w, coef, out, v, vu, i)
            else:
                for c in range(n_ch):
                    for j in range(x.shape[2]):
                        xc = np.float64(x[i, c, j]) - mean[c]
                        uv = np.float64(u[vu, i, c, j]) if u is not None else 0.0
                        wv = np.float64(w[v, i, c, j]) if w is not None else 0.0
                        dzv = np.float64(dz[i, c, j]) if dz is not None else 0.0
                        hv = np.float64(h[i, c, j]) if h is not None else 0.0
                        out[v, i, c, j] = _affine(coef, v, c, xc, uv, wv, dzv, hv)


@_inline
def _rows_apply(x, mean, dz, h, u, w, coef, out, v, vu, i):
    """apply_affine on row ``i`` of direction ``v`` (of u: ``vu``) of the (pre, C) layout.

    The expression of ``formulas.affine_value``, with each coefficient's row
    taken as a 1-D slice first: the loop then vectorises, which indexing
    ``coef[v, k, c]`` per element prevents.
    """
    x_row, o_row = x[i], out[v, i]
    k_x, k_1, k_u, k_w = coef[v, f.K_X], coef[v, f.K_1], coef[v, f.K_U], coef[v, f.K_W]
    k_dz, kh_u, kh_x, kh_1 = coef[v, f.K_DZ], coef[v, f.KH_U], coef[v, f.KH_X], coef[v, f.KH_1]
    if u is not None:
        u_row = u[vu, i]
    if w is not None:
        w_row = w[v, i]
    if dz is not None:
        dz_row = dz[i]
    if h is not None:
        h_row = h[i]
    for c in range(o_row.shape[0]):
        xc = np.float64(x_row[c]) - mean[c]
        r = k_x[c] * xc + k_1[c]
        uv = 0.0
        if u is not None:
            uv = np.float64(u_row[c])
            r += k_u[c] * uv
        if w is not None:
            r += k_w[c] * np.float64(w_row[c])
        if dz is not None:
            r += k_dz[c] * np.float64(dz_row[c])
        if h is not None:
            r += np.float64(h_row[c]) * (kh_u[c] * uv + kh_x[c] * xc + kh_1[c])
        o_row[c] = r
