"""The ``out=`` argument: results written into the caller's array (NumPy
convention), bitwise equal to a fresh result, and every misuse refused."""

import numpy as np
import pytest

import numbabn

from cases import make_case


def _calls(c, st, axis):
    """(name, call taking out=, result shape) for every function with an x-shaped output."""
    x, g, dz, u, hz, dzd = c["x"], c["gamma"], c["dz"], c["u"], c["hz"], c["dz_dot"]
    return [
        ("forward", lambda **k: numbabn.forward(x, g, c["beta"], axis=axis, **k)[0], x.shape),
        ("jvp", lambda **k: numbabn.jvp(x, g, u, st, u_gamma=c["u_gamma"], **k), u.shape),
        ("vjp", lambda **k: numbabn.vjp(x, g, dz, st, **k)[0], dz.shape),
        ("rvp", lambda **k: numbabn.rvp(x, g, dz, u, st, **k), u.shape),
        ("ggnvp", lambda **k: numbabn.ggnvp(x, g, u, hz, st, **k), u.shape),
        ("ggnvp callable", lambda **k: numbabn.ggnvp(x, g, u, lambda t: 2 * t, st, **k), u.shape),
        ("hvp", lambda **k: numbabn.hvp(x, g, dz, u, hz, st, **k), u.shape),
        ("rop_backward", lambda **k: numbabn.rop_backward(x, g, dz, dzd, u, st, **k)[0], u.shape),
    ]


@pytest.mark.parametrize("n_dir", [None, 3])
@pytest.mark.parametrize(("shape", "axis"), [((7, 4), 1), ((3, 4, 5), 1), ((3, 2, 5), -1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_out_receives_the_result(shape, axis, dtype, n_dir):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    st = numbabn.batch_stats(c["x"], axis=axis)
    before = {k: v.copy() for k, v in c.items()}
    for name, call, res_shape in _calls(c, st, axis):
        want = call()
        out = np.full(res_shape, np.nan, dtype)
        got = call(out=out)
        assert got is out, name
        np.testing.assert_array_equal(out, want, err_msg=name)
    for k, v in c.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")


def test_vjp_parameter_outputs_unchanged_by_out():
    c = make_case((6, 3))
    out = np.empty_like(c["dz"])
    dx, dg, db = numbabn.vjp(c["x"], c["gamma"], c["dz"], out=out)
    want = numbabn.vjp(c["x"], c["gamma"], c["dz"])
    assert dx is out
    np.testing.assert_array_equal(dg, want[1])
    np.testing.assert_array_equal(db, want[2])


def test_bad_out():
    c = make_case((6, 4), n_dir=2)
    x, g, dz, u = c["x"], c["gamma"], c["dz"], c["u"]

    def rvp(out):
        return numbabn.rvp(x, g, dz, u, out=out)

    with pytest.raises(ValueError, match=r"^out has shape \(6, 4\); expected \(2, 6, 4\)"):
        rvp(np.empty((6, 4)))
    with pytest.raises(TypeError, match="^out has dtype float32; expected x's dtype float64"):
        rvp(np.empty(u.shape, np.float32))
    with pytest.raises(ValueError, match="^out must be C-contiguous"):
        rvp(np.empty((2, 4, 6)).transpose(0, 2, 1))
    read_only = np.empty(u.shape)
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="^out is read-only"):
        rvp(read_only)
    with pytest.raises(ValueError, match="^out shares memory with u"):
        rvp(u)
    with pytest.raises(ValueError, match="^out shares memory with x"):
        numbabn.rvp(x, g, dz, x[None].copy()[0], out=x)
    with pytest.raises(TypeError, match="^out must be a NumPy array or a CUDA array"):
        rvp(u.tolist())


class _DeviceView:
    """A stand-in CUDA array: a host array's interface under the CUDA name."""

    def __init__(self, a):
        self.__cuda_array_interface__ = {**a.__array_interface__, "version": 3}


def test_cuda_overlap_check_matches_numpy_bounds():
    """CudaBackend.overlaps (the out= check for device arrays) compares byte
    bounds from the CUDA array interface, as np.may_share_memory does on the host."""
    from numbabn._cuda_backend import CudaBackend

    buf = np.zeros(100)
    grid = buf.reshape(10, 10)
    views = [buf[:50], buf[50:], buf[40:60], buf[::-1][:10], buf[:0], grid[:, :5], grid[:, 5:],
             grid[::-2, 3], np.zeros(5)]  # fmt: skip
    for a in views:
        for b in views:
            want = np.may_share_memory(a, b) and a.size > 0 and b.size > 0
            assert CudaBackend.overlaps(_DeviceView(a), _DeviceView(b)) == want
    assert not CudaBackend.overlaps(_DeviceView(buf), buf)  # no interface: unknown range
