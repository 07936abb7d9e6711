"""One validated call of a public function, and the reduce -> coefficients -> apply
pipeline that every operation runs (DESIGN.md §2)."""

from __future__ import annotations

from typing import Any

from ._dispatch import array_kind, select_backend
from ._sharding import check_comm, reduce_moment_sums
from ._validation import (
    normalize_axis,
    normalize_eps,
    require_float_dtype,
    require_same_dtype,
    require_shape,
)
from .kernels import formulas as f
from .stats import BatchStats, canonical_batch, stats_of_canonical

DEFAULT_EPS = 1e-5
DEFAULT_AXIS = 1

#: Terms that need no reduction pass (their coefficients use no sums).
_SUM_FREE_TERMS = f.TERM_PARAM


class Call:
    """The validated arguments shared by a call: backend, x in canonical layout,
    its statistics and gamma (float64).

    Parameters
    ----------
    x, gamma : arrays
        The batch and the scale parameter, shape (C,).
    stats : BatchStats or None
        Precomputed statistics of ``x``; computed here when None.
    eps, axis : float or None, int or None
        None means "from ``stats``" (or 1e-5 and 1 when stats is None); an
        explicit value that disagrees with ``stats`` is a ValueError.
    backend : str
        "auto", "cpu" or "cuda".
    arrays : dict
        Every other array argument by name: they take part in dispatch and the
        dtype check.
    optional : tuple of str
        The names in ``arrays`` that may be None (absent).
    comm : communicator or None
        Reduce over the shards of all ranks; defaults to ``stats.comm``.
    """

    def __init__(
        self,
        x: Any,
        gamma: Any,
        stats: BatchStats | None,
        eps: float | None,
        axis: int | None,
        backend: str,
        arrays: dict[str, Any],
        optional: tuple[str, ...] = (),
        comm: Any = None,
    ) -> None:
        self.inputs = {"x": x, "gamma": gamma, **arrays}  # also for the overlap check of out
        self.be = select_backend(self.inputs, backend, optional)
        self.dtype = require_float_dtype("x", x.dtype)
        for name, a in arrays.items():
            if a is not None:
                require_float_dtype(name, a.dtype)
        require_same_dtype("x", self.dtype, gamma=gamma, **arrays)
        comm = check_comm(comm)
        if stats is None:  # validate and lay out x once, for the statistics and the call
            axis = DEFAULT_AXIS if axis is None else axis
            self.x3, self.dims = canonical_batch(self.be, x, axis)
            eps = DEFAULT_EPS if eps is None else eps
            self.stats = stats_of_canonical(self.be, x, self.x3, self.dims, eps, axis, comm)
        else:
            self.stats = self._check_stats(x, stats, eps, axis, comm)
            self.x3, self.dims = canonical_batch(self.be, x, self.stats.axis)
        self.comm = self.stats.comm
        self.like = x  # results come back as this kind of array
        self.shape = tuple(x.shape)
        self.axis = self.stats.axis
        self.channels = self.dims[1]
        require_shape("gamma", gamma, (self.channels,), "one value per channel of x")
        self.gamma = self.be.float64(gamma)

    def _check_stats(self, x, stats, eps, axis, comm) -> BatchStats:
        """``stats`` if it belongs to ``x`` and agrees with ``eps``, ``axis``, ``comm``."""
        if not isinstance(stats, BatchStats):
            raise TypeError(
                f"stats must be a BatchStats from numbabn.batch_stats, got {type(stats).__name__}"
            )
        if x.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions, got shape {x.shape}")
        if axis is not None and normalize_axis(axis, x.ndim) != stats.axis:
            raise ValueError(
                f"stats were computed with axis={stats.axis}, but axis={axis} was given"
            )
        if eps is not None and normalize_eps(eps) != stats.eps:
            raise ValueError(f"stats were computed with eps={stats.eps}, but eps={eps} was given")
        if tuple(x.shape) != stats.shape:
            raise ValueError(
                f"stats belong to a batch of shape {stats.shape}, but x has shape {tuple(x.shape)}"
            )
        if comm is not None and comm is not stats.comm:
            raise ValueError("comm differs from the communicator the stats were reduced over")
        if array_kind("stats.mean", stats.mean) != self.be.name:
            raise TypeError(f"stats live on another backend than x ({self.be.name})")
        return stats

    # --- further arguments ----------------------------------------------------------
    def field(self, name: str, a: Any):
        """An x-shaped argument in canonical layout."""
        require_shape(name, a, self.shape, "the shape of x")
        return self.be.contiguous(a, self.dims)

    def directions(self, name: str, a: Any):
        """A direction argument, shape x.shape or (V, *x.shape).

        Returns ``(array of shape (V, pre, C, post), V, batched)``.
        """
        if tuple(a.shape) == self.shape:
            return self.be.contiguous(a, (1, *self.dims)), 1, False
        if a.ndim == len(self.shape) + 1 and tuple(a.shape[1:]) == self.shape:
            n_dir = a.shape[0]
            if n_dir == 0:
                raise ValueError(f"{name} has zero directions: shape {tuple(a.shape)}")
            return self.be.contiguous(a, (n_dir, *self.dims)), n_dir, True
        raise ValueError(
            f"{name} has shape {tuple(a.shape)}; expected the shape of x {self.shape} or "
            f"(V, *x.shape) for V directions"
        )

    def channel_tangent(self, name: str, a: Any, n_dir: int, batched: bool):
        """A per-channel tangent, shape (C,) or (V, C), as a (V, C) float64 array."""
        if a is None:
            return None
        c = self.channels
        if tuple(a.shape) == (c,) or (batched and tuple(a.shape) == (n_dir, c)):
            return self.be.channel_rows(a, n_dir)
        expected = f"({c},) or ({n_dir}, {c})" if batched else f"({c},)"
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected {expected}")

    def output(self, out: Any, n_dir: int, batched: bool):
        """The caller's ``out`` array as a writable (V, pre, C, post) view, or None.

        ``out`` must be an array of the same kind as x (NumPy or CUDA), shaped
        like the result, of x's dtype, C-contiguous, writeable, and must not
        share memory with any input.
        """
        if out is None:
            return None
        kind = array_kind("out", out)
        if kind != self.be.name:
            raise TypeError(f"out is a {kind} array but x is a {self.be.name} array")
        shape = (n_dir, *self.shape) if batched else self.shape
        require_shape("out", out, shape, "the shape of the result")
        if out.dtype != self.dtype:
            raise TypeError(f"out has dtype {out.dtype}; expected x's dtype {self.dtype}")
        view = self.be.writable_view(out, (n_dir, *self.dims))
        for name, a in self.inputs.items():
            if a is not None and self.be.overlaps(out, a):
                raise ValueError(f"out shares memory with {name}; pass a separate array")
        return view

    # --- the pipeline ---------------------------------------------------------------
    def run(
        self, terms: int, n_dir: int, *, dz=None, h=None, u=None, w=None, ug=None, ub=None, out=None
    ):
        """Reduce, compute coefficients, apply. Returns ``(out, coef)`` with
        ``out`` of shape (V, pre, C, post) in x's dtype (the given ``out`` view
        when not None, else a new array) and ``coef`` (V, N_COEF, C)."""
        be, st = self.be, self.stats
        if terms & ~_SUM_FREE_TERMS:
            sums = be.moment_sums(self.x3, st.mean, st.invstd, dz, h, u, w, n_dir)
            if self.comm is not None:
                present = {"dz": dz is not None, "h": h is not None, "u": u is not None,
                           "w": w is not None}  # fmt: skip
                sums = reduce_moment_sums(self.comm, be, sums, present)
        else:
            sums = be.zeros((n_dir, f.N_SUMS, self.channels))
        coef = be.coefficients(terms, sums, self.gamma, st.invstd, st.count, ug, ub)
        if out is None:
            out = be.empty((n_dir, *self.dims), self.dtype)
        be.apply_affine(self.x3, st.mean, dz, h, u, w, coef, out)
        return out, coef

    def shaped(self, res, batched: bool, out: Any = None):
        """A (V, pre, C, post) result as x.shape or (V, *x.shape), in the caller's
        kind; the caller's ``out`` array itself when one was given."""
        if out is not None:
            return out
        shape = (res.shape[0], *self.shape) if batched else self.shape
        return self.be.wrap(res.reshape(shape), self.like)

    def parameter_outputs(self, coef, batched: bool):
        """The (gamma, beta) outputs of the apply coefficients, in x's dtype."""
        pg, pb = self.be.parameter_outputs(coef, self.dtype)
        if not batched:
            pg, pb = pg[0], pb[0]
        return self.be.wrap(pg, self.like), self.be.wrap(pb, self.like)

    def apply_hz(self, hz: Any, t):
        """Apply a curvature callable to each direction of ``t`` (V, pre, C, post)."""
        n_dir = t.shape[0]
        w = self.be.empty(t.shape, self.dtype)
        for v in range(n_dir):
            r = hz(t[v].reshape(self.shape))
            if array_kind("hz(t)", r) != self.be.name:
                raise TypeError(
                    f"hz returned a {type(r).__name__}; expected a {self.be.name} array"
                )
            require_shape("hz(t)", r, self.shape, "hz must return an array shaped like x")
            self.be.assign(w, v, self.be.contiguous(r, self.dims))
        return w
