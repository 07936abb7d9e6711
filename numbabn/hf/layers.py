"""Layers of :class:`numbabn.hf.Sequential`: Linear, BatchNorm (numbabn's
kernels) and the activations Tanh and ReLU, each with the maps of the
:class:`Layer` protocol that exact curvature products need (Pearlmutter 1994).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Protocol

import numpy as np

import numbabn

from ._namespace import _xp
from .workspace import FRESH, Scratch


class Layer(Protocol):
    """What :class:`~numbabn.hf.Sequential` asks of a layer.

    Parameters ``p`` (and their tangents ``dp``) are sequences of arrays shaped
    as :attr:`shapes`; every array follows the input's namespace (NumPy or
    CuPy). Every map takes a keyword ``ws`` (:class:`~.workspace.Scratch`) and
    writes its array results into the work arrays it hands out, so a network
    reuses them from call to call; the default allocates fresh ones.
    """

    #: Shapes of the layer's parameters, in the order of the flat vector.
    shapes: list[tuple[int, ...]]

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Initial parameters."""

    def forward(self, p, a, ws: Scratch = FRESH) -> tuple[Any, Any]:
        """``(output, cache)``; the cache is what the other maps read."""

    def tangent(self, p, dp, cache, da, ws: Scratch = FRESH) -> Any:
        """The output tangent (forward mode, "R{z}"); ``da=None`` is a zero input
        tangent (the network's input is data)."""

    def backward(self, p, cache, g, ws: Scratch = FRESH) -> tuple[Any, Any]:
        """``(input gradient, parameter gradients)`` for the output gradient ``g``."""

    def input_gradient(self, p, cache, g, ws: Scratch = FRESH) -> Any:
        """The input gradient alone."""

    def rop_backward(
        self, p, dp, cache, da, g, dg, need_input: bool = True, ws: Scratch = FRESH
    ) -> tuple[Any, Any]:
        """The tangents of :meth:`backward`'s outputs when the input moves by ``da``,
        the parameters by ``dp`` and the output gradient ``g`` by ``dg``; the input
        part is None unless ``need_input``."""

    def rop_reads_gradient(self, first: bool) -> bool:
        """Whether :meth:`rop_backward` reads ``g`` (as the network's first layer:
        zero ``da``, no input part), so that the layer above can skip computing it."""


class Linear:
    """``z = a @ W.T + b`` with W of shape (n_out, n_in), like ``torch.nn.Linear``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        self.n_in, self.n_out = n_in, n_out
        self.shapes = [(n_out, n_in), (n_out,)]

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        bound = 1.0 / math.sqrt(self.n_in)
        return [rng.uniform(-bound, bound, size=s) for s in self.shapes]

    def forward(self, p, a, ws: Scratch = FRESH):
        w, b = p
        z = _matmul(a, w.T, ws.empty("z", (a.shape[0], self.n_out), a))
        z += b
        return z, a

    def tangent(self, p, dp, a, da, ws: Scratch = FRESH):
        w, _ = p
        dw, db = dp
        rows = (a.shape[0], self.n_out)
        out = _matmul(a, dw.T, ws.empty("dz", rows, a))
        out += db
        if da is not None:
            out += _matmul(da, w.T, ws.empty("dz_from_input", rows, a))
        return out

    def backward(self, p, a, g, ws: Scratch = FRESH):
        gw = _matmul(g.T, a, ws.empty("gw", self.shapes[0], a))
        gb = g.sum(axis=0, out=ws.empty("gb", self.shapes[1], a))
        return self.input_gradient(p, a, g, ws), (gw, gb)

    def input_gradient(self, p, a, g, ws: Scratch = FRESH):
        return _matmul(g, p[0], ws.empty("g_in", a.shape, a))

    def rop_backward(self, p, dp, a, da, g, dg, need_input=True, ws: Scratch = FRESH):
        w, _ = p
        dw, _ = dp
        dgw = _matmul(dg.T, a, ws.empty("dgw", self.shapes[0], a))
        if da is not None:
            dgw += _matmul(g.T, da, ws.empty("dgw_from_input", self.shapes[0], a))
        dgb = dg.sum(axis=0, out=ws.empty("dgb", self.shapes[1], a))
        if not need_input:
            return None, (dgw, dgb)
        dg_in = _matmul(dg, w, ws.empty("dg_in", a.shape, a))
        dg_in += _matmul(g, dw, ws.empty("dg_in_from_weights", a.shape, a))
        return dg_in, (dgw, dgb)

    def rop_reads_gradient(self, first: bool) -> bool:
        return not first


class BatchNorm:
    """Training-mode BatchNorm over the batch axis of (B, C) inputs (numbabn kernels)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        self.channels, self.eps = channels, eps
        self.shapes = [(channels,), (channels,)]

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        return [np.ones(self.channels), np.zeros(self.channels)]

    def forward(self, p, a, ws: Scratch = FRESH):
        gamma, beta = p
        with _one_thread(a):
            z, stats = numbabn.forward(a, gamma, beta, eps=self.eps, out=ws.empty("z", a.shape, a))
        return z, (a, stats)

    def tangent(self, p, dp, cache, da, ws: Scratch = FRESH):
        a, stats = cache
        da = ws.zeros("zero_tangent", a) if da is None else da
        out = ws.empty("dz", a.shape, a)
        with _one_thread(a):
            return numbabn.jvp(a, p[0], da, stats, u_gamma=dp[0], u_beta=dp[1], out=out)

    def backward(self, p, cache, g, ws: Scratch = FRESH):
        a, stats = cache
        with _one_thread(a):
            dx, dgamma, dbeta = numbabn.vjp(a, p[0], g, stats, out=ws.empty("g_in", a.shape, a))
        return dx, (dgamma, dbeta)

    def input_gradient(self, p, cache, g, ws: Scratch = FRESH):
        return self.backward(p, cache, g, ws)[0]

    def rop_backward(self, p, dp, cache, da, g, dg, need_input=True, ws: Scratch = FRESH):
        a, stats = cache
        da = ws.zeros("zero_tangent", a) if da is None else da
        out = ws.empty("dg_in", a.shape, a)
        with _one_thread(a):
            dx, dgamma, dbeta = numbabn.rop_backward(
                a, p[0], g, dg, da, stats, u_gamma=dp[0], out=out
            )
        return dx, (dgamma, dbeta)

    def rop_reads_gradient(self, first: bool) -> bool:
        return True


class _Elementwise:
    """An activation ``z = f(a)``; subclasses give f, f' (from a and z, each into
    ``out``) and f'' (from z and f', or None where it is zero). The forward pass
    caches f', which every other map reuses."""

    shapes: list[tuple[int, ...]] = []

    def init(self, rng: np.random.Generator) -> list[np.ndarray]:
        return []

    def forward(self, p, a, ws: Scratch = FRESH):
        z = self.f(a, ws.empty("z", a.shape, a))
        return z, (z, self.df(a, z, ws.empty("df", a.shape, a)))

    def tangent(self, p, dp, cache, da, ws: Scratch = FRESH):
        _, df = cache
        out = ws.empty("dz", df.shape, df)
        if da is None:
            out.fill(0.0)
            return out
        return _xp(df).multiply(df, da, out=out)

    def backward(self, p, cache, g, ws: Scratch = FRESH):
        return self.input_gradient(p, cache, g, ws), ()

    def input_gradient(self, p, cache, g, ws: Scratch = FRESH):
        return _xp(g).multiply(cache[1], g, out=ws.empty("g_in", g.shape, g))

    def rop_backward(self, p, dp, cache, da, g, dg, need_input=True, ws: Scratch = FRESH):
        if not need_input:
            return None, ()
        z, df = cache
        out = _xp(dg).multiply(df, dg, out=ws.empty("dg_in", dg.shape, dg))
        second = None if da is None else self.d2f(z, df)
        if second is not None:
            out += second * da * g
        return out, ()

    def rop_reads_gradient(self, first: bool) -> bool:
        return not first


class Tanh(_Elementwise):
    """``z = tanh(a)``."""

    def rop_backward(self, p, dp, cache, da, g, dg, need_input=True, ws: Scratch = FRESH):
        z, df = cache
        arrays = (z, df, dg, da, g)
        if not need_input or da is None or not _same_numpy_arrays(arrays):
            return super().rop_backward(p, dp, cache, da, g, dg, need_input, ws)
        out = ws.empty("dg_in", z.shape, z)
        flat = [np.ascontiguousarray(a).reshape(-1) for a in (*arrays, out)]
        _activation_kernels().tanh_rop_backward(*flat)
        return out, ()

    def f(self, a: Any, out: Any):
        return _xp(a).tanh(a, out=out)

    def df(self, a: Any, z: Any, out: Any):
        xp = _xp(z)
        xp.multiply(z, z, out=out)
        return xp.subtract(1.0, out, out=out)

    def d2f(self, z: Any, df: Any):
        return -2.0 * z * df


class ReLU(_Elementwise):
    """``z = max(a, 0)``; its second derivative is zero almost everywhere."""

    def f(self, a: Any, out: Any):
        return _xp(a).maximum(a, 0.0, out=out)

    def df(self, a: Any, z: Any, out: Any):
        return _xp(a).greater(a, 0.0, out=out)

    def d2f(self, z: Any, df: Any):
        return None


@contextlib.contextmanager
def _one_thread(like: Any):
    """Run numbabn's CPU kernels on the calling thread only (for NumPy ``like``;
    CUDA arrays go to the GPU and leave Numba's CPU threads alone).

    After each matrix product the BLAS threads spin for a while, so kernels that
    wake Numba's threads between products would wait for a core (measured in
    CHANGELOG.md). The parallel kernels run on one thread with the same tiling,
    so the same bits as with more threads. Numba's thread count is per calling
    thread: other threads are unaffected.
    """
    if not isinstance(like, np.ndarray):
        yield
        return
    import numba

    from .._dispatch import cpu_backend

    cpu_backend()  # start numbabn's thread pool (its layer and spin count) before Numba's default
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _matmul(a: Any, b: Any, out: Any):
    """``a @ b`` written into ``out``."""
    return _xp(a).matmul(a, b, out=out)


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
