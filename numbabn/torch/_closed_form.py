"""The second directional derivative of the layer output, in torch operations.

``D²z[(u, g), (v, h)]`` is the derivative of the forward tangent
``J[v, h] = gamma*P(v) + h*xhat`` along ``(u, g)``. With ``s = invstd``,
per-channel means ``m_u = mean(u)``, ``A_u = mean(xhat*u)`` (same for v) and
``K = mean(u*v) - m_u*m_v - A_u*A_v``:

    D²z = (h - gamma*s*A_v) * P(u) + (g - gamma*s*A_u) * P(v) - gamma*s²*K * xhat,

symmetric in its two directions, with ``P(u) = s*(u - m_u - xhat*A_u)``. It is
five per-channel sums and one elementwise pass. Directions may carry a leading
axis of V directions (x-shaped ones as (V, *x.shape), per-channel ones as (V, C));
arguments without it are shared by all V.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Sums one (5, ..., C) float64 tensor of per-channel sums over ranks (or None).
Reducer = Callable[[torch.Tensor], torch.Tensor] | None


def reduced_dims(ndim: int) -> tuple[int, ...]:
    """The reduced axes of a batch of ``ndim`` axes, counted from the end (a leading
    direction axis is kept)."""
    return (-ndim, *range(-ndim + 2, 0))


def channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (C,) or (V, C) per-channel tensor shaped to broadcast against (…, N, C, *S)."""
    ones = (1,) * (ndim - 2)
    if t.ndim == 1:
        return t.reshape(t.shape[0], *ones)
    return t.reshape(t.shape[0], 1, t.shape[1], *ones)


def moments(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and invstd of x in float64, differentiable in x."""
    x64 = x.to(torch.float64)
    dims = reduced_dims(x.ndim)
    mean = x64.mean(dim=dims)
    var = (x64 - channel_view(mean, x.ndim)).square().mean(dim=dims)
    return mean, torch.rsqrt(var + eps)


def second_directional(
    x: torch.Tensor,
    gamma: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    count: int,
    u: torch.Tensor | None,
    g: torch.Tensor | None,
    v: torch.Tensor | None,
    h: torch.Tensor | None,
    reduce: Reducer = None,
) -> torch.Tensor:
    """``D²z[(u, g), (v, h)]``, computed in float64 and returned in x's dtype.

    Parameters
    ----------
    x : torch.Tensor, (N, C, *S)
        The batch.
    gamma : torch.Tensor (C,) or None
        The scale (None: ones).
    mean, invstd : torch.Tensor, (C,), float64
        Statistics of x (over all ranks when the batch is sharded).
    count : int
        Elements per channel (over all ranks).
    u, v : torch.Tensor or None
        x-shaped directions, optionally with a leading axis of V; None is zero.
    g, h : torch.Tensor or None
        Per-channel directions of gamma, (C,) or (V, C); None is zero.
    reduce : callable, optional
        Sums the per-channel sums over ranks.

    Returns
    -------
    torch.Tensor, shaped like x or (V, *x.shape)
    """
    nd = x.ndim
    dims = reduced_dims(nd)
    f64 = torch.float64
    s = channel_view(invstd, nd)
    xhat = (x.to(f64) - channel_view(mean, nd)) * s
    u64 = torch.zeros_like(xhat) if u is None else u.to(f64)
    v64 = torch.zeros_like(xhat) if v is None else v.to(f64)
    sums = [t.sum(dim=dims) for t in (u64, xhat * u64, v64, xhat * v64, u64 * v64)]
    shape = torch.broadcast_shapes(*(t.shape for t in sums))
    stacked = torch.stack([t.expand(shape) for t in sums])
    if reduce is not None:
        stacked = reduce(stacked)
    m_u, a_u, m_v, a_v, k = (channel_view(t, nd) for t in stacked / count)
    k = k - m_u * m_v - a_u * a_v
    gam = 1.0 if gamma is None else channel_view(gamma.to(f64), nd)
    g64 = 0.0 if g is None else channel_view(g.to(f64), nd)
    h64 = 0.0 if h is None else channel_view(h.to(f64), nd)
    c_u = (h64 - gam * s * a_v) * s  # P(u) = s*(u - m_u - xhat*a_u), so these multiply u
    c_v = (g64 - gam * s * a_u) * s
    out = c_u * u64 + c_v * v64 - (c_u * m_u + c_v * m_v)
    out = out - xhat * (c_u * a_u + c_v * a_v + gam * s * s * k)
    return out.to(x.dtype)
