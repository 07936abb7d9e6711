"""Swap torch's BatchNorm layers of a model for numbabn's, sharing their tensors."""

from __future__ import annotations

from typing import Any

import torch

from ._modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm

#: torch's layer classes and their numbabn counterparts. Subclasses of torch's
#: layers are left alone: they may override the forward.
_COUNTERPARTS = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
    torch.nn.SyncBatchNorm: SyncBatchNorm,
}


def convert_batchnorm(module: torch.nn.Module, process_group: Any = None) -> torch.nn.Module:
    """Replace every ``torch.nn.BatchNorm{1,2,3}d`` and ``SyncBatchNorm`` by numbabn's.

    As ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: the new layers hold the
    same ``Parameter`` and buffer objects (an optimizer built before the call
    still updates them), the same training flag, and the state_dict keys do not
    change. Subclasses of those torch classes (which may change the forward) and
    ``LazyBatchNorm*`` layers are left as they are.

    Parameters
    ----------
    module : torch.nn.Module
        The model (or a single layer).
    process_group : torch.distributed.ProcessGroup, optional
        Shard every converted layer's batch over this group (SyncBatchNorm). A
        converted ``torch.nn.SyncBatchNorm`` keeps its own group when None.

    Returns
    -------
    torch.nn.Module
        ``module`` with its layers replaced (``module`` itself unless it is a layer).

    Examples
    --------
    >>> import torch, numbabn.torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    >>> net = numbabn.torch.convert_batchnorm(net)
    >>> isinstance(net[1], numbabn.torch.BatchNorm2d)
    True
    """
    converted = module
    counterpart = _COUNTERPARTS.get(type(module))
    if counterpart is not None:
        converted = _counterpart(module, counterpart, process_group)
    for name, child in module.named_children():
        converted.add_module(name, convert_batchnorm(child, process_group))
    return converted


def _counterpart(module, cls: type, process_group: Any) -> torch.nn.Module:
    """A ``cls`` layer holding ``module``'s parameters and buffers."""
    group = process_group if process_group is not None else getattr(module, "process_group", None)
    layer = cls(
        module.num_features,
        module.eps,
        module.momentum,
        module.affine,
        module.track_running_stats,
        device="meta",  # placeholders only: the module's own tensors replace them
        bias=module.bias is not None,
    )
    layer.process_group = group
    for name in ("weight", "bias"):
        if name in module._parameters:
            setattr(layer, name, module._parameters[name])
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(layer, name, getattr(module, name))
    layer.train(module.training)
    if hasattr(module, "qconfig"):
        layer.qconfig = module.qconfig
    return layer
