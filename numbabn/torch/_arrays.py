"""Plain tensors to numbabn arrays and back, sharing memory, in the memory layout of x.

A CPU tensor becomes a NumPy view (``Tensor.numpy``) and a NumPy result a tensor
(:func:`torch.from_numpy`); a CUDA tensor goes to numbabn as it is (it exposes
``__cuda_array_interface__``) and its device result comes back through
:func:`torch.as_tensor`. A ``channels_last`` batch (N, C, *S) is an (N, *S, C)
C-contiguous array, so it goes to numbabn permuted, with channel axis -1, and
the results are permuted back: nothing is copied and the output keeps the
memory format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Layout:
    """How the tensors of one call with batch ``x`` (N, C, *S) are handed to numbabn.

    Parameters
    ----------
    x : torch.Tensor
        The batch, a plain (not functorch-wrapped) tensor of ndim >= 2.

    Attributes
    ----------
    perm : tuple of int or None
        The permutation that makes x C-contiguous with channels last, or None
        when x goes as it is (C-contiguous, or copied into C order).
    axis : int
        numbabn's channel axis (non-negative) for the permuted array.
    shape : tuple of int
        Shape of the array numbabn sees.
    """

    def __init__(self, x: torch.Tensor) -> None:
        nd = x.ndim
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        if not x.is_contiguous() and nd in formats and x.is_contiguous(memory_format=formats[nd]):
            self.perm: tuple[int, ...] | None = (0, *range(2, nd), 1)
            self.inverse: tuple[int, ...] = (0, nd - 1, *range(1, nd - 1))
            self.axis = nd - 1
        else:
            self.perm, self.inverse, self.axis = None, tuple(range(nd)), 1
        self.shape = tuple(x.shape) if self.perm is None else tuple(x.permute(self.perm).shape)

    def array(self, t: torch.Tensor, lead: bool = False) -> Any:
        """``t`` (shaped like x, or (V, *x.shape) with ``lead``) as a numbabn array."""
        t = detached(t)
        if self.perm is not None:
            t = t.permute(self._with_lead(self.perm, lead))
        return as_array(t.contiguous())

    def tensor(self, a: Any, like: torch.Tensor, lead: bool = False) -> torch.Tensor:
        """A numbabn result in this layout as a tensor shaped like x (or (V, *x.shape))."""
        t = as_tensor(a, like)
        return t if self.perm is None else t.permute(self._with_lead(self.inverse, lead))

    @staticmethod
    def _with_lead(perm: tuple[int, ...], lead: bool) -> tuple[int, ...]:
        return (0, *(p + 1 for p in perm)) if lead else perm


def as_array(t: torch.Tensor) -> Any:
    """A contiguous tensor as an array numbabn accepts, without a copy.

    Parameters
    ----------
    t : torch.Tensor
        A contiguous CPU or CUDA tensor.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        A NumPy view for a CPU tensor; the detached tensor itself for a CUDA one.
    """
    t = detached(t)
    return t if t.is_cuda else t.numpy()


def detached(t: torch.Tensor) -> torch.Tensor:
    """``t.detach()``, or a clear error for the batched tensors of torch's deprecated
    prototype vmap, which never reach a vmap rule (torch.func.vmap does)."""
    if torch._C._functorch.is_legacy_batchedtensor(t):
        raise RuntimeError(
            "numbabn.torch does not run under the deprecated torch._vmap_internals.vmap "
            "(used by gradcheck's check_batched_grad); use torch.func.vmap"
        )
    return t.detach()


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
    return torch.as_tensor(a, device=like.device)  # CUDA: untested here (no GPU)


def readonly(a: Any) -> Any:
    """A read-only view of a NumPy array (numbabn's kernels compile for read-only inputs);
    device arrays pass through."""
    if isinstance(a, np.ndarray):
        a = a.view()
        a.setflags(write=False)
    return a
