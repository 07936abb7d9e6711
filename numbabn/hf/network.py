"""A sequential network with exact Hessian- and GGN-vector products."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._namespace import _xp
from .curvature import CurvatureOperator
from .losses import LOSSES
from .workspace import Workspace


class Sequential:
    """A feed-forward network and its curvature products w.r.t. the parameters.

    Parameters
    ----------
    layers : sequence of layers
        ``Linear``, ``BatchNorm``, ``Tanh``, ``ReLU`` (numbabn.hf), or any object
        with the maps of :class:`numbabn.hf.layers.Layer`.
    loss : {"cross_entropy", "mse"}
        Batch mean of softmax cross-entropy (integer labels), or
        ``0.5 * mean over the batch of the summed squared error``.

    Notes
    -----
    Parameters are one flat vector, layer by layer: Linear weight (out, in)
    row-major then bias; BatchNorm gamma then beta. Every method takes the same
    array namespace as ``X`` (NumPy or CuPy): ``theta`` and ``v`` are moved to
    it. BatchNorm runs in training mode (batch statistics of ``X``).

    The network keeps its work arrays between calls, one set per batch shape
    and thread (up to six activation-sized arrays per layer), which spares
    the page faults of fresh arrays; :meth:`clear_workspace` releases them.

    Examples
    --------
    >>> import numpy as np
    >>> from numbabn import hf
    >>> net = hf.Sequential([hf.Linear(4, 8), hf.BatchNorm(8), hf.Tanh(), hf.Linear(8, 3)])
    >>> theta = net.init(seed=0)
    >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
    >>> net.hvp(theta, X, y, np.ones_like(theta)).shape == theta.shape
    True
    """

    def __init__(self, layers: Sequence[Any], loss: str = "cross_entropy") -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.layers = list(layers)
        self.loss_name = loss
        self.criterion = LOSSES[loss]()
        self._shapes = [s for layer in self.layers for s in layer.shapes]
        self.size = sum(math.prod(s) for s in self._shapes)
        self._workspace = Workspace()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_workspace"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._workspace = Workspace()

    def clear_workspace(self) -> None:
        """Release the work arrays kept between calls (this thread's)."""
        self._workspace.clear()

    # --- parameters -------------------------------------------------------------------
    def init(self, seed: int = 0) -> np.ndarray:
        """Initial parameters (torch-like uniform Linear weights, gamma 1, beta 0)."""
        rng = np.random.default_rng(seed)
        return np.concatenate([p.ravel() for layer in self.layers for p in layer.init(rng)])

    def split_parameters(self, theta: Any, name: str = "theta") -> list[list[Any]]:
        """Per-layer views of a flat parameter-shaped vector (``name`` for errors)."""
        if theta.shape != (self.size,):
            raise ValueError(f"{name} has shape {theta.shape}; expected ({self.size},)")
        out, start = [], 0
        for layer in self.layers:
            params = []
            for shape in layer.shapes:
                n = math.prod(shape)
                params.append(theta[start : start + n].reshape(shape))
                start += n
            out.append(params)
        return out

    @staticmethod
    def join_parameters(grads: Sequence[Sequence[Any]], xp) -> Any:
        """One flat vector from per-layer arrays (the inverse of split_parameters)."""
        return xp.concatenate([xp.ravel(g) for layer in grads for g in layer])

    # --- passes: the interface that CurvatureOperator builds on ----------------------
    # ``params`` is the per-layer list from split_parameters, ``ws`` one Scratch
    # per layer, ``caches`` what forward_pass kept for the other passes.
    def as_float64(self, theta, X, *more):
        """``(xp, X, [theta, *more])``: the namespace of X, and every array as float64 in it."""
        xp = _xp(X)
        X = xp.asarray(X, dtype=xp.float64)
        return xp, X, [xp.asarray(a, dtype=xp.float64) for a in (theta, *more)]

    def forward_pass(self, params, X, ws):
        """``(output, caches)``: the network's output, and each layer's cache."""
        caches, a = [], X
        for layer, p, scratch in zip(self.layers, params, ws, strict=True):
            a, cache = layer.forward(p, a, ws=scratch)
            caches.append(cache)
        return a, caches

    def backward_pass(self, params, caches, g, ws):
        """Per-layer parameter gradients for the output gradient ``g``."""
        grads = [None] * len(self.layers)
        for k in range(len(self.layers) - 1, -1, -1):
            g, grads[k] = self.layers[k].backward(params[k], caches[k], g, ws=ws[k])
        return grads

    def tangent_pass(self, params, dparams, caches, ws):
        """Forward tangents (J v): the input tangent of every layer and the output
        tangent. The network input is data: its tangent is None (zero)."""
        inputs, da = [], None
        for layer, p, dp, cache, scratch in zip(
            self.layers, params, dparams, caches, ws, strict=True
        ):
            inputs.append(da)
            da = layer.tangent(p, dp, cache, da, ws=scratch)
        return inputs, da

    def _scratches(self):
        """This thread's work arrays, one Scratch per layer."""
        return self._workspace.scratches(len(self.layers))

    def predict(self, theta: Any, X: Any) -> Any:
        """Network outputs (logits for cross-entropy) on the batch X."""
        return self._predict(theta, X).copy()  # a work array: the caller gets its own

    def _predict(self, theta: Any, X: Any) -> Any:
        xp, X, (theta,) = self.as_float64(theta, X)
        return self.forward_pass(self.split_parameters(theta), X, self._scratches())[0]

    def loss(self, theta: Any, X: Any, y: Any) -> float:
        """The loss on the batch (X, y)."""
        return self.criterion.value(self._predict(theta, X), y)

    def grad(self, theta: Any, X: Any, y: Any) -> Any:
        """Gradient of the loss w.r.t. theta."""
        xp, X, (theta,) = self.as_float64(theta, X)
        params, ws = self.split_parameters(theta), self._scratches()
        z, caches = self.forward_pass(params, X, ws)
        g = self.criterion.gradient(z, y)
        return self.join_parameters(self.backward_pass(params, caches, g, ws), xp)

    def ggnvp(self, theta: Any, X: Any, y: Any, v: Any) -> Any:
        """Generalised Gauss-Newton-vector product ``Jᵀ H_loss J v`` (Schraudolph 2002)."""
        return CurvatureOperator(self, theta, X, y, "ggn", self._scratches())(v)

    def hvp(self, theta: Any, X: Any, y: Any, v: Any) -> Any:
        """Exact Hessian-vector product: forward tangents, then the R-operator of
        the backward pass layer by layer (Pearlmutter 1994)."""
        return CurvatureOperator(self, theta, X, y, "hessian", self._scratches())(v)

    def curvature(self, theta: Any, X: Any, y: Any, kind: str = "ggn") -> CurvatureOperator:
        """The curvature at fixed (theta, X, y) as an operator ``v -> B v``.

        Each product skips the forward pass (and, for the Hessian, the
        gradient) that :meth:`ggnvp` and :meth:`hvp` recompute on every call:
        the thing to use for many products at one point, as in the conjugate
        gradient of Hessian-free training.

        Parameters
        ----------
        theta, X, y : arrays
            The point and the batch.
        kind : {"ggn", "hessian"}
            Generalised Gauss-Newton matrix, or the exact Hessian.

        Returns
        -------
        CurvatureOperator
            Callable on a vector shaped like theta; keeps its own work arrays.

        Examples
        --------
        >>> import numpy as np
        >>> from numbabn import hf
        >>> net = hf.Sequential([hf.Linear(4, 8), hf.BatchNorm(8), hf.Tanh(), hf.Linear(8, 3)])
        >>> theta = net.init(seed=0)
        >>> X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 3
        >>> H = net.curvature(theta, X, y, kind="hessian")
        >>> v = np.ones_like(theta)
        >>> np.allclose(H(v), net.hvp(theta, X, y, v))
        True
        """
        return CurvatureOperator(self, theta, X, y, kind)

    def accuracy(self, theta: Any, X: Any, y: Any) -> float:
        """Fraction of correct argmax predictions (cross-entropy networks)."""
        return float((self._predict(theta, X).argmax(axis=1) == y).mean())
