"""Batch statistics of a training-mode BatchNorm layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._dispatch import select_backend
from ._layout import canonical_dims
from ._sharding import check_comm, global_mean, reduce_stats_pass
from ._validation import dtype_of, normalize_axis, normalize_eps, require_float_dtype


@dataclass(frozen=True, eq=False)
class BatchStats:
    """Per-channel statistics of one batch, as computed by :func:`batch_stats`.

    Attributes
    ----------
    mean, var, invstd : array, shape (C,), float64
        Batch mean, biased (training-mode) variance and ``1/sqrt(var + eps)``;
        NumPy arrays for host batches (read-only), device arrays for CUDA ones.
    count : int
        M, the number of elements reduced per channel.
    eps : float
        The epsilon used for ``invstd``.
    axis : int
        The channel axis (non-negative).
    shape : tuple of int
        Shape of the batch (this rank's shard) the statistics belong to.
    comm : communicator or None
        The communicator the statistics were reduced over (see
        :mod:`numbabn._sharding`); later calls given these statistics reduce
        over it too. ``count`` is then the global count.
    """

    mean: Any
    var: Any
    invstd: Any
    count: int
    eps: float
    axis: int
    shape: tuple[int, ...]
    comm: Any = None
    #: ``(backend, mean, invstd)`` as that backend's kernels take them, once the
    #: statistics were checked against a batch: later calls skip the checks.
    _prepared: Any = field(default=None, init=False, repr=False)

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return self.shape[self.axis]


def batch_stats(
    x: Any, eps: float = 1e-5, axis: int = 1, *, backend: str = "auto", comm: Any = None
) -> BatchStats:
    """Per-channel mean, variance and invstd of a batch, in one pass over x.

    The pass sums ``d = x - x0`` and ``d**2`` in float64, where ``x0`` is the
    channel's first element, and the variance uses the corrected two-pass
    formula ``(sum d^2 - (sum d)^2 / M) / M``. Because ``x0`` is a sample of the
    channel, ``(mean - x0)**2`` is of the order of the variance and the
    cancellation costs no more than a few bits; in the worst case (x0 an
    outlier that dominates the variance) the relative error of the variance
    is about ``M * 1e-16``. With ``comm``, ranks first agree on a common shift,
    the global mean of a pass about zero (two passes).

    Parameters
    ----------
    x : array, ndim >= 2, float32 or float64
        The batch (NumPy or CUDA array).
    eps : float, default 1e-5
        Added to the variance before the inverse square root; finite, >= 0.
    axis : int, default 1
        Channel axis; every other axis is reduced. ``-1`` for channels-last.
    backend : {"auto", "cpu", "cuda"}
        Force a backend; "auto" picks it from the array type.
    comm : communicator, optional
        For a batch sharded across processes: ``x`` is this rank's shard and
        the statistics are those of the whole batch (SyncBatchNorm). An mpi4py
        communicator or an object with ``allreduce_sum(buffer)``; one message
        per pass (C + 1, then 2C float64 values).

    Returns
    -------
    BatchStats

    Raises
    ------
    ValueError
        For ndim < 2, an empty batch, no channels, a bad axis or eps, or a
        channel of zero variance when ``eps == 0``.

    Examples
    --------
    >>> import numpy as np, numbabn
    >>> x = np.arange(12.0).reshape(3, 2, 2)
    >>> st = numbabn.batch_stats(x)
    >>> st.mean, st.count
    (array([4.5, 6.5]), 6)
    """
    be = select_backend({"x": x}, backend)
    x3, dims, axis = canonical_batch(be, x, axis)
    return stats_of_canonical(be, x, x3, dims, normalize_eps(eps), axis, check_comm(comm))[0]


def stats_of_canonical(
    be, x: Any, x3: Any, dims, eps: float, axis: int, comm: Any, forward: Any = None
) -> tuple[BatchStats, Any]:
    """:func:`batch_stats` of a batch already validated and in canonical layout ``x3``,
    with ``eps`` and ``comm`` checked and ``axis`` non-negative.

    ``forward``, when given, is ``(gamma, beta)`` in the backend's form: a backend
    may then return the forward pass's coefficients along with the statistics
    (else None). Returns ``(stats, coefficients)``.
    """
    pre, n_ch, post = dims
    count = pre * post
    coef = None
    if comm is None:
        mean, var, invstd, coef = be.batch_stats(x3, count, eps, forward)
    else:
        # Ranks need a common shift: the global mean of a pass about zero.
        zero = be.from_host(np.zeros(n_ch))
        shift, count = global_mean(comm, be, be.shifted_sums(x3, zero), count)
        sums = reduce_stats_pass(comm, be, be.shifted_sums(x3, shift))
        mean, var, invstd = be.finish_stats(x3, shift, sums, count, eps)
    if eps == 0.0:
        zero = np.flatnonzero(be.to_host(var) == 0.0)
        if zero.size:
            raise ValueError(
                f"x has zero variance in channel(s) {zero[:10].tolist()} and eps=0, so invstd "
                "would be infinite; use eps > 0"
            )
    freeze, wrap = be.freeze, be.wrap
    stats = _new_stats(
        mean=wrap(freeze(mean), x),
        var=wrap(freeze(var), x),
        invstd=wrap(freeze(invstd), x),
        count=count,
        eps=eps,
        axis=axis,
        shape=tuple(x.shape),
        comm=comm,
        _prepared=(be, be.stat_arg(mean), be.stat_arg(invstd)),
    )
    return stats, coef


def _new_stats(**fields: Any) -> BatchStats:
    """A :class:`BatchStats` with every field given, ``_prepared`` included.

    The statistics are made on every forward pass, so this fills the frozen
    instance directly instead of through the generated ``__init__``, whose
    per-field ``object.__setattr__`` calls cost more than the small kernels.
    """
    stats = object.__new__(BatchStats)
    stats.__dict__.update(fields)
    return stats


def canonical_batch(be, x: Any, axis: Any):
    """Validate a batch ``x``; return its canonical (pre, C, post) view, the dims and
    the non-negative axis."""
    require_float_dtype("x", dtype_of(x))
    if x.ndim < 2:
        raise ValueError(
            f"x must have at least 2 dimensions (batch and channel), got shape {tuple(x.shape)}"
        )
    axis = normalize_axis(axis, x.ndim)
    dims = canonical_dims(tuple(x.shape), axis)
    pre, n_ch, post = dims
    if n_ch == 0:
        raise ValueError(f"x has no channels: shape {tuple(x.shape)} with axis={axis}")
    if pre * post == 0:
        raise ValueError(
            f"x has an empty batch: shape {tuple(x.shape)} leaves no elements per channel"
        )
    return be.view(x, be.kernel_shape(dims)), dims, axis
