"""CPU kernels (Numba ``@njit``) on the canonical layout ``(pre, C, post)``.

Every array argument is C-contiguous; ``x``-shaped arrays are ``(pre, C, post)``
and per-direction arrays ``(V, pre, C, post)``. Optional arrays are passed as
``None``: Numba compiles one specialisation per combination and prunes the
branches that test them, so each operation only reads what it needs.

Reductions split the ``pre`` axis into ``n_chunks`` fixed chunks, one partial
buffer each, merged serially in chunk order: results do not depend on the
number of threads. Accumulation is in float64 whatever the input dtype.
"""

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
_channel_coefficients = _scalar(f.channel_coefficients)
_channel_variance = _scalar(f.channel_variance)


def _kernel(fn):
    return njit(parallel=True, fastmath=FASTMATH, **_OPTIONS)(fn)


@_scalar
def _chunk_bounds(k, n_chunks, n):
    return k * n // n_chunks, (k + 1) * n // n_chunks


@_scalar
def _merge_chunks(part):
    out = np.zeros(part.shape[1:])
    for k in range(part.shape[0]):
        out += part[k]
    return out


@_kernel
def shifted_sums(x, shift, n_chunks):
    """Per-channel ``sum(x - shift)`` and ``sum((x - shift)**2)``.

    Returns an array of shape (2, C), float64.
    """
    pre, n_ch, post = x.shape
    part = np.zeros((n_chunks, 2, n_ch))
    for k in prange(n_chunks):
        lo, hi = _chunk_bounds(k, n_chunks, pre)
        for i in range(lo, hi):
            for c in range(n_ch):
                sc = shift[c]
                s1 = 0.0
                s2 = 0.0
                for j in range(post):
                    d = np.float64(x[i, c, j]) - sc
                    s1 += d
                    s2 += d * d
                part[k, 0, c] += s1
                part[k, 1, c] += s2
    return _merge_chunks(part)


@_kernel
def moment_sums(x, mean, invstd, dz, h, u, w, n_dir, n_chunks):
    """Per-channel sums of the products that an operation needs.

    Fills the ``S_*`` slots of :mod:`formulas` that the given arrays allow
    (``dz``, ``h``: shape of x or None; ``u``, ``w``: (V, ...) or None) and
    returns them as an array of shape (n_dir, N_SUMS, C), float64. Slots of
    absent arrays stay zero; direction-independent slots are copied to every
    direction.
    """
    pre, n_ch, post = x.shape
    part = np.zeros((n_chunks, n_dir, f.N_SUMS, n_ch))
    for k in prange(n_chunks):
        lo, hi = _chunk_bounds(k, n_chunks, pre)
        for i in range(lo, hi):
            for c in range(n_ch):
                m_c = mean[c]
                s_c = invstd[c]
                s_dz = 0.0
                s_xdz = 0.0
                s_h = 0.0
                s_hx = 0.0
                s_hxx = 0.0
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
                part[k, 0, f.S_DZ, c] += s_dz
                part[k, 0, f.S_XDZ, c] += s_xdz
                part[k, 0, f.S_H, c] += s_h
                part[k, 0, f.S_HX, c] += s_hx
                part[k, 0, f.S_HXX, c] += s_hxx
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
                    part[k, v, f.S_U, c] += s_u
                    part[k, v, f.S_XU, c] += s_xu
                    part[k, v, f.S_DZU, c] += s_dzu
                    part[k, v, f.S_HU, c] += s_hu
                    part[k, v, f.S_HXU, c] += s_hxu
                    part[k, v, f.S_W, c] += s_w
                    part[k, v, f.S_XW, c] += s_xw
    sums = _merge_chunks(part)
    for v in range(1, n_dir):
        for slot in (f.S_DZ, f.S_XDZ, f.S_H, f.S_HX, f.S_HXX):
            sums[v, slot, :] = sums[0, slot, :]
    return sums


@_scalar
def finish_stats(sums_first, sums_second, count, eps):
    """Mean and invstd from the two passes of :func:`shifted_sums`.

    ``sums_first`` holds the sums about zero (pass 1), ``sums_second`` those
    about the pass-1 mean (pass 2). Returns ``(mean, var, invstd)``, float64.
    """
    n_ch = sums_first.shape[1]
    mean = np.empty(n_ch)
    var = np.empty(n_ch)
    invstd = np.empty(n_ch)
    for c in range(n_ch):
        shift = sums_first[0, c] / count
        mean[c] = shift + sums_second[0, c] / count
        var[c] = _channel_variance(sums_second[0, c], sums_second[1, c], count)
        invstd[c] = 1.0 / np.sqrt(var[c] + eps)
    return mean, var, invstd


@_scalar
def coefficients(terms, sums, gamma, invstd, count, ug, ub):
    """Affine coefficients (V, N_COEF, C) from the sums (V, N_SUMS, C).

    ``ug`` and ``ub`` are the (V, C) tangents of gamma and beta, or None.
    """
    n_dir, _, n_ch = sums.shape
    coef = np.empty((n_dir, f.N_COEF, n_ch))
    for v in range(n_dir):
        for c in range(n_ch):
            ug_vc = 0.0 if ug is None else ug[v, c]
            ub_vc = 0.0 if ub is None else ub[v, c]
            _channel_coefficients(terms, sums, v, c, gamma[c], invstd[c], count, ug_vc, ub_vc, coef)
    return coef


@_kernel
def apply_affine(x, mean, invstd, dz, h, u, w, coef, out):
    """Write ``out[v] = K_U*u[v] + K_W*w[v] + K_DZ*dz + K_X*xhat + K_1
    + h*(KH_U*u[v] + KH_X*xhat + KH_1)`` with per-channel coefficients.

    ``out`` has shape (V, pre, C, post) and the input dtype; every element is
    written once, so the parallel loop has no race.
    """
    n_dir, pre, n_ch, post = out.shape
    for vi in prange(n_dir * pre):
        v = vi // pre
        i = vi - v * pre
        for c in range(n_ch):
            m_c = mean[c]
            s_c = invstd[c]
            k_u = coef[v, f.K_U, c]
            k_w = coef[v, f.K_W, c]
            k_dz = coef[v, f.K_DZ, c]
            k_x = coef[v, f.K_X, c]
            k_1 = coef[v, f.K_1, c]
            kh_u = coef[v, f.KH_U, c]
            kh_x = coef[v, f.KH_X, c]
            kh_1 = coef[v, f.KH_1, c]
            for j in range(post):
                xh = (np.float64(x[i, c, j]) - m_c) * s_c
                r = k_x * xh + k_1
                if u is not None:
                    r += k_u * np.float64(u[v, i, c, j])
                if w is not None:
                    r += k_w * np.float64(w[v, i, c, j])
                if dz is not None:
                    r += k_dz * np.float64(dz[i, c, j])
                if h is not None:
                    t = kh_x * xh + kh_1
                    if u is not None:
                        t += kh_u * np.float64(u[v, i, c, j])
                    r += np.float64(h[i, c, j]) * t
                out[v, i, c, j] = r
