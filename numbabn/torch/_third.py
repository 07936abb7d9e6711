"""Third derivatives with respect to x and gamma, in torch operations.

The second-order leaves are linear in their directions, and their derivatives
along directions are again numbabn kernels; their derivatives with respect to
x and gamma are third derivatives of the layer, for which numbabn has no
kernel. Those come from torch's own autograd of the closed form of
:mod:`._closed_form` with the statistics recomputed from x. Where the engine
will not use such a gradient (an ``autograd.functional.hvp``, which
differentiates a double backward along its cotangents only), it is skipped.
"""

from __future__ import annotations

import torch

from ._closed_form import moments, second_directional
from ._kernels import Spec


def engine_uses(ctx, index: int) -> bool:
    """Whether the running backward pass will use the gradient of input ``index``.

    True whenever that cannot be decided (a leaf under ``torch.autograd.grad``,
    functorch's own graph, no running backward).
    """
    try:
        node = ctx.next_functions[ctx.edges[index]][0]
        return node is not None and torch._C._will_engine_execute_node(node)
    except (AttributeError, IndexError, KeyError, RuntimeError):
        return True


def edges(inputs: tuple) -> dict[int, int]:
    """Input position -> position among the backward node's edges (tensor inputs only)."""
    tensors = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
    return {i: k for k, i in enumerate(tensors)}


def pairing_grad(x, weight, w, u, ug, v, vg, spec: Spec):
    """``(d/dx, d/dgamma) <w, D²z[(u, ug), (v, vg)]>`` (weight's entry None when it is)."""
    _require_unsharded(spec)

    def pairing(x_, weight_):
        d2 = _second(x_, weight_, u, ug, v, vg, spec)
        return (w.to(torch.float64) * d2.to(torch.float64)).sum()

    if weight is None:
        return torch.func.grad(lambda x_: pairing(x_, None))(x), None
    return torch.func.grad(pairing, argnums=(0, 1))(x, weight)


def third_tangent(x, weight, u, ug, v, vg, tx, tw, spec: Spec):
    """The derivative of ``D²z[(u, ug), (v, vg)]`` along (tx, tw) for (x, gamma)."""
    _require_unsharded(spec)
    primals = (x,) if weight is None else (x, weight)
    tangents = (torch.zeros_like(x) if tx is None else tx,)
    if weight is not None:
        tangents += (torch.zeros_like(weight) if tw is None else tw,)

    def d2(*p):
        return _second(p[0], p[1] if len(p) > 1 else None, u, ug, v, vg, spec)

    # Forward mode as the transpose of reverse mode (two vjps): torch.func.jvp cannot
    # run inside the forward-mode AD of torch.autograd, which may be what called us.
    out, vjp_fn = torch.func.vjp(d2, *primals)
    _, transpose = torch.func.vjp(vjp_fn, torch.zeros_like(out))
    return transpose(tangents)[0]


def _second(x, weight, u, ug, v, vg, spec: Spec):
    mean, invstd = moments(x, spec.eps)
    return second_directional(x, weight, mean, invstd, x.numel() // x.shape[1], u, ug, v, vg)


def _require_unsharded(spec: Spec) -> None:
    if spec.comm is not None:
        raise NotImplementedError(
            "third derivatives of numbabn.torch.batch_norm with respect to x or weight are "
            "not available for a batch sharded over a process_group"
        )
