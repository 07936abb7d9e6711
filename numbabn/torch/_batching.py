"""vmap rules of the autograd leaves.

A leaf call whose shared inputs (x, weight, statistics) are batched runs once
per slice. When only direction arguments are batched, the vmapped dimension
becomes numbabn's leading direction axis V, so one kernel call serves the whole
batch; if some directions already carry such an axis (a vmap under another
vmap), the two axes are merged into one of size B*V and split again afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def each_slice(apply: Callable, batch_size: int, in_dims: Sequence, args: Sequence):
    """Call ``apply`` on every slice of the vmapped dimension and stack the outputs.

    Returns
    -------
    (outputs, out_dims) as a vmap staticmethod returns them.
    """
    outs = []
    for b in range(batch_size):
        sliced = [a if d is None else a.select(d, b) for a, d in zip(args, in_dims, strict=True)]
        outs.append(_as_tuple(apply(*sliced)))
    return _stacked(tuple(torch.stack(parts) for parts in zip(*outs, strict=True)))


def fold(
    apply: Callable,
    info: Any,
    in_dims: Sequence,
    args: Sequence,
    x_index: int,
    directions: dict[int, bool],
):
    """The vmap rule of a leaf whose ``directions`` (argument index -> x-shaped?)
    take a leading direction axis; every other tensor argument is shared.

    Returns
    -------
    (outputs, out_dims) as a vmap staticmethod returns them.
    """
    shared = [i for i, d in enumerate(in_dims) if d is not None and i not in directions]
    if shared:
        return each_slice(apply, info.batch_size, in_dims, args)
    ndim = args[x_index].ndim
    base = {i: ndim if field else 1 for i, field in directions.items()}
    args = list(args)
    for i in directions:
        if in_dims[i] is not None:
            args[i] = args[i].movedim(in_dims[i], 0)
    leads = {
        args[i].shape[int(in_dims[i] is not None)]
        for i in directions
        if args[i] is not None and args[i].ndim == base[i] + 1 + int(in_dims[i] is not None)
    }
    if not leads:
        return _stacked(_as_tuple(apply(*args)))
    (n_dir,) = leads
    size = info.batch_size
    for i in directions:
        a = args[i]
        if a is None:
            continue
        batched, has_lead = in_dims[i] is not None, a.ndim == base[i] + 1 + (in_dims[i] is not None)
        if batched and not has_lead:
            a = a.unsqueeze(1).expand(size, n_dir, *a.shape[1:])
        elif not batched and has_lead:
            a = a.unsqueeze(0).expand(size, *a.shape)
        elif not batched:
            continue  # shared by every direction: the kernels broadcast it
        args[i] = a.reshape(size * n_dir, *a.shape[2:])
    outs = _as_tuple(apply(*args))
    return _stacked(tuple(o.reshape(size, n_dir, *o.shape[1:]) for o in outs))


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _stacked(outs: tuple):
    """``(outputs, out_dims)`` for outputs batched along dimension 0."""
    if len(outs) == 1:
        return outs[0], 0
    return outs, (0,) * len(outs)
