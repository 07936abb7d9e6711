"""Curvature products of a :class:`~.network.Sequential` loss at a fixed point."""

from __future__ import annotations

import threading
from typing import Any

from .workspace import Scratch

KINDS = ("ggn", "hessian")


class CurvatureOperator:
    """``v -> B v`` for the curvature ``B`` of a network's loss at fixed (theta, X, y).

    It runs the network's passes (``Sequential.forward_pass``, ``tangent_pass``,
    ``backward_pass`` and the parameter layout) and each layer's
    :class:`~numbabn.hf.layers.Layer` maps.

    ``B`` is the exact Hessian (forward tangents, then the R-operator of the
    backward pass, Pearlmutter 1994) or the generalised Gauss-Newton matrix
    ``Jᵀ H_loss J`` (Schraudolph 2002). The forward pass, and for the Hessian
    the loss gradient at every layer's output, are computed once, when the
    operator is made; each product then runs the forward tangents and one
    backward sweep. Hessian-free training calls it tens of times per step at
    the same point.

    Parameters
    ----------
    net : Sequential
    theta : array, shape (net.size,)
        The parameters.
    X, y : arrays
        The batch and its targets; the products follow X's namespace.
    kind : {"ggn", "hessian"}
    scratches : list of Scratch, optional
        Work arrays, one per layer. By default the operator keeps its own,
        so calls of the network in between never overwrite what it keeps.

    graphs : bool, default True
        On CuPy inputs, replay the products from a CUDA graph captured on the
        second product (:mod:`numbabn.hf.graphs`), with eager products where
        capture is impossible.

    Notes
    -----
    Products may be requested from several threads; they run one at a time,
    since they share the operator's work arrays. Each returns a new array.
    Use :meth:`Sequential.curvature` to make one.
    """

    def __init__(
        self,
        net,
        theta: Any,
        X: Any,
        y: Any,
        kind: str = "ggn",
        scratches: list | None = None,
        graphs: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.net, self.kind = net, kind
        if scratches is None:
            store: dict = {}
            scratches = [Scratch(store, k) for k in range(len(net.layers))]
        self._ws = scratches
        self._lock = threading.Lock()
        self._xp, X, (theta,) = net.as_float64(theta, X)
        self._params, self._y = net.split_parameters(theta), y
        self._z, self._caches = net.forward_pass(self._params, X, self._ws)
        self._gradients = self._output_gradients() if kind == "hessian" else None
        self._graphed = None
        if graphs and self._xp.__name__ == "cupy":
            from .graphs import GraphedProducts

            self._graphed = GraphedProducts(self._product, theta)

    def _output_gradients(self) -> list[Any]:
        """The loss gradient at each layer's output, where its R-backward reads
        it (None elsewhere: nothing below needs it)."""
        layers, params, caches = self.net.layers, self._params, self._caches
        gradients = [None] * len(layers)
        g = self.net.criterion.gradient(self._z, self._y)
        for k in range(len(layers) - 1, -1, -1):
            gradients[k] = g
            below_reads_g = k > 0 and layers[k - 1].rop_reads_gradient(k - 1 == 0)
            if below_reads_g:
                g = layers[k].input_gradient(params[k], caches[k], g, ws=self._ws[k])
            else:
                g = None
        return gradients

    def __call__(self, v: Any) -> Any:
        """The product ``B v``, a new array shaped like theta."""
        v = self._xp.asarray(v, dtype=self._xp.float64)
        self.net.split_parameters(v, "v")  # checks the shape, naming v
        if self._graphed is not None:
            return self._graphed(v)
        with self._lock:
            return self._product(v)

    def _product(self, v: Any) -> Any:
        """``B v`` for a float64 ``v`` of theta's shape and namespace."""
        net = self.net
        dparams = net.split_parameters(v, "v")
        inputs, dz = net.tangent_pass(self._params, dparams, self._caches, self._ws)
        hdz = net.criterion.hessian_vector(self._z, self._y, dz)
        if self.kind == "ggn":
            grads = net.backward_pass(self._params, self._caches, hdz, self._ws)
        else:
            grads = self._rop_backward(dparams, inputs, hdz)
        return net.join_parameters(grads, self._xp)

    def _rop_backward(self, dparams, inputs, dg) -> list[Any]:
        """The R-operator of the backward pass, layer by layer, from the output
        gradient's tangent ``dg``."""
        layers = self.net.layers
        rgrads = [None] * len(layers)
        for k in range(len(layers) - 1, -1, -1):
            dg, rgrads[k] = layers[k].rop_backward(
                self._params[k], dparams[k], self._caches[k], inputs[k],
                self._gradients[k], dg, need_input=k > 0, ws=self._ws[k],
            )  # fmt: skip
        return rgrads
