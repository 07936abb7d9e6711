"""On a real GPU, at full size: many blocks per channel, the block-partials merge,
both thread layouts (post == 1 and post > 1) and the production block size. The
small-shape tests cannot reach these paths with one block of 8 threads; the
simulator cannot run these sizes, so this module runs on a GPU only.

Every operation on CuPy arrays equals the CPU kernels on the same inputs."""

import numpy as np
import pytest

import numbabn

from cases import make_case
from device_helpers import SIMULATED, assert_device_matches, forward_on_both

if SIMULATED:
    pytest.skip("full-size shapes need a real GPU", allow_module_level=True)
cupy = pytest.importorskip("cupy")

#: Both sides accumulate in float64, in different orders.
TOL = {np.dtype(np.float64): 1e-11, np.dtype(np.float32): 2e-5}

SHAPES = [
    ((4096, 1024), 1),  # BN1d: 32 channels x 8 row lanes a block, many row blocks
    ((16, 64, 56, 56), 1),  # NCHW: a block per (slice, channel) along post
    ((8, 28, 28, 128), -1),  # channels-last
    ((200_000, 3), 1),  # few channels: the most blocks, the longest merge
    ((3, 700, 37), 1),  # odd sizes: partial blocks and warps
]


def _device(case: dict) -> dict:
    return {k: cupy.asarray(v) for k, v in case.items()}


def _check(got, want, dtype, what: str) -> None:
    assert isinstance(got, cupy.ndarray), f"{what}: {type(got).__name__} is not a CuPy array"
    assert_device_matches(got, want, dtype, what, TOL)


@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_operation_equals_the_cpu(shape, axis, dtype):
    c = make_case(shape, axis, dtype)
    d = _device(c)
    z, st, ref = forward_on_both(d, c, axis, dtype, TOL)
    for name, a in (("forward", z), ("mean", st.mean), ("var", st.var), ("invstd", st.invstd)):
        assert isinstance(a, cupy.ndarray), f"{name}: {type(a).__name__} is not a CuPy array"

    x, g, dz, u, hz = d["x"], d["gamma"], d["dz"], d["u"], d["hz"]
    cx, cg, cdz, cu, chz = c["x"], c["gamma"], c["dz"], c["u"], c["hz"]
    pairs = {
        "jvp": (numbabn.jvp(x, g, u, st), numbabn.jvp(cx, cg, cu, ref)),
        "rvp": (numbabn.rvp(x, g, dz, u, st), numbabn.rvp(cx, cg, cdz, cu, ref)),
        "ggnvp": (numbabn.ggnvp(x, g, u, hz, st), numbabn.ggnvp(cx, cg, cu, chz, ref)),
        "hvp": (numbabn.hvp(x, g, dz, u, hz, st), numbabn.hvp(cx, cg, cdz, cu, chz, ref)),
        "rvp, stats inside": (
            numbabn.rvp(x, g, dz, u, axis=axis),
            numbabn.rvp(cx, cg, cdz, cu, ref),
        ),
    }
    for name, (got, want) in pairs.items():
        _check(got, want, dtype, name)
    got = numbabn.vjp(x, g, dz, st)
    want = numbabn.vjp(cx, cg, cdz, ref)
    for gv, w, name in zip(got, want, ("dx", "dgamma", "dbeta"), strict=True):
        _check(gv, w, dtype, f"vjp {name}")
    got = numbabn.rop_backward(x, g, dz, d["dz_dot"], u, st, u_gamma=d["u_gamma"])
    want = numbabn.rop_backward(cx, cg, cdz, c["dz_dot"], cu, ref, u_gamma=c["u_gamma"])
    for gv, w, name in zip(got, want, ("dx_dot", "dgamma_dot", "dbeta_dot"), strict=True):
        _check(gv, w, dtype, f"rop_backward {name}")


@pytest.mark.parametrize(("shape", "axis"), [((1024, 512), 1), ((4, 32, 20, 20), 1)])
def test_several_directions_equal_the_cpu(shape, axis):
    c = make_case(shape, axis, n_dir=5)
    d = _device(c)
    got = numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"], axis=axis)
    want = numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], c["hz"], axis=axis)
    _check(got, want, np.float64, "hvp, 5 directions")
    got = numbabn.rop_backward(d["x"], d["gamma"], d["dz"], d["dz_dot"], d["u"], axis=axis)
    want = numbabn.rop_backward(c["x"], c["gamma"], c["dz"], c["dz_dot"], c["u"], axis=axis)
    for gv, w, name in zip(got, want, ("dx_dot", "dgamma_dot", "dbeta_dot"), strict=True):
        _check(gv, w, np.float64, f"rop_backward {name}, 5 directions")


def test_results_are_bitwise_reproducible():
    """Fixed block partition and merge order: the same call gives the same bits."""
    c = make_case((8192, 256), 1)
    d = _device(c)
    first = numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"]).get()
    for _ in range(3):
        again = numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"]).get()
        np.testing.assert_array_equal(again, first)


def test_inputs_are_not_modified():
    c = make_case((2048, 300), 1, n_dir=2)
    d = _device(c)
    numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"])
    numbabn.rop_backward(d["x"], d["gamma"], d["dz"], d["dz_dot"], d["u"])
    for k, v in c.items():
        np.testing.assert_array_equal(d[k].get(), v, err_msg=k)
