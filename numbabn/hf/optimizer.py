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
        net, xp = self.net, _xp(X)
        theta = xp.asarray(theta, dtype=xp.float64)
        loss0, g = net.loss(theta, X, y), net.grad(theta, X, y)
        curvature, batch_fraction = self._curvature_on_a_mini_batch(theta, X, y)
        cg = self._solve_damped_system(curvature, g)
        best, best_loss, evaluations = self._backtrack_over_iterates(theta, X, y, cg.iterates)
        rho = self._reduction_ratio(curvature, g, best, best_loss - loss0)
        self._adapt_damping(rho)
        step_size, new_loss, searched = self._line_search(theta, X, y, g, best, loss0, best_loss)
        work = 1.5  # a loss (1/2) and a gradient (1) on the whole batch
        work += 0.5 * (evaluations + searched) + curvature.products * batch_fraction
        info = StepInfo(new_loss, self.damping, rho, cg.iterations, step_size, work)
        return theta + step_size * best, info

    def _curvature_on_a_mini_batch(self, theta, X, y) -> tuple[_CountedProducts, float]:
        """The curvature operator on a random mini-batch (the forward pass once per
        step), counting its products, and the fraction of the batch it sees."""
        xp, n = _xp(X), X.shape[0]
        if self.curvature_batch is not None and self.curvature_batch < n:
            idx = xp.asarray(self.rng.choice(n, self.curvature_batch, replace=False))
            Xc, yc, fraction = X[idx], y[idx], self.curvature_batch / n
        else:
            Xc, yc, fraction = X, y, 1.0
        return _CountedProducts(self.net.curvature(theta, Xc, yc, self.curvature)), fraction

    def _solve_damped_system(self, curvature: _CountedProducts, g: Any) -> CGResult:
        """Truncated CG on ``(B + λI) d = -g``, warm-started from the last direction."""
        xp = _xp(g)
        x0 = xp.zeros_like(g) if self._previous is None else self.cg_decay * self._previous
        cg = conjugate_gradient(lambda v: curvature(v) + self.damping * v, -g, x0,
                                self.max_cg_iter)  # fmt: skip
        self._previous = cg.iterates[-1]
        return cg

    def _backtrack_over_iterates(self, theta, X, y, iterates) -> tuple[Any, float, int]:
        """From the last CG iterate back, while the loss keeps improving: the best
        direction, its loss and the number of loss evaluations."""
        net = self.net
        best, best_loss = iterates[-1], net.loss(theta + iterates[-1], X, y)
        evaluations = 1
        for d in reversed(iterates[:-1]):
            candidate = net.loss(theta + d, X, y)
            evaluations += 1
            if candidate >= best_loss:
                break
            best, best_loss = d, candidate
        return best, best_loss, evaluations

    @staticmethod
    def _reduction_ratio(curvature, g, d, actual: float) -> float:
        """ρ: the actual loss reduction over the one the undamped quadratic model predicts."""
        predicted = float(g @ d + 0.5 * d @ curvature(d))
        return actual / predicted if predicted < 0 else -math.inf

    def _adapt_damping(self, rho: float) -> None:
        """Levenberg-Marquardt: more damping when the model overpromised, less when it held."""
        if rho < 0.25:
            self.damping *= 1.5
        elif rho > 0.75:
            self.damping *= 2.0 / 3.0

    def _line_search(self, theta, X, y, g, d, loss0, loss_at_d) -> tuple[float, float, int]:
        """Backtracking (Armijo) on the step size along ``d``: the step size, the new
        loss and the loss evaluations; a step of 0 when nothing improves on ``loss0``."""
        step_size, slope, new_loss, evaluations = 1.0, float(g @ d), loss_at_d, 0
        while new_loss > loss0 + 1e-2 * step_size * slope and step_size > 1e-3:
            step_size *= 0.8
            new_loss = self.net.loss(theta + step_size * d, X, y)
            evaluations += 1
        if new_loss > loss0:  # no progress: keep theta (the damping has grown)
            return 0.0, loss0, evaluations
        return step_size, new_loss, evaluations


class _CountedProducts:
    """A curvature operator that counts its products (the work of a step)."""

    def __init__(self, operator: Callable[[Any], Any]) -> None:
        self.operator, self.products = operator, 0

    def __call__(self, v: Any) -> Any:
        self.products += 1
        return self.operator(v)
