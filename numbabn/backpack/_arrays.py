"""Torch tensors to numbabn arrays and back, sharing memory.

CPU tensors become NumPy views (``Tensor.numpy``) and NumPy results become
tensors with :func:`torch.from_numpy`; CUDA tensors expose
``__cuda_array_interface__``, so numbabn takes them as they are and its device
results come back through :func:`torch.as_tensor`. No data is copied either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_array(t: torch.Tensor) -> Any:
    """The data of ``t`` as an array numbabn accepts, without a copy.

    Parameters
    ----------
    t : torch.Tensor
        A CPU or CUDA tensor (gradient tracking is dropped).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        A NumPy view for a CPU tensor; the detached tensor itself for a CUDA one.
    """
    t = t.detach()
    return t if t.is_cuda else t.numpy()


def as_tensor(a: Any, like: torch.Tensor) -> torch.Tensor:
    """A numbabn result as a tensor on ``like``'s device, without a copy.

    Parameters
    ----------
    a : numpy.ndarray or CUDA array
        The result of a numbabn function.
    like : torch.Tensor
        A tensor on the device the result belongs to.

    Returns
    -------
    torch.Tensor
        Sharing ``a``'s memory, except for a read-only NumPy array (copied).
    """
    if isinstance(a, np.ndarray):
        # numbabn's (C,) statistics are read-only, and torch wants writeable memory.
        return torch.from_numpy(a if a.flags.writeable else a.copy())
    return torch.as_tensor(a, device=like.device)
