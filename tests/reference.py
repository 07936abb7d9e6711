"""Independent references for the tests: autograd oracles and dense tensors.

Nothing here uses numbabn. The autograd oracles differentiate a plain
training-mode BatchNorm written with ``autograd.numpy``; the second-order ones
are Hessians of scalar losses, so they do not reuse numbabn's composition of
J and R:

* ``hvp``:   Hessian in x of ``l(x) = dz·z + ½ (z - z0)ᵀ Hz (z - z0)`` with ``z0 = z(x)``
  held fixed, whose output gradient at x is dz and whose output curvature is Hz;
* ``ggnvp``: the same loss without the dz term (zero residual, so Hessian = GGN);
* ``rvp``:   Hessian of ``dz·z(x)``.

The dense tensors are the explicit Jacobian J[n, m] and Hessian H[n, m, k] of
xhat for one channel of M elements, derived by hand:

    J[n, m]    = s (δnm - 1/M - xhat_n xhat_m / M)
    H[n, m, k] = -(s²/M) (δnm xhat_k + δnk xhat_m + δmk xhat_n
                          - (xhat_n + xhat_m + xhat_k)/M) + 3 s² xhat_n xhat_m xhat_k / M²
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
from autograd import grad, make_jvp, make_vjp


def _bcast(a, ndim, axis):
    shape = [1] * ndim
    shape[axis] = -1
    return anp.reshape(a, shape)


def bn(x, gamma, beta, eps, axis):
    """Training-mode BatchNorm in autograd.numpy (any ndim, channel ``axis``)."""
    axis = axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != axis)
    mean = anp.mean(x, axis=axes, keepdims=True)
    var = anp.mean((x - mean) ** 2, axis=axes, keepdims=True)
    xhat = (x - mean) / anp.sqrt(var + eps)
    return _bcast(gamma, x.ndim, axis) * xhat + _bcast(beta, x.ndim, axis)


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def forward(x, gamma, beta, eps, axis):
    x, gamma, beta = _f64(x, gamma, beta)
    return bn(x, gamma, beta, eps, axis)


def jvp(x, gamma, u, eps, axis, u_gamma=None, u_beta=None):
    x, gamma, u, u_gamma, u_beta = _f64(x, gamma, u, u_gamma, u_beta)
    beta = np.zeros_like(gamma)
    out = make_jvp(lambda x_: bn(x_, gamma, beta, eps, axis))(x)(u)[1]
    if u_gamma is not None:
        out = out + make_jvp(lambda g_: bn(x, g_, beta, eps, axis))(gamma)(u_gamma)[1]
    if u_beta is not None:
        out = out + make_jvp(lambda b_: bn(x, gamma, b_, eps, axis))(beta)(u_beta)[1]
    return out


def vjp(x, gamma, dz, eps, axis):
    x, gamma, dz = _f64(x, gamma, dz)
    beta = np.zeros_like(gamma)
    pull, _ = make_vjp(lambda x_, g_, b_: bn(x_, g_, b_, eps, axis), argnum=(0, 1, 2))(
        x, gamma, beta
    )
    return pull(dz)


def _hessian_vector(loss, x, u):
    return grad(lambda x_: anp.sum(grad(loss)(x_) * u))(x)


def rvp(x, gamma, dz, u, eps, axis):
    x, gamma, dz, u = _f64(x, gamma, dz, u)
    beta = np.zeros_like(gamma)
    return _hessian_vector(lambda x_: anp.sum(dz * bn(x_, gamma, beta, eps, axis)), x, u)


def _quadratic(diff, hz):
    """½ diffᵀ Hz diff for a diagonal (array) or matrix (2-D array over x.size) Hz."""
    if hz.shape == diff.shape:
        return 0.5 * anp.sum(hz * diff * diff)
    flat = anp.reshape(diff, (-1,))
    return 0.5 * anp.dot(flat, anp.dot(hz, flat))


def hvp(x, gamma, dz, u, hz, eps, axis):
    x, gamma, dz, u, hz = _f64(x, gamma, dz, u, hz)
    beta = np.zeros_like(gamma)
    z0 = bn(x, gamma, beta, eps, axis)

    def loss(x_):
        z = bn(x_, gamma, beta, eps, axis)
        return anp.sum(dz * z) + _quadratic(z - z0, hz)

    return _hessian_vector(loss, x, u)


def ggnvp(x, gamma, u, hz, eps, axis):
    x, gamma, u, hz = _f64(x, gamma, u, hz)
    beta = np.zeros_like(gamma)
    z0 = bn(x, gamma, beta, eps, axis)
    return _hessian_vector(lambda x_: _quadratic(bn(x_, gamma, beta, eps, axis) - z0, hz), x, u)


def rop_backward(x, gamma, dz, dz_dot, u, u_gamma, eps, axis):
    """Directional derivative of the backward pass (dx, dgamma, dbeta) along
    (u, u_gamma, dz_dot), by forward mode over autograd's reverse mode."""
    x, gamma, dz, dz_dot, u, u_gamma = _f64(x, gamma, dz, dz_dot, u, u_gamma)
    if u_gamma is None:
        u_gamma = np.zeros_like(gamma)

    def backward(t):
        beta = np.zeros_like(gamma)
        pull, _ = make_vjp(lambda x_, g_, b_: bn(x_, g_, b_, eps, axis), argnum=(0, 1, 2))(
            x + t * u, gamma + t * u_gamma, beta
        )
        dx, dg, db = pull(dz + t * dz_dot)
        return anp.concatenate([anp.ravel(dx), dg, db])

    flat = make_jvp(backward)(0.0)(1.0)[1]
    n, c = x.size, gamma.size
    return flat[:n].reshape(x.shape), flat[n : n + c], flat[n + c :]


def vjp_backward(x, gamma, dz, a, a_gamma, a_beta, eps, axis):
    """Gradients in (dz, x, gamma) of ``<a, dx> + <a_gamma, dgamma> + <a_beta, dbeta>``,
    (dx, dgamma, dbeta) the backward pass at dz: reverse mode over reverse mode."""
    x, gamma, dz, a, a_gamma, a_beta = _f64(x, gamma, dz, a, a_gamma, a_beta)
    a_gamma = np.zeros_like(gamma) if a_gamma is None else a_gamma
    a_beta = np.zeros_like(gamma) if a_beta is None else a_beta

    def pairing(dz_, x_, g_):
        beta = np.zeros_like(gamma)
        pull, _ = make_vjp(lambda x__, g__, b__: bn(x__, g__, b__, eps, axis), argnum=(0, 1, 2))(
            x_, g_, beta
        )
        dx, dg, db = pull(dz_)
        return anp.sum(a * dx) + anp.sum(a_gamma * dg) + anp.sum(a_beta * db)

    return tuple(grad(pairing, argnum=i)(dz, x, gamma) for i in range(3))


# --- dense tensors ---------------------------------------------------------------------
def _channel_xhat(x, eps):
    mean = x.mean()
    s = 1.0 / np.sqrt(((x - mean) ** 2).mean() + eps)
    return (x - mean) * s, s


def dense_jacobian_xhat(x, eps):
    """J[n, m] = d xhat_n / d x_m for one channel (1-D ``x`` of M elements)."""
    xhat, s = _channel_xhat(x, eps)
    m = x.size
    return s * (np.eye(m) - 1.0 / m - np.outer(xhat, xhat) / m)


def dense_hessian_xhat(x, eps):
    """H[n, m, k] = d² xhat_n / d x_m d x_k for one channel."""
    xhat, s = _channel_xhat(x, eps)
    m = x.size
    eye = np.eye(m)
    sum3 = xhat[:, None, None] + xhat[None, :, None] + xhat[None, None, :]
    deltas = (
        eye[:, :, None] * xhat[None, None, :]
        + eye[:, None, :] * xhat[None, :, None]
        + eye[None, :, :] * xhat[:, None, None]
    )
    triple = xhat[:, None, None] * xhat[None, :, None] * xhat[None, None, :]
    return -(s * s / m) * (deltas - sum3 / m) + 3.0 * s * s * triple / (m * m)


def dense_layer_tensors(x2, gamma, eps):
    """Jacobian (N, D, N, D) and Hessian (N, D, N, D, N, D) of z for a 2-D batch (N, D)."""
    x2 = np.asarray(x2, dtype=np.float64)
    n, d = x2.shape
    jac = np.zeros((n, d, n, d))
    hess = np.zeros((n, d, n, d, n, d))
    for c in range(d):
        jac[:, c, :, c] = gamma[c] * dense_jacobian_xhat(x2[:, c], eps)
        hess[:, c, :, c, :, c] = gamma[c] * dense_hessian_xhat(x2[:, c], eps)
    return jac, hess


def dense_products(x, gamma, eps, axis, dz, u, hz):
    """rvp, ggnvp and hvp (diagonal hz) of one direction from the dense tensors.

    Works for any ndim by moving the channel axis last and flattening the rest
    into the batch, which is how BatchNorm groups elements.
    """

    def to2(a):
        return np.moveaxis(np.asarray(a, dtype=np.float64), axis, -1).reshape(-1, x.shape[axis])

    def back(a2):
        moved = np.moveaxis(np.empty(x.shape), axis, -1).shape
        return np.moveaxis(a2.reshape(moved), -1, axis)

    jac, hess = dense_layer_tensors(to2(x), np.asarray(gamma, dtype=np.float64), eps)
    u2, dz2, h2 = to2(u), to2(dz), to2(hz)
    ju = np.einsum("ndme,me->nd", jac, u2)
    ggn = np.einsum("ndme,nd->me", jac, h2 * ju)
    res = np.einsum("nd,ndmekf,kf->me", dz2, hess, u2)
    return {"jvp": back(ju), "rvp": back(res), "ggnvp": back(ggn), "hvp": back(ggn + res)}


def slot_sum(slot: int, xhat, arrays: dict, v: int):
    """The per-channel sum (every axis but 1) that moment slot ``slot`` of
    ``numbabn.kernels.formulas`` holds for direction ``v``, from ``xhat`` and the
    inputs in ``arrays`` (dz, h: shaped like x; u, w: a leading direction axis)."""
    from numbabn.kernels import formulas as f

    dz, h = arrays.get("dz"), arrays.get("h")
    u = arrays["u"][v] if "u" in arrays else None
    w = arrays["w"][v] if "w" in arrays else None
    products = {
        f.S_U: lambda: u, f.S_XU: lambda: xhat * u, f.S_DZ: lambda: dz,
        f.S_XDZ: lambda: xhat * dz, f.S_DZU: lambda: dz * u, f.S_H: lambda: h,
        f.S_HX: lambda: h * xhat, f.S_HXX: lambda: h * xhat * xhat, f.S_HU: lambda: h * u,
        f.S_HXU: lambda: h * xhat * u, f.S_W: lambda: w, f.S_XW: lambda: xhat * w,
    }  # fmt: skip
    return products[slot]().sum(axis=tuple(i for i in range(xhat.ndim) if i != 1))
