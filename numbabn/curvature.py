"""Second-order maps of a training-mode BatchNorm layer.

* :func:`rvp` — the residual-vector product ``R(dz) u``: the layer's own second
  derivative contracted with the output gradient ``dz`` and a direction ``u``.
* :func:`ggnvp` — ``Jᵀ Hz J u`` (generalised Gauss-Newton).
* :func:`hvp` — ``Jᵀ Hz J u + R(dz) u``, the Hessian-vector product w.r.t. x.
* :func:`rop_backward` — the R-operator of the backward pass (Pearlmutter), for
  exact Hessian-vector products of whole networks.

Formulas: DESIGN.md §1 and :mod:`numbabn.kernels.formulas`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._dispatch import is_cuda_array
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
    call = Call(x, gamma, stats, eps, axis, backend, {"dz": dz, "u": u}, comm=comm)
    dz3 = call.field("dz", dz)
    u4, n_dir, batched = call.directions("u", u)
    res, _ = call.run(f.TERM_RVP, n_dir, dz=dz3, u=u4, out=call.output(out, n_dir, batched))
    return call.shaped(res, batched, out)


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
    call = Call(x, gamma, stats, eps, axis, backend, {"u": u, **_hz_array(hz)}, comm=comm)
    u4, n_dir, batched = call.directions("u", u)
    dst = call.output(out, n_dir, batched)
    if callable(hz):
        w4 = _curvature_times_jvp(call, hz, u4, n_dir)
        res, _ = call.run(f.TERM_PROJ_W, n_dir, w=w4, out=dst)
    else:
        res, _ = call.run(f.TERM_CURV, n_dir, h=call.field("hz", hz), u=u4, out=dst)
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
    call = Call(x, gamma, stats, eps, axis, backend, {"dz": dz, "u": u, **_hz_array(hz)}, comm=comm)
    dz3 = call.field("dz", dz)
    u4, n_dir, batched = call.directions("u", u)
    dst = call.output(out, n_dir, batched)
    if callable(hz):
        w4 = _curvature_times_jvp(call, hz, u4, n_dir)
        res, _ = call.run(f.TERM_RVP | f.TERM_PROJ_W, n_dir, dz=dz3, u=u4, w=w4, out=dst)
    else:
        h3 = call.field("hz", hz)
        res, _ = call.run(f.TERM_RVP | f.TERM_CURV, n_dir, dz=dz3, h=h3, u=u4, out=dst)
    return call.shaped(res, batched, out)


def rop_backward(
    x: Any,
    gamma: Any,
    dz: Any,
    dz_dot: Any,
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
    dz_dot, u : array, shape of x or (V, *x.shape)
        Tangents of dz and x; both carry the same directions.
    u_gamma : array, shape (C,) or (V, C), optional
        Tangent of gamma (zero when omitted). The tangent of beta does not
        enter: z is linear in beta.

    Returns
    -------
    dx_dot : array, shape of u
    dgamma_dot, dbeta_dot : array, shape (C,) or (V, C)
    """
    arrays = {"dz": dz, "dz_dot": dz_dot, "u": u, "u_gamma": u_gamma}
    call = Call(x, gamma, stats, eps, axis, backend, arrays, optional=("u_gamma",), comm=comm)
    dz3 = call.field("dz", dz)
    u4, n_dir, batched = call.directions("u", u)
    w4, n_dir_w, batched_w = call.directions("dz_dot", dz_dot)
    if (n_dir_w, batched_w) != (n_dir, batched):
        raise ValueError(
            f"dz_dot has shape {tuple(dz_dot.shape)} but u has shape {tuple(u.shape)}; "
            "they must carry the same directions"
        )
    ug = call.channel_tangent("u_gamma", u_gamma, n_dir, batched)
    terms = f.TERM_RVP | f.TERM_PROJ_W | (f.TERM_UG_PROJ_DZ if ug is not None else 0)
    dst = call.output(out, n_dir, batched)
    res, coef = call.run(terms, n_dir, dz=dz3, u=u4, w=w4, ug=ug, out=dst)
    return (call.shaped(res, batched, out), *call.parameter_outputs(coef, batched))


def _hz_array(hz: Curvature) -> dict[str, Any]:
    """``{"hz": hz}`` when hz is an array argument (dispatch and dtype checks)."""
    if callable(hz):
        return {}
    if not (isinstance(hz, np.ndarray) or is_cuda_array(hz)):
        raise TypeError(
            f"hz must be an array shaped like x (a diagonal curvature) or a callable "
            f"t -> Hz t, got {type(hz).__name__}"
        )
    return {"hz": hz}


def _curvature_times_jvp(call: Call, hz: Callable, u4, n_dir: int):
    """``Hz (J u)`` for each direction, as a (V, pre, C, post) array."""
    t, _ = call.run(f.TERM_PROJ_U, n_dir, u=u4)
    return call.apply_hz(hz, t)
