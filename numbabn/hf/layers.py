"""Layers of :class:`numbabn.hf.Sequential`, each with the four maps that exact
curvature products need (Pearlmutter 1994):

* ``forward(params, a)`` -> (output, cache)
* ``tangent(params, dparams, cache, da)`` -> output tangent (forward mode, "R{z}");
  ``da=None`` means a zero input tangent (the network's input is data)
* ``backward(params, cache, g)`` -> (input gradient, parameter gradients)
* ``input_gradient(params, cache, g)`` -> the input gradient alone
* ``rop_backward(params, dparams, cache, da, dz, g, dg, need_input=True)`` -> the
  tangents of ``backward``'s outputs when the input moves by ``da``, the
  parameters by ``dparams`` and the output gradient ``g`` by ``dg`` (``dz`` is
  the output tangent from ``tangent``); the input part is None unless needed.

Parameters are tuples of arrays; every array follows the input's namespace
(NumPy or CuPy).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

import numbabn

from .._dispatch import is_cupy_array


class Linear:
    """``z = a @ W.T + b`` with W of shape (n_out, n_in), like ``torch.nn.Linear``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        self.n_in, self.n_out = n_in, n_out
        self.shapes = [(n_out, n_in), (n_out,)]

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        bound = 1.0 / math.sqrt(self.n_in)
        return [rng.uniform(-bound, bound, size=s) for s in self.shapes]

    def forward(self, p, a):
        w, b = p
        return a @ w.T + b, a

    def tangent(self, p, dp, a, da):
        w, _ = p
        dw, db = dp
        out = a @ dw.T + db
        return out if da is None else out + da @ w.T

    def backward(self, p, a, g):
        return self.input_gradient(p, a, g), (g.T @ a, g.sum(axis=0))

    def input_gradient(self, p, a, g):
        return g @ p[0]

    def rop_backward(self, p, dp, a, da, dz, g, dg, need_input=True):
        w, _ = p
        dw, _ = dp
        dgw = dg.T @ a if da is None else dg.T @ a + g.T @ da
        return (dg @ w + g @ dw) if need_input else None, (dgw, dg.sum(axis=0))


class BatchNorm:
    """Training-mode BatchNorm over the batch axis of (B, C) inputs (numbabn kernels)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        self.channels, self.eps = channels, eps
        self.shapes = [(channels,), (channels,)]

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        return [np.ones(self.channels), np.zeros(self.channels)]

    def forward(self, p, a):
        gamma, beta = p
        z, stats = numbabn.forward(a, gamma, beta, eps=self.eps)
        return z, (a, stats)

    def tangent(self, p, dp, cache, da):
        a, stats = cache
        da = _xp(a).zeros_like(a) if da is None else da
        return numbabn.jvp(a, p[0], da, stats, u_gamma=dp[0], u_beta=dp[1])

    def backward(self, p, cache, g):
        a, stats = cache
        dx, dgamma, dbeta = numbabn.vjp(a, p[0], g, stats)
        return dx, (dgamma, dbeta)

    def input_gradient(self, p, cache, g):
        return self.backward(p, cache, g)[0]

    def rop_backward(self, p, dp, cache, da, dz, g, dg, need_input=True):
        a, stats = cache
        da = _xp(a).zeros_like(a) if da is None else da
        dx, dgamma, dbeta = numbabn.rop_backward(a, p[0], g, dg, da, stats, u_gamma=dp[0])
        return dx, (dgamma, dbeta)


class _Elementwise:
    """An activation ``z = f(a)``; subclasses give f, f' (from a and z) and f''
    (from z and f', or None where it is zero). The forward pass caches f', which
    every other map reuses."""

    shapes: list[tuple[int, ...]] = []

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        return []

    def forward(self, p, a):
        z = self.f(a)
        return z, (z, self.df(a, z))

    def tangent(self, p, dp, cache, da):
        _, df = cache
        return 0.0 * df if da is None else df * da

    def backward(self, p, cache, g):
        return self.input_gradient(p, cache, g), ()

    def input_gradient(self, p, cache, g):
        return cache[1] * g

    def rop_backward(self, p, dp, cache, da, dz, g, dg, need_input=True):
        if not need_input:
            return None, ()
        z, df = cache
        out = df * dg
        second = None if da is None else self.d2f(z, df)
        if second is not None:
            out += second * da * g
        return out, ()


class Tanh(_Elementwise):
    """``z = tanh(a)``."""

    def rop_backward(self, p, dp, cache, da, dz, g, dg, need_input=True):
        z, df = cache
        arrays = (z, df, dg, da, g)
        if not need_input or da is None or not _same_numpy_arrays(arrays):
            return super().rop_backward(p, dp, cache, da, dz, g, dg, need_input)
        out = np.empty_like(z)
        flat = [np.ascontiguousarray(a).reshape(-1) for a in (*arrays, out)]
        _activation_kernels().tanh_rop_backward(*flat)
        return out, ()

    def f(self, a: Any):
        return _xp(a).tanh(a)

    def df(self, a: Any, z: Any):
        return 1.0 - z * z

    def d2f(self, z: Any, df: Any):
        return -2.0 * z * df


class ReLU(_Elementwise):
    """``z = max(a, 0)``; its second derivative is zero almost everywhere."""

    def f(self, a: Any):
        return _xp(a).maximum(a, 0.0)

    def df(self, a: Any, z: Any):
        return (a > 0).astype(a.dtype)

    def d2f(self, z: Any, df: Any):
        return None


@functools.cache
def _activation_kernels():
    """The activation kernels module, imported once the Numba cache has a home."""
    from .._cache import ensure_cache_dir

    ensure_cache_dir()
    from ..kernels import activation

    return activation


def _same_numpy_arrays(arrays) -> bool:
    """Whether every array is a NumPy array of the first one's shape and dtype."""
    first = arrays[0]
    return all(
        isinstance(a, np.ndarray) and a.shape == first.shape and a.dtype == first.dtype
        for a in arrays
    )


def _xp(a: Any):
    """The array namespace of ``a``: CuPy for CuPy arrays, else NumPy."""
    if is_cupy_array(a):
        import cupy

        return cupy
    return np
