"""A torch.distributed process group as a numbabn communicator (SyncBatchNorm)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class ProcessGroupComm:
    """numbabn's ``allreduce_sum`` protocol over a ``torch.distributed`` process group.

    numbabn sums its per-channel partial sums (small float64 host buffers, one
    message per reduction phase) through :meth:`allreduce_sum`; every rank of the
    group must make the same calls in the same order, which the layers' forward and
    backward passes do.

    Attributes
    ----------
    size : int
        Number of ranks in the group.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup
        The group whose ranks hold the shards of the batch.
    device : torch.device
        Where the group's backend wants its tensors: "cpu" for gloo (the host
        buffer is reduced in place), a CUDA device for NCCL (a device copy).
    """

    def __init__(self, group: Any, device: torch.device) -> None:
        import torch.distributed as dist

        self.group = group
        self.device = torch.device(device)
        self.size = dist.get_world_size(group)

    def allreduce_sum(self, buffer: np.ndarray) -> None:
        """Sum a contiguous float64 NumPy array in place over the group's ranks."""
        import torch.distributed as dist

        host = torch.from_numpy(buffer)
        if self.device.type == "cpu":
            dist.all_reduce(host, op=dist.ReduceOp.SUM, group=self.group)
            return
        # A device backend (NCCL) reduces device tensors only; untested here (no GPU).
        on_device = host.to(self.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=self.group)
        host.copy_(on_device.cpu())


def sync_group(process_group: Any) -> Any:
    """The group a SyncBatchNorm layer reduces over, or None when it runs alone.

    As ``torch.nn.SyncBatchNorm``: only when torch.distributed is initialised; the
    layer's own group, else the default (world) group; None for a group of one rank.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None
