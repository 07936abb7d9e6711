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

from .bench import (
    CASES,
    FLOOR_PASSES,
    PEERS,
    make_inputs,
    median_seconds,
    network_hvp_calls,
    numbabn_call,
)


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
    """The inputs of :func:`numbabn.bench.make_inputs`, as CuPy arrays."""
    return _on_device(make_inputs(shape, axis, dtype, n_dir))


def _on_device(host: dict) -> dict:
    cupy = _cupy()
    return {k: cupy.asarray(v) for k, v in host.items()}


def efficiency_table(cases=CASES, dtypes=(np.float32, np.float64), repeats: int = 20):
    """(shape, dtype, op, seconds, floor seconds): statistics given, ``out`` preallocated."""
    import numbabn

    rows = []
    for shape, axis in cases:
        for dtype in dtypes:
            d = device_inputs(shape, axis, dtype)
            st = numbabn.batch_stats(d["x"], axis=axis)
            array_seconds = d["x"].nbytes / device_bandwidth(d["x"].size, dtype, repeats)
            out = d["u"].copy()
            for op in FLOOR_PASSES:
                seconds = synchronized_seconds(numbabn_call(op, d, axis, st, out), repeats)
                rows.append((shape, np.dtype(dtype).name, op, seconds,
                             FLOOR_PASSES[op](1) * array_seconds))  # fmt: skip
    return rows


def peer_table(cases=CASES, repeats: int = 20):
    """rvp and hvp in float64, statistics inside: numbabn vs torch and JAX on the GPU
    (torch given device="cuda"; JAX on its default device, the GPU where it sees one)."""
    rows, missing = [], {}
    for shape, axis in cases:
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
            rows.append((shape, op, floor, times))
    return rows, missing


def compare(repeats: int = 20) -> None:
    """Print the GPU efficiency and peer tables and the network HVP row."""
    cupy = _cupy()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"GPU: {props['name'].decode()}; times are synchronised calls, medians of {repeats}")
    print("\nnumbabn (CUDA) vs the GPU's memory-traffic floor (statistics given, out= given)")
    print(f"{'shape':<20}{'dtype':<9}{'op':<14}{'us':>10}{'floor us':>10}{'x floor':>9}")
    for shape, dt, op, seconds, floor in efficiency_table(repeats=repeats):
        print(f"{str(shape):<20}{dt:<9}{op:<14}{seconds * 1e6:>10.1f}{floor * 1e6:>10.1f}"
              f"{seconds / floor:>9.2f}")  # fmt: skip
    rows, missing = peer_table(repeats=repeats)
    for name, why in missing.items():
        print(f"(skipped {name}: {why})")
    print("\nrvp and hvp, float64, statistics inside: us, and peer / numbabn")
    for shape, op, floor, times in rows:
        ours = times["numbabn"]
        cells = "".join(f"  {n} {t * 1e6:8.1f} ({t / ours:4.1f}x)" for n, t in times.items()
                        if n != "numbabn")  # fmt: skip
        print(f"{str(shape):<20}{op:<5}{ours * 1e6:9.1f} ({ours / floor:5.1f}x floor){cells}")
    ours, theirs = network_hvp_calls(device="cuda")
    t_ours = synchronized_seconds(ours, repeats)
    line = "\nnetwork HVP (64-256-BN-tanh-256-BN-tanh-10, batch 1024, float64) on the GPU: "
    line += f"numbabn.hf {t_ours * 1e3:.2f} ms"
    if theirs is not None:
        t_theirs = synchronized_seconds(theirs, repeats)
        line += f", torch double backward {t_theirs * 1e3:.2f} ms ({t_theirs / t_ours:.1f}x)"
    print(line)
