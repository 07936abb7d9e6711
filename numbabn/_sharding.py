"""Batches sharded across processes: the sums of every reduction phase are
summed over a communicator, so each rank's result equals the unsharded one.

A communicator is either

* an mpi4py communicator (anything with ``Allreduce``): numbabn calls
  ``comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)``; or
* any object with a method ``allreduce_sum(buffer) -> None`` that sums a
  contiguous float64 NumPy array in place over all ranks, e.g. a few lines
  around NCCL (CuPy's or torch.distributed's).

Buffers are host NumPy arrays of O(C) values, one message per reduction phase;
sums of CUDA calls are copied to the host and back (CUDA-aware MPI could skip
that copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kernels import formulas as f


def check_comm(comm: Any) -> Any:
    """``comm`` if it is None or usable as a communicator; TypeError otherwise."""
    if comm is None or hasattr(comm, "Allreduce") or hasattr(comm, "allreduce_sum"):
        return comm
    raise TypeError(
        "comm must be an mpi4py communicator or an object with an allreduce_sum(buffer) "
        f"method, got {type(comm).__name__}"
    )


def allreduce_sum(comm: Any, buffer: np.ndarray) -> None:
    """Sum a contiguous float64 host array in place over the ranks of ``comm``."""
    if hasattr(comm, "allreduce_sum"):
        comm.allreduce_sum(buffer)
        return
    from mpi4py import MPI

    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)


def reduce_stats_pass(comm: Any, be, sums):
    """Sum the (2, C) sums of a statistics pass over ranks (one message of 2C values)."""
    host = np.array(be.to_host(sums), dtype=np.float64)
    allreduce_sum(comm, host.reshape(-1))
    return be.from_host(host)


def global_mean(comm: Any, be, sums, count: int):
    """The mean over all ranks from this rank's (2, C) sums about zero and element
    count (one message of C + 1 values). Returns ``(mean (C,), global count)``."""
    buffer = np.append(np.asarray(be.to_host(sums), dtype=np.float64)[0], float(count))
    allreduce_sum(comm, buffer)
    total = int(round(buffer[-1]))
    return be.from_host(buffer[:-1] / total), total


def reduce_moment_sums(comm: Any, be, sums, present: dict[str, bool]):
    """Sum the (V, N_SUMS, C) moment sums over ranks, sending only the filled
    slots: each direction-independent slot once, each other slot per direction."""
    once, per_direction = f.filled_sum_slots(**present)
    host = np.array(be.to_host(sums), dtype=np.float64)
    buffer = np.concatenate([host[0, once].ravel(), host[:, per_direction].ravel()])
    allreduce_sum(comm, buffer)
    n_dir, _, n_ch = host.shape
    n_once = len(once) * n_ch
    host[:, once] = buffer[:n_once].reshape(len(once), n_ch)
    host[:, per_direction] = buffer[n_once:].reshape(n_dir, len(per_direction), n_ch)
    return be.from_host(host)
