"""Wall-clock timing and the streaming bandwidth that sets every floor.

The floor of an operation is the bytes it must move (array passes x array
size) divided by the bandwidth of a Numba triad ``c = a + s*b`` over arrays of
the same size and dtype, measured in the same process with the same threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        c[i] = a[i] + s * b[i]


def median_seconds(fn: Callable[[], Any], repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def stream_bandwidth(n: int, dtype: Any, repeats: int = 7) -> float:
    """Bytes per second of the triad ``c = a + s*b`` over ``n`` elements."""
    a, b, c = (np.full(n, 1.0, dtype) for _ in range(3))
    seconds = median_seconds(lambda: _triad(a, b, c, 2.0), repeats)
    return 3 * a.nbytes / seconds


def progress(items: Iterable, desc: str) -> Iterable:
    """``items`` with a tqdm progress bar when tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc)


@contextmanager
def compile_notice(what: str, after_seconds: float = 2.0) -> Iterator[None]:
    """Say what is happening when the block runs longer than ``after_seconds``.

    The first call of each kernel compiles it (minutes for a whole command on a
    cold cache, instant once Numba's on-disk cache is warm), so the line shows
    on a first run only.
    """
    start = time.perf_counter()
    timer = threading.Timer(
        after_seconds,
        lambda: print(f"compiling {what} (first run only: Numba caches them on disk)...",
                      flush=True),
    )  # fmt: skip
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if time.perf_counter() - start > after_seconds:
            print(f"compiled in {time.perf_counter() - start:.0f} s", flush=True)
