"""An exact HVP of a whole BatchNorm network: numbabn.hf against PyTorch."""

from __future__ import annotations

import functools

import numpy as np


def network_hvp_calls(
    batch: int = 1024, width: int = 256, seed: int = 0, fixed_point=False, device: str = "cpu"
):
    """(numbabn call, torch call or None) of one exact network HVP on the same net and batch.

    ``device="cuda"`` runs both on the GPU: numbabn.hf on CuPy arrays, torch on CUDA.

    With ``fixed_point``, both reuse the forward pass and gradient, as the
    conjugate gradient of Hessian-free training can: numbabn through
    ``net.curvature``, torch by keeping the graph of the gradient
    (``retain_graph=True``).
    """
    from ..hf import BatchNorm, Linear, Sequential, Tanh

    layers = [Linear(64, width), BatchNorm(width), Tanh(), Linear(width, width),
              BatchNorm(width), Tanh(), Linear(width, 10)]  # fmt: skip
    net = Sequential(layers)
    rng = np.random.default_rng(seed)
    theta, v = net.init(seed), rng.standard_normal(net.size)
    X, y = rng.standard_normal((batch, 64)), rng.integers(0, 10, batch)
    if device == "cuda":
        import cupy

        theta, v, X, y = (cupy.asarray(a) for a in (theta, v, X, y))
    ours = lambda: net.hvp(theta, X, y, v)  # noqa: E731
    if fixed_point:
        ours = functools.partial(net.curvature(theta, X, y, kind="hessian"), v)
    try:
        import torch
    except ImportError:
        return ours, None
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.BatchNorm1d(width), torch.nn.Tanh(),
        torch.nn.Linear(width, width), torch.nn.BatchNorm1d(width), torch.nn.Tanh(),
        torch.nn.Linear(width, 10),
    ).double().to(device)  # fmt: skip
    params = list(model.parameters())
    tX, ty, tv, ttheta = (torch.as_tensor(a, device=device) for a in (X, y, v, theta))
    torch.nn.utils.vector_to_parameters(ttheta, params)

    def gradient():
        loss = torch.nn.functional.cross_entropy(model(tX), ty)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return torch.cat([g.reshape(-1) for g in grads])

    def theirs(flat=None):
        flat = gradient() if flat is None else flat
        hvp = torch.autograd.grad(flat @ tv, params, retain_graph=fixed_point)
        return torch.cat([h.reshape(-1) for h in hvp])

    return ours, (functools.partial(theirs, gradient()) if fixed_point else theirs)
