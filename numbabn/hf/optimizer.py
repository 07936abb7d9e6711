"""Hessian-free optimisation (Martens 2010) of a :class:`Sequential` network."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._namespace import _xp
from .network import Sequential


@dataclass
class CGResult:
    """Iterates of a truncated conjugate-gradient run (those kept for backtracking)."""

    iterates: list[Any]
    iterations: int


def conjugate_gradient(
    matvec: Callable[[Any], Any], b: Any, x0: Any, max_iter: int, tol: float = 5e-4
) -> CGResult:
    """Minimise ``psi(x) = ½ xᵀAx - bᵀx`` by CG from ``x0``.

    Stops after ``max_iter`` iterations, or by Martens' relative-progress rule:
    at iteration i > k with ``k = max(10, i/10)``, when
    ``psi_i < 0`` and ``(psi_i - psi_{i-k}) / psi_i < k * tol``. Keeps the
    iterates at iterations ``ceil(1.3**j)`` and the last one, for backtracking.
    """
    x = x0
    r = b - matvec(x)
    p = r
    rs = float(r @ r)
    psi = [float(-0.5 * (x @ (r + b)))]
    keep = {math.ceil(1.3**j) for j in range(64)}
    iterates, i = [], 0
    for i in range(1, max_iter + 1):
        ap = matvec(p)
        curvature = float(p @ ap)
        if curvature <= 0 or rs == 0:  # negative curvature or converged: stop here
            i -= 1
            break
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = float(r @ r)
        p = r + (rs_new / rs) * p
        rs = rs_new
        psi.append(float(-0.5 * (x @ (r + b))))
        if i in keep:
            iterates.append(x)
        k = max(10, i // 10)
        if i > k and psi[i] < 0 and (psi[i] - psi[i - k]) / psi[i] < k * tol:
            break
    if not iterates or iterates[-1] is not x:
        iterates.append(x)
    return CGResult(iterates=iterates, iterations=i)


@dataclass
class StepInfo:
    """What one Hessian-free step did."""

    loss: float
    damping: float
    rho: float
    cg_iterations: int
    step_size: float
    work: float  # full-batch gradient-evaluation equivalents spent in this step
    extra: dict = field(default_factory=dict)


class HessianFree:
    """Hessian-free optimizer (Martens 2010) for a :class:`Sequential` network.

    Each :meth:`step` solves ``(B + λI) d = -g`` by truncated CG, where ``g`` is
    the gradient on the training batch and ``B`` the curvature (generalised
    Gauss-Newton by default, or the exact Hessian) on a random mini-batch; it
    warm-starts CG from the previous direction, backtracks over the CG
    iterates, adapts λ by the Levenberg-Marquardt rule on the reduction ratio
    ρ, and finishes with a backtracking line search.

    Parameters
    ----------
    net : Sequential
    curvature : {"ggn", "hessian"}
    damping : float
        Initial λ.
    max_cg_iter : int
        CG iterations per step.
    cg_decay : float
        Warm start: CG starts from ``cg_decay`` times the previous direction.
    curvature_batch : int or None
        Mini-batch size for the curvature products (None: the whole batch).
    seed : int
        Seed of the mini-batch choice.
    """

    def __init__(
        self,
        net: Sequential,
        *,
        curvature: str = "ggn",
        damping: float = 1.0,
        max_cg_iter: int = 50,
        cg_decay: float = 0.95,
        curvature_batch: int | None = None,
        seed: int = 0,
    ) -> None:
        if curvature not in ("ggn", "hessian"):
            raise ValueError(f"curvature must be 'ggn' or 'hessian', got {curvature!r}")
        self.net, self.curvature = net, curvature
        self.damping, self.max_cg_iter, self.cg_decay = damping, max_cg_iter, cg_decay
        self.curvature_batch = curvature_batch
        self.rng = np.random.default_rng(seed)
        self._previous = None

    def step(self, theta: Any, X: Any, y: Any) -> tuple[Any, StepInfo]:
        """One Hessian-free step on the batch (X, y); returns the new parameters."""
        net, xp, n = self.net, _xp(X), X.shape[0]
        theta = xp.asarray(theta, dtype=xp.float64)
        loss0 = net.loss(theta, X, y)
        g = net.grad(theta, X, y)
        work = 1.5  # a loss (½) and a gradient (1) on the whole batch
        if self.curvature_batch is not None and self.curvature_batch < n:
            idx = xp.asarray(self.rng.choice(n, self.curvature_batch, replace=False))
            Xc, yc, frac = X[idx], y[idx], self.curvature_batch / n
        else:
            Xc, yc, frac = X, y, 1.0
        operator = net.curvature(theta, Xc, yc, self.curvature)  # forward pass once per step
        products = 0

        def curvature(v):
            nonlocal products
            products += 1
            return operator(v)

        def damped(v):
            return curvature(v) + self.damping * v

        x0 = xp.zeros_like(g) if self._previous is None else self.cg_decay * self._previous
        cg = conjugate_gradient(damped, -g, x0, self.max_cg_iter)
        # backtrack over the kept CG iterates while the loss keeps improving
        best, best_loss = cg.iterates[-1], net.loss(theta + cg.iterates[-1], X, y)
        evaluations = 1
        for d in reversed(cg.iterates[:-1]):
            candidate = net.loss(theta + d, X, y)
            evaluations += 1
            if candidate >= best_loss:
                break
            best, best_loss = d, candidate
        self._previous = cg.iterates[-1]
        # Levenberg-Marquardt: ratio of actual to predicted (undamped model) reduction
        predicted = float(g @ best + 0.5 * best @ curvature(best))
        rho = (best_loss - loss0) / predicted if predicted < 0 else -math.inf
        if rho < 0.25:
            self.damping *= 1.5
        elif rho > 0.75:
            self.damping *= 2.0 / 3.0
        # backtracking line search (Armijo) on the step size
        step_size, slope = 1.0, float(g @ best)
        new_loss = best_loss
        while new_loss > loss0 + 1e-2 * step_size * slope and step_size > 1e-3:
            step_size *= 0.8
            new_loss = net.loss(theta + step_size * best, X, y)
            evaluations += 1
        if new_loss > loss0:  # no progress: keep theta, damp more
            step_size, new_loss = 0.0, loss0
        work += 0.5 * evaluations + products * frac
        info = StepInfo(new_loss, self.damping, rho, cg.iterations, step_size, work)
        return theta + step_size * best, info
