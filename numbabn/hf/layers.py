"""Layers of :class:`numbabn.hf.Sequential`, each with the four maps that exact
curvature products need (Pearlmutter 1994):

* ``forward(params, a)`` -> (output, cache)
* ``tangent(params, dparams, cache, da)`` -> output tangent (forward mode, "R{z}")
* ``backward(params, cache, g)`` -> (input gradient, parameter gradients)
* ``rop_backward(params, dparams, cache, da, dz, g, dg)`` -> the tangents of
  ``backward``'s outputs when the input moves by ``da``, the parameters by
  ``dparams`` and the output gradient ``g`` by ``dg`` (``dz`` is the output
  tangent from ``tangent``).

Parameters are tuples of arrays; every array follows the input's namespace
(NumPy or CuPy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import numbabn


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
        return da @ w.T + a @ dw.T + db

    def backward(self, p, a, g):
        w, _ = p
        return g @ w, (g.T @ a, g.sum(axis=0))

    def rop_backward(self, p, dp, a, da, dz, g, dg):
        w, _ = p
        dw, _ = dp
        return dg @ w + g @ dw, (dg.T @ a + g.T @ da, dg.sum(axis=0))


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
        return numbabn.jvp(a, p[0], da, stats, u_gamma=dp[0], u_beta=dp[1])

    def backward(self, p, cache, g):
        a, stats = cache
        dx, dgamma, dbeta = numbabn.vjp(a, p[0], g, stats)
        return dx, (dgamma, dbeta)

    def rop_backward(self, p, dp, cache, da, dz, g, dg):
        a, stats = cache
        dx, dgamma, dbeta = numbabn.rop_backward(a, p[0], g, dg, da, stats, u_gamma=dp[0])
        return dx, (dgamma, dbeta)


class _Elementwise:
    """An activation ``z = f(a)``; subclasses give f, f' and f'' in terms of (a, z)."""

    shapes: list[tuple[int, ...]] = []

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        return []

    def forward(self, p, a):
        z = self.f(a)
        return z, (a, z)

    def tangent(self, p, dp, cache, da):
        return self.df(*cache) * da

    def backward(self, p, cache, g):
        return self.df(*cache) * g, ()

    def rop_backward(self, p, dp, cache, da, dz, g, dg):
        a, z = cache
        return self.df(a, z) * dg + self.d2f(a, z) * da * g, ()


class Tanh(_Elementwise):
    """``z = tanh(a)``."""

    def f(self, a: Any):
        return _xp(a).tanh(a)

    def df(self, a: Any, z: Any):
        return 1.0 - z * z

    def d2f(self, a: Any, z: Any):
        return -2.0 * z * (1.0 - z * z)


class ReLU(_Elementwise):
    """``z = max(a, 0)``; its second derivative is zero almost everywhere."""

    def f(self, a: Any):
        return _xp(a).maximum(a, 0.0)

    def df(self, a: Any, z: Any):
        return (a > 0).astype(a.dtype)

    def d2f(self, a: Any, z: Any):
        return 0.0


def _xp(a: Any):
    """The array namespace of ``a``: CuPy for CuPy arrays, else NumPy."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np
