"""The control flow of hf's CUDA-graph products, with a NumPy stand-in for CuPy's
streams and pools (the real capture runs in tests/gpu/test_hf_cuda_graph.py on a
GPU): the first product is eager, the second is captured and every later one
replays it with the latest v; a failed capture leaves every product eager; each
result is the caller's own array."""

import sys
import types
from contextlib import nullcontext

import numpy as np
import pytest

from numbabn.hf.graphs import GraphedProducts


class _Stream:
    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self):
        return object()

    def wait_event(self, event):
        pass


@pytest.fixture
def fake_cupy(monkeypatch):
    cuda = types.SimpleNamespace(
        Stream=_Stream,
        MemoryPool=lambda: types.SimpleNamespace(malloc=None),
        using_allocator=lambda malloc: nullcontext(),
        get_current_stream=_Stream,
    )
    monkeypatch.setitem(
        sys.modules, "cupy", types.SimpleNamespace(cuda=cuda, empty_like=np.empty_like)
    )


def recording_capture(log):
    """A capture that records ``product`` and replays it on the static input."""

    def capture(product, v_static, stream):
        log.append("capture")
        out = np.empty_like(v_static)

        def replay():
            out[...] = product(v_static)
            return out

        return replay

    return capture


def test_second_product_is_captured_and_later_ones_replay(fake_cupy):
    log = []
    products = GraphedProducts(lambda v: 3.0 * v, np.zeros(5), capture=recording_capture(log))
    modes, results = [], []
    for k in range(4):
        v = np.arange(5.0) + k
        results.append(products(v))
        modes.append(products.mode)
        np.testing.assert_array_equal(results[-1], 3.0 * v)
    assert modes == ["eager", "graph", "graph", "graph"]
    assert log == ["capture"]
    assert len({id(r) for r in results}) == 4  # each result is its own array


def test_failed_capture_leaves_the_products_eager(fake_cupy):
    def failing(product, v_static, stream):
        raise RuntimeError("operation not permitted when stream is capturing")

    products = GraphedProducts(lambda v: v - 1.0, np.zeros(3), capture=failing)
    for k in range(3):
        v = np.full(3, float(k))
        np.testing.assert_array_equal(products(v), v - 1.0)
        assert products.mode == "eager"
