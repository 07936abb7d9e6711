"""Every public function on CUDA device arrays equals the CPU kernels
(1e-12 float64, 1e-5 float32 relative) for 2-D to 5-D shapes and both axes,
and results stay on the device."""

import numpy as np
import pytest
from numba import cuda

import numbabn

from cases import make_case
from device_helpers import (
    SIMULATED,
    assert_device_matches,
    forward_on_both,
    to_device,
    to_host,
)

SHAPES = [((6, 3), 1), ((5, 3), -1), ((3, 2, 4), 1), ((3, 4, 2), -1), ((2, 2, 2, 3), 1),
          ((2, 3, 2, 2), -1), ((2, 2, 2, 1, 2), 1), ((1, 2, 2, 1, 3), -1)]  # fmt: skip


def _device_scale(t):
    """Hz t = 2 t, computed on the device (a callable curvature)."""
    out = cuda.device_array_like(t)
    _scale_kernel[1, 8](t.reshape(t.size), out.reshape(out.size), 2.0)
    return out


@cuda.jit
def _scale_kernel(src, dst, k):
    for e in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        dst[e] = k * src[e]


@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_first_order_and_stats(shape, axis, dtype):
    c = make_case(shape, axis, dtype)
    d = to_device(c)
    _, st, st_cpu = forward_on_both(d, c, axis, dtype)
    kw = {"u_gamma": d["u_gamma"], "u_beta": d["u_beta"]}
    got = numbabn.jvp(d["x"], d["gamma"], d["u"], st, **kw)
    want = numbabn.jvp(c["x"], c["gamma"], c["u"], st_cpu, u_gamma=c["u_gamma"], u_beta=c["u_beta"])
    assert_device_matches(got, want, dtype, "jvp")
    got = numbabn.vjp(d["x"], d["gamma"], d["dz"], st)
    want = numbabn.vjp(c["x"], c["gamma"], c["dz"], st_cpu)
    for g, w, name in zip(got, want, ("dx", "dgamma", "dbeta"), strict=True):
        assert_device_matches(g, w, dtype, name)


@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_second_order(shape, axis, dtype):
    c = make_case(shape, axis, dtype)
    d = to_device(c)
    x, g, dz, u, hz = d["x"], d["gamma"], d["dz"], d["u"], d["hz"]
    st = numbabn.batch_stats(x, axis=axis)
    ref = numbabn.batch_stats(c["x"], axis=axis)
    cx, cg, cdz, cu, chz = c["x"], c["gamma"], c["dz"], c["u"], c["hz"]
    pairs = {
        "rvp": (numbabn.rvp(x, g, dz, u, st), numbabn.rvp(cx, cg, cdz, cu, ref)),
        "hvp": (numbabn.hvp(x, g, dz, u, hz, st), numbabn.hvp(cx, cg, cdz, cu, chz, ref)),
        "ggnvp": (numbabn.ggnvp(x, g, u, hz, st), numbabn.ggnvp(cx, cg, cu, chz, ref)),
        "hvp callable": (
            numbabn.hvp(x, g, dz, u, _device_scale, st),
            numbabn.hvp(cx, cg, cdz, cu, lambda t: 2 * t, ref),
        ),
    }
    for name, (got, want) in pairs.items():
        assert_device_matches(got, want, dtype, name)


@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 1), ((2, 3, 2), -1), ((2, 2, 3, 2), 1)])
def test_several_directions_and_rop_backward(shape, axis):
    c = make_case(shape, axis, n_dir=2)
    d = to_device(c)
    got = numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"], axis=axis)
    want = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], axis=axis)
    assert_device_matches(got, want, np.float64, "rvp, 2 directions")
    got = numbabn.ggnvp(d["x"], d["gamma"], d["u"], _device_scale, axis=axis)
    want = numbabn.ggnvp(c["x"], c["gamma"], c["u"], lambda t: 2 * t, axis=axis)
    assert_device_matches(got, want, np.float64, "ggnvp callable, 2 directions")
    got = numbabn.rop_backward(
        d["x"], d["gamma"], d["dz"], d["dz_dot"], d["u"], u_gamma=d["u_gamma"], axis=axis
    )
    want = numbabn.rop_backward(
        c["x"], c["gamma"], c["dz"], c["dz_dot"], c["u"], u_gamma=c["u_gamma"], axis=axis
    )
    for g, w, name in zip(got, want, ("dx_dot", "dgamma_dot", "dbeta_dot"), strict=True):
        assert_device_matches(g, w, np.float64, name)
    got = numbabn.rop_backward(d["x"], d["gamma"], d["dz"], None, d["u"], axis=axis)
    want = numbabn.rop_backward(c["x"], c["gamma"], c["dz"], None, c["u"], axis=axis)
    for g, w, name in zip(got, want, ("dx_dot", "dgamma_dot", "dbeta_dot"), strict=True):
        assert_device_matches(g, w, np.float64, f"{name} without dz_dot")


@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 1), ((2, 2, 3, 2), -1)])
@pytest.mark.parametrize("n_dir", [None, 2])
def test_vjp_backward(shape, axis, n_dir):
    c = make_case(shape, axis, n_dir=n_dir)
    d = to_device(c)
    got = numbabn.vjp_backward(d["x"], d["gamma"], d["dz"], d["u"], a_gamma=d["u_gamma"],
                               a_beta=d["u_beta"], axis=axis)  # fmt: skip
    want = numbabn.vjp_backward(c["x"], c["gamma"], c["dz"], c["u"], a_gamma=c["u_gamma"],
                                a_beta=c["u_beta"], axis=axis)  # fmt: skip
    for g, w, name in zip(got, want, ("dz_bar", "x_bar", "gamma_bar"), strict=True):
        assert_device_matches(g, w, np.float64, name)


def test_curvature_callable_result_is_cast_to_the_dtype_of_x():
    c = make_case((6, 3), dtype=np.float32)
    d = to_device(c)

    def scale_in_float64(t):  # Hz t = 2 t, returned as float64
        out = cuda.device_array(t.shape, np.float64)
        _scale_kernel[1, 8](t.reshape(t.size), out.reshape(out.size), 2.0)
        return out

    got = numbabn.ggnvp(d["x"], d["gamma"], d["u"], scale_in_float64)
    want = numbabn.ggnvp(c["x"], c["gamma"], c["u"], lambda t: 2.0 * t.astype(np.float64))
    assert_device_matches(got, want, np.float32, "ggnvp, hz(t) in float64")


def test_mixing_host_and_device_arrays_is_a_type_error():
    c = make_case((4, 3))
    d = to_device(c)
    with pytest.raises(TypeError, match="cannot mix host and device arrays.*dz on the host"):
        numbabn.rvp(d["x"], d["gamma"], c["dz"], d["u"])
    with pytest.raises(ValueError, match="backend='cpu' was requested but the arrays are CUDA"):
        numbabn.batch_stats(d["x"], backend="cpu")
    st_cpu = numbabn.batch_stats(c["x"])
    with pytest.raises(TypeError, match="stats live on another backend"):
        numbabn.jvp(d["x"], d["gamma"], d["u"], st_cpu)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # 1/sqrt(0) in the simulator
def test_inputs_unchanged_and_device_validation():
    c = make_case((4, 3, 2))
    d = to_device(c)
    numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"])
    for k in ("x", "dz", "u", "hz", "gamma"):
        np.testing.assert_array_equal(to_host(d[k]), c[k])
    with pytest.raises(ValueError, match="non-contiguous device array"):
        numbabn.batch_stats(d["x"][:, :, ::2])
    with pytest.raises(TypeError, match="^u has dtype float32 but x has dtype float64"):
        numbabn.jvp(d["x"], d["gamma"], cuda.to_device(c["u"].astype(np.float32)))
    with pytest.raises(ValueError, match=r"^hz\(t\) has shape"):
        numbabn.ggnvp(d["x"], d["gamma"], d["u"], lambda t: t[0])
    x = c["x"].copy()
    x[:, 1] = 3.0
    with pytest.raises(ValueError, match=r"zero variance in channel\(s\) \[1\]"):
        numbabn.batch_stats(cuda.to_device(x), eps=0.0)


@pytest.mark.skipif(SIMULATED, reason="CuPy needs a real GPU")
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    c = make_case((8, 4, 3))
    x, g, dz, u = (cupy.asarray(c[k]) for k in ("x", "gamma", "dz", "u"))
    got = numbabn.rvp(x, g, dz, u)
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(got.get(), numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"]), 1e-12)
    out = cupy.empty_like(u)
    assert numbabn.rvp(x, g, dz, u, out=out) is out
    np.testing.assert_array_equal(out.get(), got.get())
    with pytest.raises(ValueError, match="^out shares memory with u"):
        numbabn.rvp(x, g, dz, u, out=u)
    strided = cupy.asarray(np.asfortranarray(c["x"]))
    np.testing.assert_allclose(numbabn.batch_stats(strided).mean.get(),
                               numbabn.batch_stats(c["x"]).mean, rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("n_dir", [None, 2])
def test_out_on_device(n_dir):
    c = make_case((3, 2, 4), n_dir=n_dir)
    d = to_device(c)
    st = numbabn.batch_stats(d["x"])
    out = cuda.device_array(c["u"].shape, np.float64)
    got = numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"], st, out=out)
    assert got is out
    want = numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], c["hz"])
    assert_device_matches(out, want, np.float64, "hvp out=")
    with pytest.raises(TypeError, match="^out is a cpu array but x is a cuda array"):
        numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"], st, out=np.empty(c["u"].shape))
    with pytest.raises(ValueError, match="^out has shape"):
        numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"], st, out=d["x"][:1])


class _SingleRank:
    """The allreduce_sum protocol with one rank; counts the messages."""

    messages = 0

    def allreduce_sum(self, buffer):
        assert isinstance(buffer, np.ndarray) and buffer.dtype == np.float64
        _SingleRank.messages += 1


def test_sharding_path_round_trips_device_sums():
    """With comm=, device sums go to the host for the allreduce and come back."""
    c = make_case((4, 3, 2))
    d = to_device(c)
    comm = _SingleRank()
    st = numbabn.batch_stats(d["x"], comm=comm)
    got = numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"], st)
    assert _SingleRank.messages == 3 and st.comm is comm
    assert_device_matches(got, numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"]), np.float64, "rvp")
