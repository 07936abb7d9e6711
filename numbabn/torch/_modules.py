"""Drop-in BatchNorm layers whose training-mode forward is :func:`numbabn.torch.batch_norm`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._distributed import sync_group
from ._functional import _transformed, batch_norm


class _NumbabnNorm:
    """The forward of torch's ``_BatchNorm`` with numbabn's batch_norm in training mode.

    Mixed in before a torch BatchNorm class, so parameters, buffers, state_dict,
    ``affine``, ``track_running_stats``, ``momentum=None`` (cumulative average) and
    ``num_batches_tracked`` behave as in torch; evaluation with running statistics
    is torch's own code. Inside ``torch.func`` transforms the running statistics and
    ``num_batches_tracked`` are left alone.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def _reduce_group(self) -> Any:
        return self.process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        tracked = self.training and self.track_running_stats
        if tracked and self.num_batches_tracked is not None and not _transformed(input):
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        running_mean = self.running_mean if keep else None
        running_var = self.running_var if keep else None
        if not use_batch:
            return F.batch_norm(
                input, running_mean, running_var, self.weight, self.bias, False, factor, self.eps
            )
        return batch_norm(
            input,
            self.weight,
            self.bias,
            eps=self.eps,
            running_mean=running_mean,
            running_var=running_var,
            momentum=factor,
            process_group=self._reduce_group(),
        )


_DOC = """{name} with numbabn's kernels in training mode.

    A subclass of ``torch.nn.{name}`` with the same arguments, parameters, buffers
    and state_dict. In training mode (or without running statistics) the forward
    is :func:`numbabn.torch.batch_norm`, differentiable to second order and under
    ``torch.func`` transforms; evaluation with running statistics is torch's.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, device, dtype, bias
        As ``torch.nn.{name}``.
    process_group : torch.distributed.ProcessGroup, optional
        Shards the batch over the group's ranks, as ``torch.nn.SyncBatchNorm``.
    """


class BatchNorm1d(_NumbabnNorm, torch.nn.BatchNorm1d):
    __doc__ = _DOC.format(name="BatchNorm1d")


class BatchNorm2d(_NumbabnNorm, torch.nn.BatchNorm2d):
    __doc__ = _DOC.format(name="BatchNorm2d")


class BatchNorm3d(_NumbabnNorm, torch.nn.BatchNorm3d):
    __doc__ = _DOC.format(name="BatchNorm3d")


class SyncBatchNorm(_NumbabnNorm, torch.nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` with numbabn's kernels, on CPU and CUDA.

    Any input of ndim >= 2. In training mode with torch.distributed initialised and
    more than one rank in the group (``process_group``, default the world group),
    the batch statistics and every derivative are those of the batch over all
    ranks; otherwise it is :class:`BatchNorm2d`'s forward, for any ndim.
    """

    __init__ = torch.nn.SyncBatchNorm.__init__  # process_group is its sixth argument

    def _reduce_group(self) -> Any:
        return sync_group(self.process_group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        return super().forward(input)
