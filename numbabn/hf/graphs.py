"""Replaying a curvature product as a CUDA graph (CuPy inputs).

A curvature product launches tens of small kernels (numbabn's, cuBLAS's,
CuPy's elementwise ones); on a GPU their launch costs dominate. Every product
of one operator runs the same launches on arrays at the same addresses, so it
can be captured once as a CUDA graph and replayed with one launch.

The products of a :class:`GraphedProducts` run on a private stream and
allocate from a private memory pool: memory that a captured kernel writes is
then never handed to anyone else, and the graph's addresses stay valid for as
long as the object lives. The first product runs eagerly (it compiles and
allocates everything), the second is captured and replayed, every later one
replays. Where capture is impossible (a host synchronisation inside the
product, an old driver), the products stay eager.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class GraphedProducts:
    """``v -> product(v)``, replayed from a CUDA graph after the first call.

    Parameters
    ----------
    product : callable
        ``v -> array``: the same launches for every ``v`` of one shape and dtype
        (a fixed curvature operator).
    like : CuPy array
        An array of ``v``'s shape and dtype.
    capture : callable, optional
        ``(product, v_static, stream) -> replay``: captures ``product(v_static)``
        and returns a function that replays it and returns its output. Defaults
        to :func:`capture_cupy_graph`; tests replace it.

    Attributes
    ----------
    mode : {"eager", "graph"}
        How the last product ran.
    """

    def __init__(self, product: Callable[[Any], Any], like: Any, capture=None) -> None:
        import cupy

        self._cupy = cupy
        self._product = product
        self._capture = capture_cupy_graph if capture is None else capture
        self._stream = cupy.cuda.Stream(non_blocking=True)
        self._pool = cupy.cuda.MemoryPool()
        self._v = cupy.empty_like(like)
        self._replay: Callable[[], Any] | None = None
        self._calls = 0
        self._lock = threading.Lock()
        self.mode = "eager"

    def __call__(self, v: Any) -> Any:
        """``product(v)`` as a new array, ordered on the caller's current stream."""
        cupy = self._cupy
        caller = cupy.cuda.get_current_stream()
        with self._lock, cupy.cuda.using_allocator(self._pool.malloc), self._stream:
            self._stream.wait_event(caller.record())
            self._v[...] = v
            self._calls += 1
            if self._calls == 2:
                try:
                    self._replay = self._capture(self._product, self._v, self._stream)
                except Exception:
                    self._replay = None  # capture is impossible here: the products stay eager
            if self._replay is not None:
                out, self.mode = self._replay(), "graph"
            else:
                out, self.mode = self._product(self._v), "eager"
            result = out.copy()  # the graph's output is overwritten by the next replay
        caller.wait_event(self._stream.record())
        return result


def capture_cupy_graph(product: Callable[[Any], Any], v_static: Any, stream: Any):
    """Capture ``product(v_static)`` on ``stream``; returns ``replay() -> output``.

    Relaxed capture mode: numbabn and CuPy may create per-stream resources on a
    first use, which the stricter modes refuse during capture.
    """
    import cupy

    relaxed = getattr(cupy.cuda.runtime, "streamCaptureModeRelaxed", None)
    stream.begin_capture(mode=relaxed) if relaxed is not None else stream.begin_capture()
    try:
        out = product(v_static)
    finally:
        graph = stream.end_capture()

    def replay() -> Any:
        graph.launch(stream)
        return out

    return replay
