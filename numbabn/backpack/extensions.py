"""BackPACK module extensions of BatchNorm for ``HMP`` and ``GGNMP``, any input dimension.

Both backpropagate a curvature-matrix product ``mat -> C_z mat`` from the
module output to its input and attach to ``weight`` and ``bias`` the blocks
``J_pᵀ C_z J_p``. z is linear in gamma and beta, so the parameter blocks have
no residual term in either extension (as in BackPACK's ``BatchNorm1d`` ones).
"""

from __future__ import annotations

from collections.abc import Callable

from backpack.extensions.backprop_extension import BackpropExtension
from backpack.extensions.curvmatprod.ggnmp.ggnmpbase import GGNMPBase
from backpack.extensions.curvmatprod.hmp.hmpbase import HMPBase
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .derivatives import NumbaBatchNormDerivatives

MatProd = Callable[[Tensor], Tensor]
Grads = tuple[Tensor, ...]


class _ParameterBlocks:
    """The ``weight`` and ``bias`` products ``mat -> J_pᵀ C_z J_p mat``.

    Parameters
    ----------
    derivatives : NumbaBatchNormDerivatives, optional
        Shared instances share their cache of batch statistics.
    """

    derivatives: NumbaBatchNormDerivatives

    def __init__(self, derivatives: NumbaBatchNormDerivatives | None = None) -> None:
        super().__init__(
            derivatives=derivatives or NumbaBatchNormDerivatives(), params=["weight", "bias"]
        )

    def weight(
        self,
        ext: BackpropExtension,
        module: _BatchNorm,
        g_inp: Grads,
        g_out: Grads,
        backproped: MatProd,
    ) -> MatProd:
        """Product with the weight block; ``mat`` has shape [V, C]."""
        return self._block("weight", module, g_inp, g_out, backproped)

    def bias(
        self,
        ext: BackpropExtension,
        module: _BatchNorm,
        g_inp: Grads,
        g_out: Grads,
        backproped: MatProd,
    ) -> MatProd:
        """Product with the bias block; ``mat`` has shape [V, C]."""
        return self._block("bias", module, g_inp, g_out, backproped)

    def _block(
        self, name: str, module: _BatchNorm, g_inp: Grads, g_out: Grads, c_out: MatProd
    ) -> MatProd:
        jac_mat_prod = getattr(self.derivatives, f"{name}_jac_mat_prod")

        def block_mat_prod(mat: Tensor) -> Tensor:
            result = c_out(jac_mat_prod(module, g_inp, g_out, mat))
            return self.derivatives.param_mjp(name, module, g_inp, g_out, result)

        return block_mat_prod


class HMPBatchNormNd(_ParameterBlocks, HMPBase):
    """Block-diagonal Hessian products through BatchNorm1d/2d/3d.

    The input step is ``mat -> Jᵀ H_z J mat + R(dz) mat``, the residual term
    fused into the transposed-Jacobian product (one numbabn call).
    """

    def backpropagate(
        self,
        ext: BackpropExtension,
        module: _BatchNorm,
        g_inp: Grads,
        g_out: Grads,
        backproped: MatProd,
    ) -> MatProd:
        """The input Hessian product ``mat -> H_x mat``, given ``backproped = H_z``."""
        h_out_mat_prod = backproped
        derivatives = self.derivatives

        def h_in_mat_prod(mat: Tensor) -> Tensor:
            out_mat = h_out_mat_prod(derivatives.jac_mat_prod(module, g_inp, g_out, mat))
            return derivatives.jac_t_mat_prod_plus_residual(module, g_inp, g_out, out_mat, mat)

        return h_in_mat_prod


class GGNMPBatchNormNd(_ParameterBlocks, GGNMPBase):
    """Block-diagonal GGN products through BatchNorm1d/2d/3d: ``mat -> Jᵀ G_z J mat``."""
