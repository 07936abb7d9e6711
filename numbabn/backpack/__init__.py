"""BackPACK's Hessian- and GGN-matrix products through BatchNorm, on numbabn's kernels.

BackPACK 1.7.1 multiplies with the block-diagonal Hessian (``HMP``) and the
generalised Gauss-Newton matrix (``GGNMP``) through ``BatchNorm1d`` on 2-D input
only. :func:`support_batchnorm` registers module extensions for
``torch.nn.BatchNorm1d/2d/3d`` (and ``numbabn.torch.BatchNorm1d/2d/3d`` when that
module is importable) for any input dimension, whose Jacobian and residual
products are numbabn's closed forms, several directions per kernel call.

Examples
--------
>>> from backpack import backpack, extend
>>> from backpack.extensions import HMP
>>> from numbabn.backpack import support_batchnorm
>>> # model, lossfunc = extend(model), extend(lossfunc)
>>> # with backpack(support_batchnorm(HMP())):
>>> #     lossfunc(model(X), y).backward()
>>> # for p in model.parameters(): p.hmp(mat)  # mat: [V, *p.shape]
"""

try:
    import backpack as _backpack  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("numbabn.backpack needs BackPACK: pip install 'numbabn[backpack]'") from err

from .derivatives import NumbaBatchNormDerivatives
from .extensions import GGNMPBatchNormNd, HMPBatchNormNd
from .register import batchnorm_classes, support_batchnorm

__all__ = [
    "support_batchnorm",
    "batchnorm_classes",
    "NumbaBatchNormDerivatives",
    "HMPBatchNormNd",
    "GGNMPBatchNormNd",
]
