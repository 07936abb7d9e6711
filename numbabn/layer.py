"""First-order maps of a training-mode BatchNorm layer: forward, JVP and VJP.

``z = gamma * xhat + beta`` with ``xhat = (x - mean) * invstd`` per channel; the
input Jacobian is ``J u = gamma * P(u)`` with the projection
``P(u) = invstd * (u - mean(u) - xhat * mean(xhat * u))`` (symmetric, so J = Jᵀ).
"""

from __future__ import annotations

from typing import Any

from . import _pipeline
from .stats import BatchStats


def forward(
    x: Any,
    gamma: Any,
    beta: Any,
    eps: float = 1e-5,
    axis: int = 1,
    *,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> tuple[Any, BatchStats]:
    """Training-mode BatchNorm: ``z = gamma * xhat + beta``.

    Parameters
    ----------
    x : array, ndim >= 2, float32 or float64
        The batch; ``axis`` is the channel axis, every other axis is reduced.
    gamma, beta : array, shape (C,)
        Scale and shift, in x's dtype.
    eps : float, default 1e-5
        Variance epsilon (finite, >= 0).
    axis : int, default 1
        Channel axis (``-1`` for channels-last).
    backend : {"auto", "cpu", "cuda"}
        Force a backend; "auto" picks it from the array type.
    comm : communicator, optional
        Batch sharded across processes: see :func:`numbabn.batch_stats`.
    out : array, optional
        Where to write the result (NumPy convention): an array of x's kind and
        dtype, shaped like the result, C-contiguous, writeable, sharing no
        memory with the inputs. It is returned. Reusing one spares the page
        faults of a fresh output on every call.

    Returns
    -------
    z : array, shape of x, dtype of x
    stats : BatchStats
        The batch statistics, reusable by the derivative functions.

    Examples
    --------
    >>> import numpy as np, numbabn
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> z, st = numbabn.forward(x, np.ones(2), np.zeros(2), eps=0.0)
    >>> z
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    return _pipeline.forward(x, gamma, beta, eps, axis, backend, comm, out)


def jvp(
    x: Any,
    gamma: Any,
    u: Any,
    stats: BatchStats | None = None,
    *,
    u_gamma: Any = None,
    u_beta: Any = None,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> Any:
    """Jacobian-vector product of the layer: ``gamma*P(u) + u_gamma*xhat + u_beta``.

    Parameters
    ----------
    x, gamma : arrays
        The batch and the scale (C,), as in :func:`forward`.
    u : array, shape of x or (V, *x.shape)
        Tangent of x; a leading axis holds V directions computed in one pass.
    stats : BatchStats, optional
        Statistics of x from :func:`batch_stats` or :func:`forward`.
    u_gamma, u_beta : array, shape (C,) or (V, C), optional
        Tangents of gamma and beta.
    eps, axis : optional
        Taken from ``stats`` when given; otherwise default to 1e-5 and 1.
    backend : {"auto", "cpu", "cuda"}
    comm : communicator, optional
        For a batch sharded across processes (x, dz, u, ... are this rank's
        shard): reduce over all ranks, like SyncBatchNorm; defaults to
        ``stats.comm``. Parameter outputs are then global sums.
    out : array, optional
        Where to write the result (NumPy convention): an array of x's kind and
        dtype, shaped like the result, C-contiguous, writeable, sharing no
        memory with the inputs. It is returned. Reusing one spares the page
        faults of a fresh output on every call.

    Returns
    -------
    array, shape of u, dtype of x
    """
    args = (u, u_gamma, u_beta)
    return _pipeline.execute(_pipeline.JVP, x, gamma, stats, args, eps, axis, backend, comm, out)


def vjp(
    x: Any,
    gamma: Any,
    dz: Any,
    stats: BatchStats | None = None,
    *,
    eps: float | None = None,
    axis: int | None = None,
    backend: str = "auto",
    comm: Any = None,
    out: Any = None,
) -> tuple[Any, Any, Any]:
    """Vector-Jacobian product (the backward pass) of the layer.

    Parameters
    ----------
    x, gamma : arrays
        The batch and the scale (C,).
    dz : array, shape of x or (V, *x.shape)
        Output gradient dE/dz (several at once with a leading axis).
    stats, eps, axis, backend, comm, out
        As in :func:`jvp` (``out`` receives dx).

    Returns
    -------
    dx : array, shape of dz
        ``gamma * P(dz)``.
    dgamma, dbeta : array, shape (C,) or (V, C)
        ``sum(dz * xhat)`` and ``sum(dz)`` over the reduced axes.
    """
    return _pipeline.execute(_pipeline.VJP, x, gamma, stats, (dz,), eps, axis, backend, comm, out)
