"""What a user would otherwise run: rvp and hvp (statistics computed inside the
call) with the NumPy closed form, autograd, PyTorch double backward and JAX jit.

Each peer maker takes ``(op, inputs, axis)`` and returns a zero-argument call;
``op`` is ``"rvp"`` (the Hessian of ``sum(dz * z)``) or ``"hvp"`` (plus
``0.5 * sum(hz * (z - z0)**2)``, whose output curvature is ``hz``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import closed_form

EPS = 1e-5


def batchnorm_loss(xp: Any, op: str, d: dict, axis: int) -> Callable[[Any], Any]:
    """The loss whose Hessian times u the peers compute, written once for any
    NumPy-like namespace ``xp`` (``autograd.numpy``, ``jax.numpy``)."""
    x, gamma, dz, hz = (xp.asarray(d[k]) for k in ("x", "gamma", "dz", "hz"))
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1
    gamma = gamma.reshape(shape)

    def z(x_):
        mean = xp.mean(x_, axis=axes, keepdims=True)
        var = xp.mean((x_ - mean) ** 2, axis=axes, keepdims=True)
        return gamma * (x_ - mean) / xp.sqrt(var + EPS)

    z0 = z(x)

    def loss(x_):
        out = z(x_)
        value = xp.sum(dz * out)
        return value if op == "rvp" else value + 0.5 * xp.sum(hz * (out - z0) ** 2)

    return loss


def numpy_peer(op: str, d: dict, axis: int) -> Callable[[], Any]:
    """The vectorised closed form (:mod:`numbabn.bench.closed_form`)."""
    x, g, dz, u, hz = d["x"], d["gamma"], d["dz"], d["u"], d["hz"]
    if op == "rvp":
        return lambda: closed_form.rvp(x, g, dz, u, axis=axis)
    return lambda: closed_form.hvp(x, g, dz, u, hz, axis=axis)


def autograd_peer(op: str, d: dict, axis: int) -> Callable[[], Any]:
    """Reverse over reverse with the autograd package."""
    import autograd.numpy as anp
    from autograd import grad

    loss = batchnorm_loss(anp, op, d, axis)
    x, u = d["x"], d["u"]
    return lambda: grad(lambda x_: anp.sum(grad(loss)(x_) * u))(x)


def torch_peer(op: str, d: dict, axis: int, device: str = "cpu") -> Callable[[], Any]:
    """PyTorch double backward through its own ``F.batch_norm``."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in d.items()}
    move = axis % d["x"].ndim != 1  # F.batch_norm wants channels on axis 1

    def z(x_):
        x1 = x_.movedim(axis, 1) if move else x_
        out = F.batch_norm(x1, None, None, t["gamma"], None, training=True, eps=EPS)
        return out.movedim(1, axis) if move else out

    z0 = z(t["x"]).detach()

    def run():
        x_ = t["x"].detach().requires_grad_(True)
        out = z(x_)
        loss = (t["dz"] * out).sum()
        if op == "hvp":
            loss = loss + 0.5 * (t["hz"] * (out - z0) ** 2).sum()
        (g,) = torch.autograd.grad(loss, x_, create_graph=True)
        (h,) = torch.autograd.grad(g, x_, grad_outputs=t["u"])
        return h

    return run


def jax_peer(op: str, d: dict, axis: int) -> Callable[[], Any]:
    """Forward over reverse, jit-compiled, with JAX (float64)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    loss = batchnorm_loss(jnp, op, d, axis)
    x, u = jnp.asarray(d["x"]), jnp.asarray(d["u"])
    hvp_fn = jax.jit(lambda x_, u_: jax.jvp(jax.grad(loss), (x_,), (u_,))[1])
    return lambda: hvp_fn(x, u).block_until_ready()


PEERS = {"numpy": numpy_peer, "autograd": autograd_peer, "torch": torch_peer, "jax": jax_peer}
