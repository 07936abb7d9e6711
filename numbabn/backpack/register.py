"""Register numbabn's BatchNorm extensions on a BackPACK ``HMP`` or ``GGNMP`` instance."""

from __future__ import annotations

import importlib
from typing import TypeVar

from backpack.extensions import GGNMP, HMP
from torch import nn

from .derivatives import NumbaBatchNormDerivatives
from .extensions import GGNMPBatchNormNd, HMPBatchNormNd

_TORCH_CLASSES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NAMES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")

Extension = TypeVar("Extension", HMP, GGNMP)


def batchnorm_classes() -> tuple[type[nn.Module], ...]:
    """The module classes :func:`support_batchnorm` registers.

    Returns
    -------
    tuple of type
        ``torch.nn.BatchNorm1d/2d/3d``, then those of ``numbabn.torch`` that
        exist and subclass them (BackPACK looks extensions up by exact class).
    """
    classes = list(_TORCH_CLASSES)
    try:
        # Imported here: numbabn.torch is optional, and a missing one must not break this.
        numbabn_torch = importlib.import_module("numbabn.torch")
    except ImportError:
        return tuple(classes)
    for name in _NAMES:
        cls = getattr(numbabn_torch, name, None)
        if isinstance(cls, type) and issubclass(cls, _TORCH_CLASSES) and cls not in classes:
            classes.append(cls)
    return tuple(classes)


def support_batchnorm(extension: Extension) -> Extension:
    """Make a BackPACK ``HMP`` or ``GGNMP`` extension handle BatchNorm1d/2d/3d.

    Registers (overwriting BackPACK's own ``BatchNorm1d`` entry) module
    extensions whose Jacobian and residual products are numbabn's, for any
    input dimension, in training and evaluation mode, with or without
    ``affine`` and running statistics.

    Parameters
    ----------
    extension : backpack.extensions.HMP or backpack.extensions.GGNMP
        The instance to extend; it is modified in place.

    Returns
    -------
    The same ``extension``, so it can go straight into ``backpack(...)``.

    Raises
    ------
    TypeError
        For any other extension (``PCHMP`` included: it has no BatchNorm rule).

    Examples
    --------
    >>> from backpack import backpack
    >>> from backpack.extensions import HMP
    >>> ext = support_batchnorm(HMP())
    >>> # with backpack(ext): loss.backward()
    """
    if isinstance(extension, HMP):
        module_extension = HMPBatchNormNd(NumbaBatchNormDerivatives())
    elif isinstance(extension, GGNMP):
        module_extension = GGNMPBatchNormNd(NumbaBatchNormDerivatives())
    else:
        raise TypeError(
            f"support_batchnorm takes a BackPACK HMP or GGNMP instance, "
            f"got {type(extension).__name__}"
        )
    for cls in batchnorm_classes():
        extension.set_module_extension(cls, module_extension, overwrite=True)
    return extension
