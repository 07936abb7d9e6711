"""Kernel launches per call: two per operation when the statistics are given (the
reduction, whose last blocks compute the coefficients, and the apply pass), one
more when the call computes them; the forward pass is two, batch_stats one.
Counted on the CUDA simulator, which runs every launch as a Python call."""

import collections

import numpy as np
import pytest
from numba import cuda

import numbabn

from cases import make_case
from device_helpers import SIMULATED, to_device

if not SIMULATED:
    pytest.skip("the launch counter hooks the CUDA simulator", allow_module_level=True)


@pytest.fixture
def launches(monkeypatch):
    """A Counter of kernel launches by kernel name, while the test runs."""
    from numba.cuda.simulator import kernel as simulator

    counts = collections.Counter()
    call = simulator.FakeCUDAKernel.__call__

    def counted(self, *args):
        if not (self._device or simulator._kernel_context):
            counts[self.fn.__name__] += 1
        return call(self, *args)

    monkeypatch.setattr(simulator.FakeCUDAKernel, "__call__", counted)
    return counts


def _calls(d, axis):
    """Every operation, given statistics ``st`` or (None) computing them."""
    x, g, dz, u, hz, dz_dot = (d[k] for k in ("x", "gamma", "dz", "u", "hz", "dz_dot"))
    ug, ub = d["u_gamma"], d["u_beta"]

    def kw(st):
        return {"axis": axis} if st is None else {}

    return {
        "jvp": lambda st: numbabn.jvp(x, g, u, st, **kw(st)),
        "jvp with tangents": lambda st: numbabn.jvp(x, g, u, st, u_gamma=ug, u_beta=ub, **kw(st)),
        "vjp": lambda st: numbabn.vjp(x, g, dz, st, **kw(st)),
        "rvp": lambda st: numbabn.rvp(x, g, dz, u, st, **kw(st)),
        "ggnvp": lambda st: numbabn.ggnvp(x, g, u, hz, st, **kw(st)),
        "hvp": lambda st: numbabn.hvp(x, g, dz, u, hz, st, **kw(st)),
        "rop_backward": lambda st: numbabn.rop_backward(x, g, dz, dz_dot, u, st, **kw(st)),
        "rop_backward with u_gamma": lambda st: numbabn.rop_backward(
            x, g, dz, dz_dot, u, st, u_gamma=ug, **kw(st)
        ),
        "rop_backward without dz_dot": lambda st: numbabn.rop_backward(
            x, g, dz, None, u, st, **kw(st)
        ),
        "vjp_backward": lambda st: numbabn.vjp_backward(
            x, g, dz, u, st, a_gamma=ug, a_beta=ub, **kw(st)
        ),
    }


@pytest.mark.parametrize(("shape", "axis", "n_dir"), [((5, 3, 4), 1, None), ((6, 4), 1, 2),
                                                      ((3, 2, 5), -1, None)])  # fmt: skip
def test_launches_per_public_function(launches, shape, axis, n_dir):
    c = make_case(shape, axis, n_dir=n_dir)
    d = to_device(c)
    numbabn.batch_stats(d["x"], axis=axis)
    assert launches == {"stats_reduce": 1}
    for _ in range(2):  # the checked call, then the planned one
        launches.clear()
        numbabn.forward(d["x"], d["gamma"], d["beta"], axis=axis)
        assert launches == {"stats_reduce": 1, "apply_affine": 1}
    st = numbabn.batch_stats(d["x"], axis=axis)
    for name, call in _calls(d, axis).items():
        for _ in range(2):
            launches.clear()
            call(st)
            assert launches == {"moment_reduce": 1, "apply_affine": 1}, name
            launches.clear()
            call(None)
            want = {"stats_reduce": 1, "moment_reduce": 1, "apply_affine": 1}
            assert launches == want, f"{name}, statistics inside"


def test_out_and_callable_curvature(launches):
    c = make_case((4, 3, 2))
    d = to_device(c)
    st = numbabn.batch_stats(d["x"])
    out = cuda.device_array(c["u"].shape, np.float64)
    launches.clear()
    numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"], st, out=out)
    assert launches == {"moment_reduce": 1, "apply_affine": 1}
    launches.clear()
    numbabn.ggnvp(d["x"], d["gamma"], d["u"], lambda t: t, st)
    # J u, then Hz (J u) copied into place, then the VJP of the curvature's output
    assert launches == {"moment_reduce": 2, "apply_affine": 2, "copy_flat": 1}


class _SingleRank:
    def allreduce_sum(self, buffer):
        pass


def test_sharded_calls_merge_on_the_host(launches):
    """With comm=, the sums cross to the host between the reduction and the
    coefficients: the statistics take two reductions (a pass about zero, then about
    the global mean) and a finishing launch; an operation a reduction, a
    coefficients launch and the apply pass."""
    d = to_device(make_case((4, 3, 2)))
    st = numbabn.batch_stats(d["x"], comm=_SingleRank())
    assert launches == {"stats_reduce": 2, "finish_stats": 1}
    launches.clear()
    numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"], st)
    assert launches == {"moment_reduce": 1, "coefficients": 1, "apply_affine": 1}
