"""Speed on an NVIDIA GPU: numbabn's CUDA kernels on CuPy arrays against the GPU's
own memory-traffic floor and against PyTorch and JAX on the same GPU. Used by
``python -m numbabn bench --backend cuda`` and the asv suite's CUDA rows.

The floor is the bytes an operation must move divided by the bandwidth of a
CuPy triad ``c = a + s*b`` over arrays of the same size and dtype. Each timed
call is synchronised before and after, so a time is what a caller waits for:
the Python dispatch and kernel launches included, as they are in real use.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from .cases import CASES, FLOOR_PASSES, make_inputs, numbabn_call
from .network import network_hvp_calls
from .peers import PEERS
from .report import Report, Table
from .timing import median_seconds


def unavailable() -> str | None:
    """Why the GPU benchmark cannot run here, or None when it can."""
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc})"
    if not cupy.is_available():
        return "CuPy finds no usable GPU"
    from numba import cuda

    if not cuda.is_available():
        return "Numba finds no usable CUDA device"
    return None


def _cupy():
    import cupy

    if not cupy.is_available():
        raise RuntimeError("CuPy finds no usable GPU here")
    return cupy


@cache
def _triad_kernel():
    return _cupy().ElementwiseKernel("T a, T b, T s", "T c", "c = a + s * b", "numbabn_triad")


def synchronized_seconds(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()``, the device synchronised after each call (so
    each timed call starts on an idle device and ends when its work does)."""
    sync = _cupy().cuda.runtime.deviceSynchronize
    return median_seconds(lambda: (fn(), sync()), repeats, warmup)


def device_bandwidth(n: int, dtype: Any, repeats: int = 20) -> float:
    """Bytes per second of the triad ``c = a + s*b`` over ``n`` elements on the GPU."""
    cupy = _cupy()
    a, b, c = (cupy.ones(n, dtype) for _ in range(3))
    s = np.dtype(dtype).type(2.0)
    seconds = synchronized_seconds(lambda: _triad_kernel()(a, b, s, c), repeats)
    return 3 * a.nbytes / seconds


def device_inputs(shape, axis: int, dtype: Any, n_dir: int | None = None) -> dict:
    """The inputs of :func:`numbabn.bench.cases.make_inputs`, as CuPy arrays."""
    return _on_device(make_inputs(shape, axis, dtype, n_dir))


def _on_device(host: dict) -> dict:
    cupy = _cupy()
    return {k: cupy.asarray(v) for k, v in host.items()}


def efficiency_table(cases=CASES, dtypes=(np.float32, np.float64), repeats: int = 20):
    """(case, dtype, op, seconds, floor seconds): statistics given, ``out`` preallocated."""
    import numbabn

    rows = []
    for case in cases:
        for dtype in dtypes:
            d = device_inputs(case.shape, case.axis, dtype)
            st = numbabn.batch_stats(d["x"], axis=case.axis)
            array_seconds = d["x"].nbytes / device_bandwidth(d["x"].size, dtype, repeats)
            out = d["u"].copy()
            for op in FLOOR_PASSES:
                seconds = synchronized_seconds(numbabn_call(op, d, case.axis, st, out), repeats)
                rows.append((case, np.dtype(dtype).name, op, seconds,
                             FLOOR_PASSES[op](1) * array_seconds))  # fmt: skip
    return rows


def peer_table(cases=CASES, repeats: int = 20):
    """rvp and hvp in float64, statistics inside: numbabn vs torch and JAX on the GPU
    (torch given device="cuda"; JAX on its default device, the GPU where it sees one)."""
    rows, missing = [], {}
    for case in cases:
        shape, axis = case.shape, case.axis
        for op in ("rvp", "hvp"):
            host = make_inputs(shape, axis, np.float64)
            d = _on_device(host)
            bw = device_bandwidth(d["x"].size, np.float64, repeats)
            floor = (FLOOR_PASSES[op](1) + 2) * d["x"].nbytes / bw
            times = {"numbabn": synchronized_seconds(numbabn_call(op, d, axis), repeats)}
            for name, kw in (("torch", {"device": "cuda"}), ("jax", {})):
                try:
                    fn = PEERS[name](op, host, axis, **kw)
                except ImportError as exc:
                    missing[name] = str(exc)
                    continue
                times[name] = synchronized_seconds(fn, repeats)
            rows.append((case, op, floor, times))
    return rows, missing


def compare(repeats: int = 20, markdown: str | None = None) -> None:
    """Print the GPU efficiency, peer and network tables; optionally write them as Markdown."""
    cupy = _cupy()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    gpu = props["name"].decode()
    report = Report(f"numbabn performance on the GPU ({gpu})")
    from . import cuda_calls

    report.show(cuda_calls.table(cuda_calls.rows(dtypes=(np.float32, np.float64), repeats=repeats)))
    table = Table(
        f"numbabn (CUDA) vs the GPU's memory-traffic floor; synchronised calls, medians of "
        f"{repeats} (statistics given, out= given)",
        ["shape", "dtype", "op", "us", "floor us", "x floor"],
    )
    for case, dt, op, seconds, floor in efficiency_table(repeats=repeats):
        table.add(case.label, dt, op, f"{seconds * 1e6:.1f}", f"{floor * 1e6:.1f}",
                  f"{seconds / floor:.2f}")  # fmt: skip
    report.show(table)
    rows, missing = peer_table(repeats=repeats)
    names = [n for n in ("torch", "jax") if n not in missing]
    table = Table(
        "rvp and hvp, float64, statistics inside: us (peer / numbabn)",
        ["shape", "op", "numbabn us", "x floor", *names],
        notes=[f"skipped {name}: {why}" for name, why in missing.items()],
    )
    for case, op, floor, times in rows:
        ours = times["numbabn"]
        cells = [f"{times[n] * 1e6:.1f} ({times[n] / ours:.1f}x)" for n in names]
        table.add(case.label, op, f"{ours * 1e6:.1f}", f"{ours / floor:.1f}", *cells)
    report.show(table)
    ours, theirs = network_hvp_calls(device="cuda")
    t_ours = synchronized_seconds(ours, repeats)
    table = Table("network HVP (64-256-BN-tanh-256-BN-tanh-10, batch 1024, float64)", ["row"])
    line = f"numbabn.hf {t_ours * 1e3:.2f} ms"
    if theirs is not None:
        t_theirs = synchronized_seconds(theirs, repeats)
        line += f", torch double backward {t_theirs * 1e3:.2f} ms ({t_theirs / t_ours:.1f}x)"
    table.add(line)
    report.show(table)
    if markdown:
        report.write_markdown(markdown)
        print(f"tables: {markdown}")
