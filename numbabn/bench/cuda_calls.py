"""The cost of a GPU call, piece by piece: kernel launches per call, host time per
call (the wall time of the Python call on an idle GPU, before any
synchronisation: what a training loop pays before the GPU can start) and
device time per call (CUDA events around the call), with the memory-traffic
floor of the operation for scale. Needs CuPy and a GPU: without them
:func:`rows` says why and returns no rows.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from .cases import FLOOR_PASSES, Case, numbabn_call

#: Shapes from a small batch, where the fixed cost dominates, to (32768, 1024).
CASES = [Case((256, 64)), Case((4096, 1024)), Case((32768, 1024)), Case((32, 64, 56, 56)),
         Case((32, 28, 28, 128), -1)]  # fmt: skip

#: The operations; all but batch_stats and forward are given the statistics.
OPERATIONS = ("batch_stats", "forward", "jvp", "vjp", "rvp", "ggnvp", "hvp", "rop_backward")


@contextmanager
def counting_launches():
    """Count the kernel launches of the CUDA backend while the block runs; yields a
    one-element list holding the count."""
    from numbabn._dispatch import cuda_backend

    be = cuda_backend()
    count = [0]
    launch = be._launch

    def counted(*args, **kwargs):
        count[0] += 1
        return launch(*args, **kwargs)

    be._launch = counted
    try:
        yield count
    finally:
        del be._launch  # the class's method again


def host_and_device_us(fn: Callable[[], Any], repeats: int = 30) -> tuple[float, float]:
    """(median host us, median device us) per call of ``fn``: the host time is the
    wall time of the call with the GPU idle before it, the device time the CUDA
    events recorded around it on the current stream."""
    import cupy

    sync = cupy.cuda.runtime.deviceSynchronize
    fn()
    sync()
    host, device = [], []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        sync()
        start.record()
        t0 = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t0) * 1e6)
        end.record()
        end.synchronize()
        device.append(cupy.cuda.get_elapsed_time(start, end) * 1e3)
    return statistics.median(host), statistics.median(device)


def rows(cases=CASES, dtypes=(np.float32,), repeats: int = 30) -> list[dict]:
    """One row per (case, dtype, operation): ``shape``, ``dtype``, ``op``,
    ``launches`` (per call), ``host_us``, ``device_us``, ``floor_us`` and
    ``x_floor`` (device time over floor). Empty, with the reason printed, where
    there is no GPU."""
    from .cuda import device_bandwidth, device_inputs, unavailable

    reason = unavailable()
    if reason:
        print(f"numbabn.bench.cuda_calls: no GPU measurements ({reason})")
        return []
    import numbabn

    out = []
    for case in cases:
        for dtype in dtypes:
            d = device_inputs(case.shape, case.axis, dtype)
            st = numbabn.batch_stats(d["x"], axis=case.axis)
            array_us = d["x"].nbytes / device_bandwidth(d["x"].size, dtype) * 1e6
            for op in OPERATIONS:
                stats = None if op in ("batch_stats", "forward") else st
                fn = numbabn_call(op, d, case.axis, stats)
                fn()  # compiled and planned before counting
                with counting_launches() as count:
                    fn()
                host_us, device_us = host_and_device_us(fn, repeats)
                floor_us = FLOOR_PASSES[op](1) * array_us
                out.append({"shape": case.label, "dtype": np.dtype(dtype).name, "op": op,
                            "launches": count[0], "host_us": host_us, "device_us": device_us,
                            "floor_us": floor_us, "x_floor": device_us / floor_us})  # fmt: skip
    return out


def table(result: list[dict]):
    """The rows as a :class:`numbabn.bench.report.Table`."""
    from .report import Table

    t = Table("GPU calls: launches, host and device time per call (medians)",
              ["shape", "dtype", "op", "launches", "host us", "device us", "floor us",
               "x floor"])  # fmt: skip
    for r in result:
        t.add(r["shape"], r["dtype"], r["op"], r["launches"], f"{r['host_us']:.1f}",
              f"{r['device_us']:.1f}", f"{r['floor_us']:.1f}", f"{r['x_floor']:.2f}")  # fmt: skip
    return t
