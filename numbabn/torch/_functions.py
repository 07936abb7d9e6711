"""The autograd leaves: each runs one numbabn kernel forward, and each derivative a
leaf asks for is again one of these leaves (docs/design.md §8), so that reverse mode,
forward mode and vmap compose to second order with numbabn's kernels at every level.

====================  ===========================  =====================================
leaf                  value                        derivatives
====================  ===========================  =====================================
``BatchNormFn``       z = F(x, gamma, beta)        backward: ``Backward``; jvp: ``Tangent``
``Backward``          G(dz) = (dx, dgamma, dbeta)  backward: ``Tangent`` (dz), ``Rop`` (x,
                                                   gamma); jvp: ``Rop``
``Tangent``           J[u, ug, ub]                 backward: ``Backward`` (directions),
                                                   ``Rop`` (x, gamma); jvp: ``Tangent`` +
                                                   ``Second``
``Rop``               G(dz_dot) + H<dz, z>(u, ug)  backward: ``Tangent`` (dz_dot), ``Rop``
                                                   (u, ug), ``Second`` (dz); jvp: ``Backward``
                                                   + ``Rop``
``Second``            D²z[(u, ug), (v, vg)]        backward: ``Rop``; jvp: ``Second``
``TangentAndRop``     (J[u, ug, ub],               those of ``Tangent`` and ``Rop``
                      H<dz, z>(u, ug))             together
====================  ===========================  =====================================

H<dz, z> is the Hessian of <dz, z> in (x, gamma); it is symmetric, so ``Rop`` with
dz_dot = 0 is also its own adjoint. ``TangentAndRop`` is ``Backward``'s backward
when it needs both of its parts: numbabn's ``vjp_backward`` computes them with one
reduction and one apply pass. Derivatives of ``Rop`` and ``Second`` with
respect to x and gamma are third derivatives (:mod:`._third`).

Direction arguments may carry a leading axis of V directions sharing x (see
:mod:`._kernels`); the gradient of an input shared by the V directions is then
the sum over them. The statistics tensor is a non-differentiable output of
``BatchNormFn`` and a cache for the others: every derivative of the statistics
with respect to x is already in the closed forms.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from . import _kernels as k
from ._batching import each_slice, fold
from ._third import edges, engine_uses, pairing_grad, third_tangent


class BatchNormFn(Function):
    """``(z, stats) = F(x, weight, bias)``; stats is the (4, C) float64 statistics."""

    @staticmethod
    def forward(x, weight, bias, spec):
        return k.forward(x, weight, bias, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _bias, spec = inputs
        ctx.mark_non_differentiable(output[1])
        _keep(ctx, spec, x, weight, output[1])

    @staticmethod
    def backward(ctx, dz, _dstats):
        if dz is None:
            return None, None, None, None
        x, weight, stats = ctx.saved_tensors
        dx, dw, db = Backward.apply(dz, x, weight, stats, ctx.spec)
        need = ctx.needs_input_grad
        return _if(need[0], dx), _if(need[1], dw), _if(need[2], db), None

    @staticmethod
    def jvp(ctx, ux, uw, ub, _spec):
        x, weight, stats = ctx.saved_tensors
        return Tangent.apply(x, weight, stats, ux, uw, ub, ctx.spec), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return each_slice(BatchNormFn.apply, info.batch_size, in_dims, args)


class Backward(Function):
    """``(dx, dweight, dbias) = G(dz; x, weight)``, numbabn's vjp."""

    @staticmethod
    def forward(dz, x, weight, stats, spec):
        return k.vjp(dz, x, weight, stats, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        dz, x, weight, stats, spec = inputs
        _keep(ctx, spec, x, weight, stats, dz)

    @staticmethod
    def backward(ctx, a, c, d):
        x, weight, stats, dz = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_dz = g_x = g_w = None
        if need[0] and (need[1] or need[2]) and a is not None:
            g_dz, hx, hw = TangentAndRop.apply(x, weight, stats, dz, a, c, d, ctx.spec)
            return g_dz, _if(need[1], _fit(hx, x)), _if(need[2], _fit(hw, weight)), None, None
        if need[0] and _any(a, c, d):
            g_dz = Tangent.apply(x, weight, stats, a, c, d, ctx.spec)
        if (need[1] or need[2]) and _any(a, c):
            hx, hw, _ = Rop.apply(x, weight, stats, dz, None, a, c, ctx.spec)
            g_x, g_w = _if(need[1], _fit(hx, x)), _if(need[2], _fit(hw, weight))
        return g_dz, g_x, g_w, None, None

    @staticmethod
    def jvp(ctx, t_dz, t_x, t_w, _t_stats, _spec):
        x, weight, stats, dz = ctx.saved_tensors
        return Rop.apply(x, weight, stats, dz, t_dz, t_x, t_w, ctx.spec)

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold(Backward.apply, info, in_dims, args, 1, {0: True})


class Tangent(Function):
    """``J[u, ug, ub] = gamma*P(u) + ug*xhat + ub``, numbabn's jvp."""

    @staticmethod
    def forward(x, weight, stats, u, ug, ub, spec):
        return k.jvp(x, weight, stats, u, ug, ub, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, stats, u, ug, ub, spec = inputs
        _keep(ctx, spec, x, weight, stats, u, ug, ub)
        ctx.out_shape = output.shape

    @staticmethod
    def backward(ctx, w):
        x, weight, stats, u, ug, ub = ctx.saved_tensors
        g = [None] * 7
        if w is not None:
            _add_tangent_grads(ctx, g, (3, 4, 5), x, weight, stats, u, ug, ub, w)
        return tuple(g)

    @staticmethod
    def jvp(ctx, t_x, t_w, _t_stats, t_u, t_ug, t_ub, _spec):
        x, weight, stats, u, ug, _ub = ctx.saved_tensors
        out = _tangent_of_tangent(ctx.spec, x, weight, stats, u, ug, t_x, t_w, t_u, t_ug, t_ub)
        return x.new_zeros(ctx.out_shape) if out is None else out

    @staticmethod
    def vmap(info, in_dims, *args):
        return fold(Tangent.apply, info, in_dims, args, 0, {3: True, 4: False, 5: False})


class Rop(Function):
    """``(dx', dweight', dbias') = G(dz_dot) + H<dz, z>(u, ug)``, numbabn's rop_backward."""

    @staticmethod
    def forward(x, weight, stats, dz, dz_dot, u, ug, spec):
        return k.rop(x, weight, stats, dz, dz_dot, u, ug, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_inputs(ctx, inputs)
        ctx.out_shapes = tuple(o.shape for o in output)

    @staticmethod
    def backward(ctx, p, q, r):
        x, weight, stats, dz, dz_dot, u, ug = ctx.saved_tensors
        need, spec = ctx.needs_input_grad, ctx.spec
        g = [None] * 8
        if need[4] and _any(p, q, r):
            g[4] = _fit(Tangent.apply(x, weight, stats, p, q, r, spec), dz_dot)
        if not _any(p, q):
            return tuple(g)
        _add_hessian_grads(ctx, g, (3, 5, 6), x, weight, stats, dz, u, ug, p, q)
        wants_x = need[0] and engine_uses(ctx, 0)
        wants_w = need[1] and engine_uses(ctx, 1)
        if dz_dot is not None and (wants_x or wants_w):
            # G(dz_dot) differentiated in (x, gamma): H<dz_dot, z>(p, q)
            hx, hw, _ = Rop.apply(x, weight, stats, dz_dot, None, p, q, spec)
            g[0] = _add(g[0], _if(wants_x, _fit(hx, x)))
            g[1] = _add(g[1], _if(wants_w, _fit(hw, weight)))
        return tuple(g)

    @staticmethod
    def jvp(ctx, t_x, t_w, _t_stats, t_dz, t_dz_dot, t_u, t_ug, _spec):
        x, weight, stats, dz, dz_dot, u, ug = ctx.saved_tensors
        spec, out = ctx.spec, None
        if t_dz_dot is not None:
            out = Backward.apply(t_dz_dot, x, weight, stats, spec)
        n_dir = ctx.out_shapes[0][0] if len(ctx.out_shapes[0]) > x.ndim else None
        hessian = _tangent_of_hessian(spec, x, weight, stats, dz, u, ug, t_x, t_w, t_dz, t_u, t_ug,
                                      n_dir)  # fmt: skip
        out = _add(out, hessian if hessian is None else (*hessian, None))
        if dz_dot is not None and _any(t_x, t_w):  # G(dz_dot) along (t_x, t_w)
            out = _add(out, Rop.apply(x, weight, stats, dz_dot, None, t_x, t_w, spec))
        return tuple(
            _zeros_for_none(t, shape, x) for t, shape in zip(out, ctx.out_shapes, strict=True)
        )

    @staticmethod
    def vmap(info, in_dims, *args):
        directions = {3: True, 4: True, 5: True, 6: False}
        return fold(Rop.apply, info, in_dims, args, 0, directions)


class Second(Function):
    """``D²z[(u, ug), (v, vg)]``, the layer's second directional derivative (x-shaped)."""

    @staticmethod
    def forward(x, weight, stats, u, ug, v, vg, spec):
        return k.second(x, weight, stats, u, ug, v, vg, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_inputs(ctx, inputs)

    @staticmethod
    def backward(ctx, w):
        x, weight, stats, u, ug, v, vg = ctx.saved_tensors
        need, spec = ctx.needs_input_grad, ctx.spec
        g = [None] * 8
        if w is None:
            return tuple(g)
        if (need[3] or need[4]) and _any(v, vg):  # <w, D²z[a, b]> = a . H<w, z> b
            hu, hug, _ = Rop.apply(x, weight, stats, w, None, v, vg, spec)
            g[3], g[4] = _if(need[3], _fit(hu, u)), _if(need[4], _fit(hug, ug))
        if (need[5] or need[6]) and _any(u, ug):
            hv, hvg, _ = Rop.apply(x, weight, stats, w, None, u, ug, spec)
            g[5], g[6] = _if(need[5], _fit(hv, v)), _if(need[6], _fit(hvg, vg))
        wants_x = need[0] and engine_uses(ctx, 0)
        wants_w = need[1] and engine_uses(ctx, 1)
        if wants_x or wants_w:
            gx, gw = pairing_grad(x, weight, w, u, ug, v, vg, spec)
            g[0], g[1] = _if(wants_x, gx), _if(wants_w, gw)
        return tuple(g)

    @staticmethod
    def jvp(ctx, t_x, t_w, _t_stats, t_u, t_ug, t_v, t_vg, _spec):
        x, weight, stats, u, ug, v, vg = ctx.saved_tensors
        spec, out = ctx.spec, None
        if _any(t_u, t_ug):
            out = Second.apply(x, weight, stats, t_u, t_ug, v, vg, spec)
        if _any(t_v, t_vg):
            out = _add(out, Second.apply(x, weight, stats, u, ug, t_v, t_vg, spec))
        if _any(t_x, t_w):
            out = _add(out, third_tangent(x, weight, u, ug, v, vg, t_x, t_w, spec))
        return out

    @staticmethod
    def vmap(info, in_dims, *args):
        directions = {3: True, 4: False, 5: True, 6: False}
        return fold(Second.apply, info, in_dims, args, 0, directions)


class TangentAndRop(Function):
    """``(J[u, ug, ub], *H<dz, z>(u, ug))``: ``Tangent`` and ``Rop`` (without dz_dot)
    on the same directions, numbabn's ``vjp_backward``."""

    @staticmethod
    def forward(x, weight, stats, dz, u, ug, ub, spec):
        return k.tangent_and_rop(x, weight, stats, dz, u, ug, ub, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _keep_inputs(ctx, inputs)
        ctx.out_shapes = tuple(o.shape for o in output)

    @staticmethod
    def backward(ctx, w, p, q):
        x, weight, stats, dz, u, ug, ub = ctx.saved_tensors
        g = [None] * 8
        if w is not None:
            _add_tangent_grads(ctx, g, (4, 5, 6), x, weight, stats, u, ug, ub, w)
        if _any(p, q):
            _add_hessian_grads(ctx, g, (3, 4, 5), x, weight, stats, dz, u, ug, p, q)
        return tuple(g)

    @staticmethod
    def jvp(ctx, t_x, t_w, _t_stats, t_dz, t_u, t_ug, t_ub, _spec):
        x, weight, stats, dz, u, ug, _ub = ctx.saved_tensors
        spec = ctx.spec
        t = _tangent_of_tangent(spec, x, weight, stats, u, ug, t_x, t_w, t_u, t_ug, t_ub)
        n_dir = ctx.out_shapes[1][0] if len(ctx.out_shapes[1]) > x.ndim else None
        h = _tangent_of_hessian(spec, x, weight, stats, dz, u, ug, t_x, t_w, t_dz, t_u, t_ug, n_dir)
        out = (t, *(h or (None, None)))
        return tuple(
            _zeros_for_none(o, shape, x) for o, shape in zip(out, ctx.out_shapes, strict=True)
        )

    @staticmethod
    def vmap(info, in_dims, *args):
        directions = {3: True, 4: True, 5: False, 6: False}
        return fold(TangentAndRop.apply, info, in_dims, args, 0, directions)


# --- derivatives shared by several leaves ----------------------------------------------
def _add_tangent_grads(ctx, g: list, at: tuple, x, weight, stats, u, ug, ub, w) -> None:
    """Add the gradients of ``<w, J[u, ug, ub]>`` to ``g``: those of the directions
    (at positions ``at``) and those of x and weight (positions 0 and 1)."""
    need, spec = ctx.needs_input_grad, ctx.spec
    if any(need[i] for i in at):
        grads = Backward.apply(w, x, weight, stats, spec)
        for i, grad, like in zip(at, grads, (u, ug, ub), strict=True):
            g[i] = _add(g[i], _if(need[i], _fit(grad, like)))
    if (need[0] or need[1]) and _any(u, ug):
        hx, hw, _ = Rop.apply(x, weight, stats, w, None, u, ug, spec)
        g[0] = _add(g[0], _if(need[0], _fit(hx, x)))
        g[1] = _add(g[1], _if(need[1], _fit(hw, weight)))


def _add_hessian_grads(ctx, g: list, at: tuple, x, weight, stats, dz, u, ug, p, q) -> None:
    """Add the gradients of ``<(p, q), H<dz, z>(u, ug)>`` to ``g``: those of dz, u and
    ug (at positions ``at``), and of x and weight (third order) where the engine
    uses them."""
    need, spec = ctx.needs_input_grad, ctx.spec
    i_dz, i_u, i_ug = at
    if need[i_u] or need[i_ug]:  # H<dz, z> is symmetric
        hu, hug, _ = Rop.apply(x, weight, stats, dz, None, p, q, spec)
        g[i_u] = _add(g[i_u], _if(need[i_u], _fit(hu, u)))
        g[i_ug] = _add(g[i_ug], _if(need[i_ug], _fit(hug, ug)))
    if need[i_dz]:
        g[i_dz] = _add(g[i_dz], _fit(Second.apply(x, weight, stats, u, ug, p, q, spec), dz))
    wants_x = need[0] and engine_uses(ctx, 0)
    wants_w = need[1] and engine_uses(ctx, 1)
    if wants_x or wants_w:
        gx, gw = pairing_grad(x, weight, dz, u, ug, p, q, spec)
        g[0] = _add(g[0], _if(wants_x, gx))
        g[1] = _add(g[1], _if(wants_w, gw))


def _tangent_of_tangent(spec, x, weight, stats, u, ug, t_x, t_w, t_u, t_ug, t_ub):
    """The tangent of ``J[u, ug, ub]`` along all its inputs (None when zero)."""
    out = None
    if _any(t_u, t_ug, t_ub):
        out = Tangent.apply(x, weight, stats, t_u, t_ug, t_ub, spec)
    if _any(t_x, t_w) and _any(u, ug):
        out = _add(out, Second.apply(x, weight, stats, u, ug, t_x, t_w, spec))
    return out


def _tangent_of_hessian(spec, x, weight, stats, dz, u, ug, t_x, t_w, t_dz, t_u, t_ug, n_dir):
    """The tangent of ``H<dz, z>(u, ug)`` (x- and weight-shaped parts) along all its
    inputs, for ``n_dir`` directions or None; None when zero."""
    out = None
    if t_dz is not None:
        out = Rop.apply(x, weight, stats, t_dz, None, u, ug, spec)[:2]
    if _any(t_u, t_ug):
        out = _add(out, Rop.apply(x, weight, stats, dz, None, t_u, t_ug, spec)[:2])
    if _any(t_x, t_w):
        out = _add(out, _rop_third(x, weight, dz, u, ug, t_x, t_w, spec, n_dir)[:2])
    return out


# --- helpers ------------------------------------------------------------------------
def _rop_third(x, weight, dz, u, ug, t_x, t_w, spec, n_dir: int | None):
    """The third-order part of Rop's tangent along (t_x, t_w): the (x, gamma)-gradient
    of <dz, D²z[(u, ug), (t_x, t_w)]>, for each of the ``n_dir`` directions (or None)."""
    if n_dir is None:
        return (*pairing_grad(x, weight, dz, u, ug, t_x, t_w, spec), None)
    parts = [
        pairing_grad(x, weight, _select(dz, v, x.ndim), _select(u, v, x.ndim),
                     _select(ug, v, 1), t_x, t_w, spec)
        for v in range(n_dir)
    ]  # fmt: skip
    gx = torch.stack([p[0] for p in parts])
    gw = None if weight is None else torch.stack([p[1] for p in parts])
    return gx, gw, None


def _select(t, v: int, ndim: int):
    return t[v] if t is not None and t.ndim > ndim else t


def _zeros_for_none(t, shape, like):
    return like.new_zeros(shape) if t is None else t


def _keep(ctx, spec, *tensors) -> None:
    """Save ``tensors`` for backward and forward mode, keep the spec, and let absent
    gradients arrive as None (no zero tensors are made for them)."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)
    ctx.spec = spec
    ctx.set_materialize_grads(False)


def _keep_inputs(ctx, inputs) -> None:
    """:func:`_keep` every tensor input (the spec comes last), and record which inputs
    the autograd graph reaches (for the third derivatives of :mod:`._third`)."""
    *tensors, spec = inputs
    _keep(ctx, spec, *tensors)
    ctx.edges = edges(inputs)


def _any(*ts) -> bool:
    return any(t is not None for t in ts)


def _if(flag: bool, t):
    return t if flag else None


def _fit(grad, like):
    """``grad`` for an input shaped like ``like``: summed over the direction axis when
    the input was shared by all directions, broadcast when it carries one."""
    if grad is None or like is None:
        return None
    if grad.ndim > like.ndim:
        return grad.sum(0)
    if grad.ndim < like.ndim:
        return grad.expand(like.shape)
    return grad


def _add(a, b):
    """Sum of two results (tensors or tuples of tensors; None counts as zero)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tuple):
        return tuple(_add(s, t) for s, t in zip(a, b, strict=True))
    return a + b
