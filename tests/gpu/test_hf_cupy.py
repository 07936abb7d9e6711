"""numbabn.hf on CuPy arrays: the same network code on the GPU gives the loss,
gradient, Hessian- and GGN-vector products of the NumPy run (which test_hf.py
checks against autograd), returns CuPy arrays, and Hessian-free training on the
GPU follows the NumPy run step by step. Needs a real GPU (CuPy does not run on the simulator)."""

import numpy as np
import pytest

from numbabn import hf

from cases import relative_error
from device_helpers import SIMULATED

if SIMULATED:
    pytest.skip("CuPy needs a real GPU", allow_module_level=True)
cupy = pytest.importorskip("cupy")

TOL = 1e-10


def make_problem(loss, activation, batch=64, seed=0):
    layers = [hf.Linear(12, 32), hf.BatchNorm(32), activation(), hf.Linear(32, 16),
              hf.BatchNorm(16), activation(), hf.Linear(16, 4)]  # fmt: skip
    net = hf.Sequential(layers, loss=loss)
    rng = np.random.default_rng(seed)
    theta = net.init(seed) + 0.1 * rng.normal(size=net.size)
    X = rng.normal(size=(batch, 12))
    y = rng.integers(0, 4, size=batch) if loss == "cross_entropy" else rng.normal(size=(batch, 4))
    v = rng.normal(size=net.size)
    return net, (theta, X, y, v)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("activation", [hf.Tanh, hf.ReLU])
def test_network_on_cupy_equals_numpy(loss, activation):
    net, host = make_problem(loss, activation)
    theta, X, y, v = host
    dev = [cupy.asarray(a) for a in host]
    assert abs(net.loss(*dev[:3]) - net.loss(theta, X, y)) <= TOL * abs(net.loss(theta, X, y))
    pairs = {
        "grad": (net.grad(*dev[:3]), net.grad(theta, X, y)),
        "hvp": (net.hvp(*dev), net.hvp(theta, X, y, v)),
        "ggnvp": (net.ggnvp(*dev), net.ggnvp(theta, X, y, v)),
        "curvature": (net.curvature(*dev[:3], kind="hessian")(dev[3]), net.hvp(theta, X, y, v)),
    }
    for name, (got, want) in pairs.items():
        assert isinstance(got, cupy.ndarray), f"{name}: {type(got).__name__}"
        err = relative_error(got.get(), want)
        assert err <= TOL, f"{name}: relative error {err:.2e}"
    np.testing.assert_array_equal(theta, dev[0].get())  # inputs untouched


def test_hessian_free_on_cupy_follows_the_numpy_run():
    """Five steps from the same start and mini-batch seed: the same losses."""
    net, host = make_problem("cross_entropy", hf.Tanh, batch=256)
    losses = {}
    for name, xp in (("numpy", np), ("cupy", cupy)):
        theta, X, y, _ = (xp.asarray(a) for a in host)
        opt = hf.HessianFree(net, max_cg_iter=10, curvature_batch=64, seed=1)
        losses[name] = [net.loss(theta, X, y)]
        for _ in range(5):
            theta, info = opt.step(theta, X, y)
            losses[name].append(info.loss)
        assert isinstance(theta, xp.ndarray)
    np.testing.assert_allclose(losses["cupy"], losses["numpy"], rtol=1e-8)
    assert losses["cupy"][-1] < 0.8 * losses["cupy"][0], losses["cupy"]
