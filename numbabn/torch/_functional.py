"""``numbabn.torch.batch_norm``: training-mode BatchNorm of torch tensors by numbabn."""

from __future__ import annotations

import numbers
from typing import Any

import torch

from . import _kernels as k
from ._distributed import ProcessGroupComm
from ._functions import BatchNormFn

_DTYPES = (torch.float32, torch.float64)


def batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    momentum: float = 0.1,
    process_group: Any = None,
) -> torch.Tensor:
    """Training-mode BatchNorm over every axis but 1, differentiable to second order.

    Equals ``torch.nn.functional.batch_norm(x, running_mean, running_var, weight,
    bias, training=True, momentum=momentum, eps=eps)`` in value and in the update
    of the running statistics. Its gradient is numbabn's vjp, and the derivatives
    of that gradient (double backward, forward mode, ``torch.func`` transforms)
    are numbabn's jvp and rop_backward, so no torch BatchNorm code runs.

    Parameters
    ----------
    x : torch.Tensor, (N, C, *S), float32 or float64, CPU or CUDA
        The batch; channel axis 1. A ``channels_last`` batch keeps its memory format.
    weight, bias : torch.Tensor (C,), optional
        Scale and shift (None: ones and zeros), of x's dtype and device.
    eps : float, default 1e-5
        Added to the variance; positive.
    running_mean, running_var : torch.Tensor (C,), optional
        Updated in place as torch does, with the unbiased batch variance:
        ``r = (1 - momentum) * r + momentum * batch_value``. Both or neither.
        Inside ``torch.func`` transforms they are left alone.
    momentum : float, default 0.1
        Weight of the batch statistics in the update. (``momentum=None``, the
        cumulative average, is handled by the layers, as in torch.)
    process_group : torch.distributed.ProcessGroup, optional
        x is this rank's shard of a batch spread over the group's ranks: the
        statistics, and every derivative, are those of the whole batch
        (``torch.nn.SyncBatchNorm``), and the result is this rank's shard of it.

    Returns
    -------
    torch.Tensor, shaped like x

    Raises
    ------
    ValueError
        For fewer than 2 dimensions, one value per channel, eps <= 0, or only one
        of the running statistics.
    TypeError
        For a dtype other than float32 and float64, a non-float momentum.
    RuntimeError
        For parameters or running statistics of the wrong size, dtype or device.
    """
    _check(x, weight, bias, eps, running_mean, running_var, momentum, process_group)
    weight, bias = _flat(weight), _flat(bias)
    comm = None if process_group is None else ProcessGroupComm(process_group, x.device)
    spec = k.Spec(float(eps), comm)
    z, stats = BatchNormFn.apply(x, weight, bias, spec)
    if not _transformed(z, stats):
        count = k.count(stats, x, spec)
        if count <= 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{x.size()} on this rank and {count} over the process group"
            )
        if running_mean is not None:
            _update(running_mean, running_var, stats, momentum, count)
    return z


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter of C elements as a (C,) tensor (torch accepts any shape of C elements)."""
    return t if t is None or t.dim() == 1 else t.reshape(-1)


def _update(running_mean, running_var, stats, momentum: float, count: int) -> None:
    """Torch's update of the running statistics (unbiased variance), in float64."""
    with torch.no_grad():
        unbiased = stats[k.VAR] * (count / (count - 1))
        for buffer, batch in ((running_mean, stats[k.MEAN]), (running_var, unbiased)):
            new = momentum * batch + (1.0 - momentum) * buffer.to(torch.float64)
            buffer.copy_(new.reshape(buffer.shape))


@torch.compiler.disable  # the functorch queries below are opaque to torch.compile
def _transformed(*tensors: torch.Tensor) -> bool:
    """Whether the call runs inside a torch.func transform (its results are wrapped)."""
    if torch._C._are_functorch_transforms_active():
        return True
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def _check(x, weight, bias, eps, running_mean, running_var, momentum, process_group) -> None:
    """torch's errors for bad arguments (same types, same wording where torch has one)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")
    if x.dtype not in _DTYPES:
        raise TypeError(
            f"numbabn.torch.batch_norm supports float32 and float64 tensors, got {x.dtype}"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"numbabn.torch.batch_norm runs on CPU and CUDA, got device {x.device}")
    n_ch = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias)):
        _check_channel_tensor(name, t, x, n_ch)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_channel_tensor(name, t, x, n_ch)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"batch_norm(): momentum must be float, not {type(momentum).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"batch_norm(): eps must be float, not {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if process_group is not None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "a process_group was given but torch.distributed is not initialized "
                "(call torch.distributed.init_process_group first)"
            )
    elif x.numel() // max(n_ch, 1) == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.size()}"
        )


def _check_channel_tensor(name: str, t, x: torch.Tensor, n_ch: int) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.numel() != n_ch:
        raise RuntimeError(f"{name} should contain {n_ch} elements not {t.numel()}")
    if t.dtype != x.dtype:
        raise RuntimeError(
            f"{name} has dtype {t.dtype} but x has dtype {x.dtype}: all inputs must share the "
            "same dtype"
        )
    if t.device != x.device:
        raise RuntimeError(f"{name} is on device {t.device} but x is on device {x.device}")
