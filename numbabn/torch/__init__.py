"""numbabn from PyTorch: training-mode BatchNorm whose derivatives are numbabn's kernels.

* :func:`batch_norm` — ``torch.nn.functional.batch_norm(..., training=True)``
  with numbabn's forward, vjp, jvp and rop_backward behind every derivative:
  ``backward``, double backward, forward mode and the ``torch.func`` transforms
  (grad, jvp, vjp, jacrev, jacfwd, hessian, vmap), to second order;
* :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d`,
  :class:`SyncBatchNorm` — subclasses of torch's layers that use it in training mode;
* :func:`convert_batchnorm` — swap the BatchNorm layers of a model for these;
* :class:`ProcessGroupComm` — a torch.distributed group as a numbabn communicator.

Importing this module imports torch; ``import numbabn`` alone does not. See
docs/pytorch.md.
"""

from ._convert import convert_batchnorm
from ._distributed import ProcessGroupComm
from ._functional import batch_norm
from ._modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm

__all__ = [
    "batch_norm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "convert_batchnorm",
    "ProcessGroupComm",
]
