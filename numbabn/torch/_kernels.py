"""numbabn's kernels on plain tensors: the bodies of the autograd leaves.

Every function takes plain (not functorch-wrapped) tensors, hands them to numbabn
without copying where the layout allows (:mod:`._arrays`) and returns tensors.
Direction arguments (x-shaped ones and per-channel ones) may carry a leading
axis of V directions; those without it are shared by all V, and the result then
has the leading axis too. The batch statistics travel as one float64 tensor of
shape (4, C), rows :data:`MEAN`, :data:`VAR`, :data:`INVSTD`, :data:`COUNT`,
so that they can be saved for backward and batched like any output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import numbabn

from ._arrays import Layout, as_array, as_tensor, detached, readonly
from ._closed_form import second_directional

MEAN, VAR, INVSTD, COUNT = range(4)

#: torch.compile cannot trace into Numba: it runs these functions as they are (graph breaks).
_opaque = torch.compiler.disable


@dataclass(frozen=True, eq=False)
class Spec:
    """The non-tensor arguments shared by the leaves of one BatchNorm call.

    Attributes
    ----------
    eps : float
        Variance epsilon.
    comm : object or None
        numbabn communicator (``allreduce_sum``) when the batch is sharded.
    known_stats : dict
        The BatchStats made so far for this call's statistics tensors (see
        :func:`_stats`).
    """

    eps: float
    comm: Any = None
    known_stats: dict = field(default_factory=dict, repr=False)

    @property
    def share(self) -> float:
        """The fraction of a parameter-shaped result that one rank returns.

        numbabn's parameter results are sums over the whole batch; every rank
        returns 1/size of them, so that they add up over the ranks to the whole
        batch's gradient (and DDP's average equals torch's SyncBatchNorm's).
        """
        return 1.0 if self.comm is None else 1.0 / self.comm.size


@_opaque
def forward(x, weight, bias, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, stats)``: the normalised batch and its (4, C) statistics."""
    lay = Layout(x)
    z, st = numbabn.forward(
        lay.array(x),
        _channel(weight, x, 1.0),
        _channel(bias, x, 0.0),
        eps=spec.eps,
        axis=lay.axis,
        comm=spec.comm,
    )
    rows = [as_tensor(a, x) for a in (st.mean, st.var, st.invstd)]
    rows.append(torch.full_like(rows[0], float(st.count)))
    return lay.tensor(z, x), torch.stack(rows)


@_opaque
def vjp(dz, x, weight, stats, spec: Spec):
    """``(gamma*P(dz), sum(dz*xhat), sum(dz))``."""
    lay = Layout(x)
    lead = dz.ndim > x.ndim
    dx, dg, db = numbabn.vjp(
        lay.array(x), _channel(weight, x, 1.0), lay.array(dz, lead), _stats(stats, x, lay, spec)
    )
    return lay.tensor(dx, x, lead), *_parameters(dg, db, x, spec)


@_opaque
def jvp(x, weight, stats, u, ug, ub, spec: Spec) -> torch.Tensor:
    """``gamma*P(u) + ug*xhat + ub`` (None arguments are zero)."""
    lay = Layout(x)
    n_dir = _directions(x, fields=(u,), channels=(ug, ub))
    t = numbabn.jvp(
        lay.array(x),
        _channel(weight, x, 1.0),
        _field(lay, x, u, n_dir),
        _stats(stats, x, lay, spec),
        u_gamma=_per_channel(ug),
        u_beta=_per_channel(ub),
    )
    return lay.tensor(t, x, n_dir is not None)


@_opaque
def rop(x, weight, stats, dz, dz_dot, u, ug, spec: Spec):
    """numbabn's ``rop_backward``: ``G(dz_dot) + H<dz, z>(u, ug)`` as (dx', dgamma', dbeta')."""
    if dz.ndim > x.ndim:  # numbabn takes one dz per call
        parts = [
            rop(x, weight, stats, dz[v], *(_select(t, v, x.ndim) for t in (dz_dot, u)),
                _select(ug, v, 1), spec)
            for v in range(dz.shape[0])
        ]  # fmt: skip
        return tuple(torch.stack(p) for p in zip(*parts, strict=True))
    lay = Layout(x)
    n_dir = _directions(x, fields=(dz_dot, u), channels=(ug,))
    dx, dg, db = numbabn.rop_backward(
        lay.array(x),
        _channel(weight, x, 1.0),
        lay.array(dz),
        None if dz_dot is None else _field(lay, x, dz_dot, n_dir),
        _field(lay, x, u, n_dir),
        _stats(stats, x, lay, spec),
        u_gamma=_per_channel(ug),
    )
    return lay.tensor(dx, x, n_dir is not None), *_parameters(dg, db, x, spec)


@_opaque
def tangent_and_rop(x, weight, stats, dz, u, ug, ub, spec: Spec):
    """``(J[u, ug, ub], dx', dgamma')`` of :func:`jvp` and of :func:`rop` without dz_dot,
    by numbabn's ``vjp_backward``: one reduction and one apply pass for both."""
    if dz.ndim > x.ndim:  # numbabn takes one dz per call
        hx, hw, _ = rop(x, weight, stats, dz, None, u, ug, spec)
        return jvp(x, weight, stats, u, ug, ub, spec).expand(hx.shape), hx, hw
    lay = Layout(x)
    n_dir = _directions(x, fields=(u,), channels=(ug, ub))
    t, hx, hw = numbabn.vjp_backward(
        lay.array(x),
        _channel(weight, x, 1.0),
        lay.array(dz),
        _field(lay, x, u, n_dir),
        _stats(stats, x, lay, spec),
        a_gamma=_per_channel(ug),
        a_beta=_per_channel(ub),
    )
    lead = n_dir is not None
    return lay.tensor(t, x, lead), lay.tensor(hx, x, lead), _parameter(hw, x, spec)


@_opaque
def second(x, weight, stats, u, ug, v, vg, spec: Spec) -> torch.Tensor:
    """``D²z[(u, ug), (v, vg)]`` (see :mod:`._closed_form`)."""
    reduce = None if spec.comm is None else (lambda sums: _allreduce(spec.comm, sums))
    return second_directional(
        x, weight, stats[MEAN], stats[INVSTD], count(stats, x, spec), u, ug, v, vg, reduce
    )


def count(stats: torch.Tensor, x: torch.Tensor, spec: Spec) -> int:
    """Elements per channel, over all ranks when the batch is sharded."""
    if spec.comm is None:
        return x.numel() // x.shape[1]
    return int(round(float(stats[COUNT, 0])))


# --- helpers ------------------------------------------------------------------------
def _stats(stats: torch.Tensor, x: torch.Tensor, lay: Layout, spec: Spec) -> numbabn.BatchStats:
    """The (4, C) statistics tensor as numbabn's BatchStats for this call's layout.

    The leaves of one BatchNorm call share its statistics tensor, so each
    BatchStats is made once and kept on the spec: numbabn checks it on its
    first use and runs later calls with it by their cached plan. The key holds
    the tensor's address and version. Only a contiguous tensor is kept: the
    arrays of its BatchStats are views of it, so they hold its memory and the
    address cannot pass to another tensor meanwhile.
    """
    key = (stats.device, stats.data_ptr(), stats._version, lay.axis, lay.shape)
    made = spec.known_stats.get(key)
    if made is None:
        made = _new_stats(stats, x, lay, spec)
        if stats.is_contiguous() and len(spec.known_stats) < _MAX_KNOWN_STATS:
            spec.known_stats[key] = made
    return made


#: BatchStats kept per spec: one per layout of each statistics tensor, a few under vmap.
_MAX_KNOWN_STATS = 16


def _new_stats(stats: torch.Tensor, x: torch.Tensor, lay: Layout, spec: Spec):
    rows = stats.detach().contiguous()
    if rows.is_cuda:  # untested here (no GPU): numbabn's kernels take Numba device arrays
        from numba import cuda

        arrays = [cuda.as_cuda_array(rows[i]) for i in (MEAN, VAR, INVSTD)]
    else:
        arrays = [readonly(rows.numpy()[i]) for i in (MEAN, VAR, INVSTD)]
    mean, var, invstd = arrays
    return numbabn.BatchStats(
        mean=mean,
        var=var,
        invstd=invstd,
        count=count(rows, x, spec),
        eps=spec.eps,
        axis=lay.axis,
        shape=lay.shape,
        comm=spec.comm,
    )


def _parameters(dg: Any, db: Any, x: torch.Tensor, spec: Spec):
    """numbabn's (gamma, beta) results as tensors: this rank's share of them."""
    return _parameter(dg, x, spec), _parameter(db, x, spec)


def _parameter(p: Any, x: torch.Tensor, spec: Spec) -> torch.Tensor:
    """One parameter-shaped numbabn result as a tensor: this rank's share of it."""
    p = as_tensor(p, x)
    return p if spec.comm is None else p * spec.share


def _channel(t: torch.Tensor | None, x: torch.Tensor, fill: float) -> Any:
    """A (C,) parameter as an array in x's dtype (``fill`` where it is None)."""
    if t is None:
        t = torch.full((x.shape[1],), fill, dtype=x.dtype, device=x.device)
    return as_array(detached(t).contiguous())


def _per_channel(t: torch.Tensor | None) -> Any:
    return None if t is None else as_array(detached(t).contiguous())


def _directions(x: torch.Tensor, fields=(), channels=()) -> int | None:
    """V when some direction argument carries a leading axis, else None."""
    sizes = {t.shape[0] for t in fields if t is not None and t.ndim > x.ndim}
    sizes |= {t.shape[0] for t in channels if t is not None and t.ndim > 1}
    if len(sizes) > 1:
        raise ValueError(f"directions of different counts {sorted(sizes)} in one call")
    return sizes.pop() if sizes else None


def _field(lay: Layout, x: torch.Tensor, t: torch.Tensor | None, n_dir: int | None) -> Any:
    """An x-shaped direction as numbabn wants it: zeros for None, V copies when shared."""
    if t is None:
        t = torch.zeros_like(x)
    if n_dir is not None and t.ndim == x.ndim:
        t = t.expand(n_dir, *t.shape)
    return lay.array(t, lead=n_dir is not None)


def _select(t: torch.Tensor | None, v: int, ndim: int) -> torch.Tensor | None:
    """Direction ``v`` of an argument with a leading axis; shared arguments as they are."""
    return t[v] if t is not None and t.ndim > ndim else t


def _allreduce(comm: Any, sums: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over the ranks of a numbabn communicator."""
    host = np.array(sums.detach().cpu().numpy(), dtype=np.float64)  # a copy: reduced in place
    comm.allreduce_sum(host.reshape(-1))
    return torch.from_numpy(host).to(sums.device)
