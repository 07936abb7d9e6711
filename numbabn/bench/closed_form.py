"""The closed forms of docs/design.md §2-3 written with vectorised NumPy.

A readable baseline for the demo and the benchmarks (what a user would write
without numbabn): every line is a full-size temporary, so it is correct but
many times slower than the fused kernels. Float64 throughout.
"""

from __future__ import annotations

import numpy as np


def _reduced_axes(x: np.ndarray, axis: int) -> tuple[int, ...]:
    axis = axis % x.ndim
    return tuple(i for i in range(x.ndim) if i != axis)


def _channel(a: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return np.asarray(a, dtype=np.float64).reshape(shape)


def normalize(x: np.ndarray, eps: float, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xhat, invstd)`` with invstd broadcastable against x."""
    axes = _reduced_axes(x, axis)
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    return (x - mean) * invstd, invstd


def forward(x, gamma, beta, eps=1e-5, axis=1):
    """``gamma * xhat + beta``."""
    xhat, _ = normalize(x, eps, axis)
    return _channel(gamma, x, axis) * xhat + _channel(beta, x, axis)


def jvp(x, gamma, u, eps=1e-5, axis=1):
    """``gamma * P(u)``."""
    xhat, s = normalize(x, eps, axis)
    axes = _reduced_axes(x, axis)
    mu = u.mean(axis=axes, keepdims=True)
    mxu = (xhat * u).mean(axis=axes, keepdims=True)
    return _channel(gamma, x, axis) * s * (u - mu - xhat * mxu)


def rvp(x, gamma, dz, u, eps=1e-5, axis=1):
    """``R(dz) u`` from the five sums A, B, C, V, E."""
    xhat, s = normalize(x, eps, axis)
    axes = _reduced_axes(x, axis)
    m = x.size / x.shape[axis]

    def total(a):
        return a.sum(axis=axes, keepdims=True)

    a, b, c, v, e = total(xhat * u), total(dz), total(dz * u), total(u), total(xhat * dz)
    k = _channel(gamma, x, axis) * s * s / m
    return k * (
        -dz * a + b * a / m - xhat * c + xhat * b * v / m - u * e + e * v / m
        + 3.0 / m * xhat * a * e
    )  # fmt: skip


def hvp(x, gamma, dz, u, hz, eps=1e-5, axis=1):
    """``J (hz * J u) + R(dz) u`` for a diagonal output curvature ``hz``."""
    return jvp(x, gamma, hz * jvp(x, gamma, u, eps, axis), eps, axis) + rvp(
        x, gamma, dz, u, eps, axis
    )
