"""BackPACK's BatchNorm derivatives with numbabn's closed forms, for N-d input.

With batch statistics (training mode, or no running statistics) the layer is
``z = gamma * xhat + beta`` with ``xhat`` normalised by the batch's own mean and
variance; its input Jacobian ``J = gamma * P`` is symmetric and its residual
``R(dz) = sum_i dz_i d2 z_i / dx dx`` is numbabn's :func:`numbabn.rvp`
(docs/design.md §2-3). With running statistics (evaluation mode) the layer is the
affine map ``z = gamma * (x - running_mean) / sqrt(running_var + eps) + beta``:
a diagonal Jacobian and no residual.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from backpack.core.derivatives.batchnorm_nd import BatchNormNdDerivatives
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

import numbabn
from numbabn.stats import BatchStats

from ..torch._arrays import as_array, as_tensor

#: The channel axis of every torch BatchNorm input.
CHANNEL_AXIS = 1


def uses_batch_stats(module: _BatchNorm) -> bool:
    """Whether ``module`` normalises with the statistics of its current batch.

    Parameters
    ----------
    module : torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d

    Returns
    -------
    bool
        True in training mode, and in evaluation mode without running
        statistics (``track_running_stats=False``), as in PyTorch's forward.
    """
    return module.training or (module.running_mean is None and module.running_var is None)


@dataclass(frozen=True)
class _CachedStats:
    """Statistics of one module input, valid while that tensor lives unchanged."""

    x_ref: weakref.ref
    version: int
    eps: float
    stats: BatchStats

    def belongs_to(self, x: Tensor, eps: float) -> bool:
        return self.x_ref() is x and self.version == x._version and self.eps == eps


class NumbaBatchNormDerivatives(BatchNormNdDerivatives):
    """Derivatives of ``torch.nn.BatchNorm1d/2d/3d`` on numbabn's kernels.

    Every product takes BackPACK's leading V axis of directions as numbabn's
    direction axis, so x and the output gradient are read once per call
    whatever V. The batch statistics are computed once per module input and
    reused by every product until the input changes. Unlike BackPACK's own
    class it accepts ``affine=False`` (gamma = 1), ``track_running_stats=False``
    and any input dimension.
    """

    def __init__(self) -> None:
        super().__init__()
        # Per module, only (C,) statistics and a weak reference: no batch-sized memory is held.
        self._stats: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _check_parameters(self, module: _BatchNorm) -> None:
        """Accept every configuration (BackPACK's class refuses ``affine=False``)."""

    def hessian_is_zero(self, module: _BatchNorm) -> bool:
        """Whether the layer is affine in its input: it normalises with running statistics."""
        return not uses_batch_stats(module)

    # --- first order --------------------------------------------------------------
    def _jac_mat_prod(
        self, module: _BatchNorm, g_inp: tuple[Tensor], g_out: tuple[Tensor], mat: Tensor
    ) -> Tensor:
        if not uses_batch_stats(module):
            return self._running_scale(module, mat)
        x, stats = self._input_and_stats(module)
        res = numbabn.jvp(x, self._gamma(module), as_array(mat), stats=stats)
        return as_tensor(res, mat)

    def _jac_t_mat_prod(
        self,
        module: _BatchNorm,
        g_inp: tuple[Tensor],
        g_out: tuple[Tensor],
        mat: Tensor,
        subsampling: list[int] | None = None,
    ) -> Tensor:
        if not uses_batch_stats(module):
            return self._running_scale(module, mat)  # diagonal: rows of mat match rows of x
        if subsampling is not None:
            raise NotImplementedError("BatchNorm VJP sub-sampling is not defined in train mode.")
        x, stats = self._input_and_stats(module)
        dx, _, _ = numbabn.vjp(x, self._gamma(module), as_array(mat), stats=stats)
        return as_tensor(dx, mat)

    def _get_normalized_input_and_var(self, module: _BatchNorm) -> tuple[Tensor, Tensor]:
        """``(xhat, var)`` from numbabn's batch statistics, or from the running ones.

        BackPACK's weight Jacobians (``xhat`` times a per-channel matrix, and
        its transpose, a reduction against ``xhat``) use this; they need no
        projection, so they stay torch broadcasts and einsums.
        """
        x = module.input0.detach()
        shape = _channel_shape(x.dim(), 0)
        if uses_batch_stats(module):
            _, stats = self._input_and_stats(module)
            mean, invstd, var = (
                as_tensor(a, x).to(x.dtype) for a in (stats.mean, stats.invstd, stats.var)
            )
            return (x - mean.view(shape)) * invstd.view(shape), var
        var = module.running_var
        return (x - module.running_mean.view(shape)) * (var.view(shape) + module.eps).rsqrt(), var

    # --- second order -------------------------------------------------------------
    def _residual_mat_prod(
        self, module: _BatchNorm, g_inp: tuple[Tensor], g_out: tuple[Tensor], mat: Tensor
    ) -> Tensor:
        """``R(dz) mat`` for each of mat's V directions, with dz = ``g_out[0]``.

        Zero for running statistics (an affine map has no second derivative).
        """
        if not uses_batch_stats(module):
            return torch.zeros_like(mat)
        x, stats = self._input_and_stats(module)
        dz = as_array(g_out[0])
        res = numbabn.rvp(x, self._gamma(module), dz, as_array(mat), stats=stats)
        return as_tensor(res, mat)

    def jac_t_mat_prod_plus_residual(
        self,
        module: _BatchNorm,
        g_inp: tuple[Tensor],
        g_out: tuple[Tensor],
        out_mat: Tensor,
        mat: Tensor,
    ) -> Tensor:
        """``Jᵀ out_mat + R(dz) mat``: the input-Hessian backpropagation step.

        One numbabn call (:func:`numbabn.rop_backward`) forms both terms from
        one reduction pass and one apply pass, instead of a VJP, a residual
        product and their sum.

        Parameters
        ----------
        module : torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d
            The module, with BackPACK's stored ``input0``.
        g_inp, g_out : tuple of Tensor
            Gradients w.r.t. the module's input and output (``dz = g_out[0]``).
        out_mat : Tensor, shape [V, *output.shape]
            The output curvature applied to ``J mat``.
        mat : Tensor, shape [V, *input0.shape]
            The directions.

        Returns
        -------
        Tensor, shape [V, *input0.shape]
        """
        if not uses_batch_stats(module):
            return self._running_scale(module, out_mat)
        x, stats = self._input_and_stats(module)
        dz, w, u = as_array(g_out[0]), as_array(out_mat), as_array(mat)
        dx, _, _ = numbabn.rop_backward(x, self._gamma(module), dz, w, u, stats=stats)
        return as_tensor(dx, mat)

    # --- helpers ------------------------------------------------------------------
    def _input_and_stats(self, module: _BatchNorm) -> tuple[Any, BatchStats]:
        """``module.input0`` as a numbabn array, and its statistics (computed once per input)."""
        x = module.input0
        xa = as_array(x)
        cached = self._stats.get(module)
        if cached is None or not cached.belongs_to(x, module.eps):
            stats = numbabn.batch_stats(xa, eps=module.eps, axis=CHANNEL_AXIS)
            cached = _CachedStats(weakref.ref(x), x._version, module.eps, stats)
            self._stats[module] = cached
        return xa, cached.stats

    @staticmethod
    def _gamma(module: _BatchNorm) -> Any:
        """The scale as a numbabn array: the weight, or ones when ``affine=False``."""
        if module.weight is not None:
            return as_array(module.weight)
        return as_array(_per_channel(module.input0, 1.0))

    @staticmethod
    def _running_scale(module: _BatchNorm, mat: Tensor) -> Tensor:
        """``mat`` times the diagonal Jacobian ``gamma / sqrt(running_var + eps)``."""
        scale = (module.running_var + module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach()
        return mat * scale.view(_channel_shape(mat.dim(), 1))


def _per_channel(x: Tensor, value: float) -> Tensor:
    """A (C,) tensor filled with ``value``, of x's dtype and device."""
    return x.new_full((x.shape[CHANNEL_AXIS],), value)


def _channel_shape(ndim: int, leading: int) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector against an input with ``leading`` extra axes."""
    shape = [1] * ndim
    shape[leading + CHANNEL_AXIS] = -1
    return tuple(shape)
