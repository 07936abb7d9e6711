"""numbabn.hf's curvature operator on CuPy replays its products from a CUDA graph:
the replayed products equal the eager ones (graphs=False), product after product.
Needs a real GPU (CuPy does not run on the simulator)."""

import numpy as np
import pytest

from numbabn import hf
from numbabn.hf.curvature import CurvatureOperator

from device_helpers import SIMULATED

if SIMULATED:
    pytest.skip("CuPy needs a real GPU", allow_module_level=True)
cupy = pytest.importorskip("cupy")


@pytest.mark.parametrize("kind", ["ggn", "hessian"])
def test_graph_replays_equal_eager_products(kind):
    net = hf.Sequential([hf.Linear(12, 32), hf.BatchNorm(32), hf.Tanh(), hf.Linear(32, 4)])
    rng = np.random.default_rng(0)
    theta = cupy.asarray(net.init(0) + 0.1 * rng.normal(size=net.size))
    X, y = cupy.asarray(rng.normal(size=(64, 12))), cupy.asarray(rng.integers(0, 4, 64))
    graphed = net.curvature(theta, X, y, kind)
    eager = CurvatureOperator(net, theta, X, y, kind, graphs=False)
    modes = []
    for _ in range(4):
        v = cupy.asarray(rng.normal(size=net.size))
        got = graphed(v)
        modes.append(graphed._graphed.mode)
        cupy.testing.assert_allclose(got, eager(v), rtol=1e-12, atol=1e-14)
    assert modes == ["eager", "graph", "graph", "graph"]
