"""The fixed cost of a call: microseconds per call on a tiny batch, where the
kernels take next to nothing and what is measured is the Python around them
(checks, dispatch, layout, result wrapping), with PyTorch's ``F.batch_norm``
on the same batch for reference.

Each figure is the time per call of a loop of ``number`` calls, over
``rounds`` rounds: the minimum (the machine's best) and the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .cases import make_inputs, numbabn_call

#: The operations timed with statistics given (batch_stats and forward make them).
OPERATIONS = ("batch_stats", "forward", "jvp", "vjp", "rvp", "ggnvp", "hvp", "rop_backward")


def per_call_us(fn: Callable[[], Any], number: int = 2000, rounds: int = 7) -> tuple[float, float]:
    """(min, median) over ``rounds`` of the microseconds per call of ``number`` calls."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number * 1e6)
    return min(times), statistics.median(times)


def rows(
    shape: tuple[int, ...] = (4, 3, 2),
    dtype: Any = np.float64,
    number: int = 2000,
    rounds: int = 7,
    torch_reference: bool = True,
) -> list[dict]:
    """One row per operation: ``operation``, ``stats`` ("given", or "computed" for
    batch_stats and forward), ``us_min``, ``us_median``; and a row for PyTorch's
    ``F.batch_norm`` (training mode, one thread) when PyTorch is importable."""
    import numbabn

    d = make_inputs(shape, 1, dtype)
    st = numbabn.batch_stats(d["x"])
    out = []
    for op in OPERATIONS:
        computed = op in ("batch_stats", "forward")
        fn = numbabn_call(op, d, 1, None if computed else st)
        low, mid = per_call_us(fn, number, rounds)
        out.append({"operation": op, "stats": "computed" if computed else "given",
                    "us_min": low, "us_median": mid})  # fmt: skip
    if torch_reference:
        row = _torch_row(d, number, rounds)
        if row is not None:
            out.append(row)
    return out


def _torch_row(d: dict, number: int, rounds: int) -> dict | None:
    """PyTorch's training-mode ``F.batch_norm`` on the same batch, on one thread
    (on a tiny batch more threads only add their start-up)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    x, g, b = (torch.from_numpy(d[k]) for k in ("x", "gamma", "beta"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        low, mid = per_call_us(
            lambda: F.batch_norm(x, None, None, g, b, training=True), number, rounds
        )
    finally:
        torch.set_num_threads(threads)
    return {"operation": "torch F.batch_norm", "stats": "computed", "us_min": low,
            "us_median": mid}  # fmt: skip


def table(result: list[dict], shape: tuple[int, ...] = (4, 3, 2)):
    """The rows as a :class:`numbabn.bench.report.Table`."""
    from .report import Table

    t = Table(f"fixed cost of a call on a {shape} batch (us per call)",
              ["operation", "statistics", "min us", "median us"])  # fmt: skip
    for r in result:
        t.add(r["operation"], r["stats"], f"{r['us_min']:.1f}", f"{r['us_median']:.1f}")
    return t
