"""Second-order maps of a training-mode BatchNorm layer.

* :func:`rvp` — the residual-vector product ``R(dz) u``: the layer's own second
  derivative contracted with the output gradient ``dz`` and a direction ``u``.
* :func:`ggnvp` — ``Jᵀ Hz J u`` (generalised Gauss-Newton).
* :func:`hvp` — ``Jᵀ Hz J u + R(dz) u``, the Hessian-vector product w.r.t. x.
* :func:`rop_backward` — the R-operator of the backward pass (Pearlmutter), for
  exact Hessian-vector products of whole networks.
* :func:`vjp_backward` — the backward pass of the vjp (double backward): a jvp
  and a rop_backward from one reduction.

Formulas: docs/design.md §§1-3 and :mod:`numbabn.kernels.formulas`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _pipeline
from ._arrays import is_cuda_array
from ._pipeline import Call
from .kernels import formulas as f
from .stats import BatchStats

#: An output curvature: an array shaped like x (a diagonal Hz) or a callable t -> Hz t.
Curvature = Any  # an array shaped like x, or a Callable[[array], array]


def rvp(
    x: Any,
    gamma: Any,
    dz: Any,
    u: Any,
    stats: BatchStats | None = None,
    *,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> Any:
    """Residual-vector product ``R(dz) u = sum_i dz_i * (d²z_i/dx dx) u``.

    One reduction pass over x, dz and u (five sums per channel and direction)
    and one apply pass.

    Parameters
    ----------
    x, gamma : arrays
        The batch (ndim >= 2) and the scale, shape (C,).
    dz : array, shape of x
        Output gradient dE/dz.
    u : array, shape of x or (V, *x.shape)
        Direction(s); x and dz are read once for all V directions.
    stats, eps, axis, backend, comm, out
        As in :func:`numbabn.jvp`: statistics (computed when omitted), their
        eps and axis, the backend, a communicator for sharded batches, and an
        array to write the result into.

    Returns
    -------
    array, shape of u, dtype of x

    Examples
    --------
    >>> import numpy as np, numbabn
    >>> rng = np.random.default_rng(0)
    >>> x, dz, u = rng.normal(size=(3, 8, 4))
    >>> numbabn.rvp(x, np.ones(4), dz, u).shape
    (8, 4)
    """
    return _pipeline.execute(_pipeline.RVP, x, gamma, stats, (dz, u), eps, axis, backend, comm, out)


def ggnvp(
    x: Any,
    gamma: Any,
    u: Any,
    hz: Curvature,
    stats: BatchStats | None = None,
    *,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> Any:
    """Generalised Gauss-Newton-vector product ``Jᵀ Hz J u``.

    Parameters
    ----------
    x, gamma, u, stats, eps, axis, backend, comm, out
        As in :func:`rvp`.
    hz : array shaped like x, or callable
        The curvature of the loss w.r.t. the layer output. An array means a
        diagonal Hz (elementwise losses): then the whole product is one fused
        reduction and one apply pass. A callable maps an x-shaped array t to
        ``Hz t`` (called once per direction) and must return an array of the
        same kind and shape.

    Returns
    -------
    array, shape of u, dtype of x
        Positive semi-definite in u whenever Hz is.
    """
    if not callable(hz):
        args = (u, _hz_array(hz))
        return _pipeline.execute(_pipeline.GGNVP, x, gamma, stats, args, eps, axis, backend, comm,
                                 out)  # fmt: skip
    call = Call(x, gamma, stats, eps, axis, backend, {"u": u}, comm=comm)
    u4, n_dir, batched = call.directions("u", u)
    dst = call.output(out, n_dir, batched)
    w4 = _curvature_times_jvp(call, hz, u4, n_dir)
    res, _ = call.run(f.TERM_PROJ_W, n_dir, w=w4, out=dst)
    return call.shaped(res, batched, out)


def hvp(
    x: Any,
    gamma: Any,
    dz: Any,
    u: Any,
    hz: Curvature,
    stats: BatchStats | None = None,
    *,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> Any:
    """Hessian-vector product w.r.t. the input: ``Jᵀ Hz J u + R(dz) u``.

    Parameters
    ----------
    x, gamma, dz, u, stats, eps, axis, backend, comm, out
        As in :func:`rvp`.
    hz : array shaped like x, or callable
        Output curvature, as in :func:`ggnvp`. With an array the whole HVP is
        one reduction pass (ten sums per channel) and one apply pass.

    Returns
    -------
    array, shape of u, dtype of x
    """
    if not callable(hz):
        args = (dz, u, _hz_array(hz))
        return _pipeline.execute(_pipeline.HVP, x, gamma, stats, args, eps, axis, backend, comm,
                                 out)  # fmt: skip
    call = Call(x, gamma, stats, eps, axis, backend, {"dz": dz, "u": u}, comm=comm)
    dz3 = call.field("dz", dz)
    u4, n_dir, batched = call.directions("u", u)
    dst = call.output(out, n_dir, batched)
    w4 = _curvature_times_jvp(call, hz, u4, n_dir)
    res, _ = call.run(f.TERM_RVP | f.TERM_PROJ_W, n_dir, dz=dz3, u=u4, w=w4, out=dst)
    return call.shaped(res, batched, out)


def rop_backward(
    x: Any,
    gamma: Any,
    dz: Any,
    dz_dot: Any | None,
    u: Any,
    stats: BatchStats | None = None,
    *,
    u_gamma: Any = None,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> tuple[Any, Any, Any]:
    """R-operator of the layer's backward pass (Pearlmutter 1994).

    Given the forward tangents ``u`` (of x) and ``u_gamma`` (of gamma), the
    output gradient ``dz`` and its tangent ``dz_dot``, returns the tangents of
    the backward outputs:

    ``dx_dot = gamma*P(dz_dot) + u_gamma*P(dz) + R(dz) u``,
    ``dgamma_dot = sum(dz_dot*xhat) + sum(dz*P(u))``, ``dbeta_dot = sum(dz_dot)``.

    Parameters
    ----------
    x, gamma, dz, stats, eps, axis, backend, comm, out
        As in :func:`rvp` (``out`` receives dx_dot).
    dz_dot : array, shape of x or (V, *x.shape), or None
        Tangent of dz; None means zero, and costs no array (the backward of a
        vjp, whose cotangents leave dz fixed, passes None).
    u : array, shape of x or (V, *x.shape)
        Tangent of x; it carries the same directions as dz_dot.
    u_gamma : array, shape (C,) or (V, C), optional
        Tangent of gamma (zero when omitted). The tangent of beta does not
        enter: z is linear in beta.

    Returns
    -------
    dx_dot : array, shape of u
    dgamma_dot, dbeta_dot : array, shape (C,) or (V, C)
    """
    args = (dz, u, dz_dot, u_gamma)
    return _pipeline.execute(
        _pipeline.ROP_BACKWARD, x, gamma, stats, args, eps, axis, backend, comm, out
    )


def vjp_backward(
    x: Any,
    gamma: Any,
    dz: Any,
    a: Any,
    stats: BatchStats | None = None,
    *,
    a_gamma: Any = None,
    a_beta: Any = None,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
) -> tuple[Any, Any, Any]:
    """The backward pass of :func:`numbabn.vjp` (double backward).

    For cotangents ``(a, a_gamma, a_beta)`` of vjp's outputs ``(dx, dgamma,
    dbeta)``, returns the gradients of ``<a, dx> + <a_gamma, dgamma> + <a_beta,
    dbeta>`` with respect to dz, x and gamma (beta does not enter):

    ``dz_bar = jvp(x, gamma, a, u_gamma=a_gamma, u_beta=a_beta)``,
    ``(x_bar, gamma_bar, _) = rop_backward(x, gamma, dz, None, a, u_gamma=a_gamma)``.

    Both are affine in the same per-channel sums, so they are computed with one
    reduction and one apply pass (two launches on the GPU), reading x, dz and a
    once; a batch sharded over ``comm`` runs the two operations.

    Parameters
    ----------
    x, gamma, dz, stats, eps, axis, backend, comm
        As in :func:`rvp`.
    a : array, shape of x or (V, *x.shape)
        Cotangent of dx (V of them with a leading axis).
    a_gamma, a_beta : array, shape (C,) or (V, C), optional
        Cotangents of dgamma and dbeta (zero when omitted).

    Returns
    -------
    dz_bar, x_bar : array, shape of a
    gamma_bar : array, shape (C,) or (V, C)

    Examples
    --------
    >>> import numpy as np, numbabn
    >>> rng = np.random.default_rng(0)
    >>> x, dz, a = rng.normal(size=(3, 8, 4))
    >>> g, ag = np.ones(4), rng.normal(size=4)
    >>> dz_bar, x_bar, g_bar = numbabn.vjp_backward(x, g, dz, a, a_gamma=ag)
    >>> np.allclose(dz_bar, numbabn.jvp(x, g, a, u_gamma=ag))
    True
    >>> np.allclose(x_bar, numbabn.rop_backward(x, g, dz, None, a, u_gamma=ag)[0])
    True
    """
    return _pipeline.vjp_backward(x, gamma, dz, a, stats, a_gamma, a_beta, eps, axis, backend, comm)


def _hz_array(hz: Curvature) -> Any:
    """``hz`` when it is an array argument (a diagonal curvature); TypeError otherwise."""
    if not (isinstance(hz, np.ndarray) or is_cuda_array(hz)):
        raise TypeError(
            f"hz must be an array shaped like x (a diagonal curvature) or a callable "
            f"t -> Hz t, got {type(hz).__name__}"
        )
    return hz


def _curvature_times_jvp(call: Call, hz: Callable, u4, n_dir: int):
    """``Hz (J u)`` for each direction, as a (V, pre, C, post) array."""
    t, _ = call.run(f.TERM_PROJ_U, n_dir, u=u4)
    return call.apply_hz(hz, t)
