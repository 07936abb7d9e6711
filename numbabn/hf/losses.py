"""Losses of :class:`numbabn.hf.Sequential`: value, gradient and Hessian-vector
product with respect to the network output z of shape (B, K)."""

from __future__ import annotations

from typing import Any

from ._namespace import _xp


class CrossEntropy:
    """Batch mean of softmax cross-entropy with integer labels y of shape (B,)."""

    def _log_softmax(self, z):
        xp = _xp(z)
        shifted = z - z.max(axis=1, keepdims=True)
        return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))

    def value(self, z: Any, y: Any) -> float:
        xp = _xp(z)
        logp = self._log_softmax(z)
        return float(-logp[xp.arange(z.shape[0]), y].mean())

    def gradient(self, z: Any, y: Any):
        xp = _xp(z)
        g = xp.exp(self._log_softmax(z))
        g[xp.arange(z.shape[0]), y] -= 1.0
        return g / z.shape[0]

    def hessian_vector(self, z: Any, y: Any, dz: Any):
        """``H dz`` with ``H = (diag(p) - p pᵀ) / B`` per sample (positive semi-definite)."""
        p = _xp(z).exp(self._log_softmax(z))
        return (p * dz - p * (p * dz).sum(axis=1, keepdims=True)) / z.shape[0]


class MeanSquaredError:
    """``0.5 * mean over the batch of sum over outputs of (z - y)**2``; y of shape (B, K)."""

    def value(self, z: Any, y: Any) -> float:
        return float(0.5 * ((z - y) ** 2).sum() / z.shape[0])

    def gradient(self, z: Any, y: Any):
        return (z - y) / z.shape[0]

    def hessian_vector(self, z: Any, y: Any, dz: Any):
        return dz / z.shape[0]


LOSSES = {"cross_entropy": CrossEntropy, "mse": MeanSquaredError}
