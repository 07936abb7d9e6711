"""Moving test data to and from the device, and comparing device results."""

import os

import numpy as np
from numba import cuda

import numbabn
from numbabn._arrays import is_cuda_array

from cases import relative_error

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def to_device(case: dict) -> dict:
    return {k: cuda.to_device(np.ascontiguousarray(v)) for k, v in case.items()}


def to_host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a.get())


#: Device results against the CPU kernels', relative (both sum in float64, in
#: different orders).
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def assert_device_matches(got, want, dtype, what: str, tol: dict = TOL) -> None:
    """``got`` is a device array of ``dtype`` within ``tol`` of ``want``."""
    assert is_cuda_array(got), f"{what}: not on device"
    host = to_host(got)
    assert host.dtype == np.dtype(dtype), what
    err = relative_error(host, want)
    assert err <= tol[np.dtype(dtype)], f"{what}: relative error {err:.2e}"


def forward_on_both(d: dict, c: dict, axis: int, dtype, tol: dict = TOL):
    """``forward`` on the device inputs ``d`` and on the host inputs ``c``: the
    outputs and the statistics match. Returns ``(z, device stats, host stats)``."""
    z, st = numbabn.forward(d["x"], d["gamma"], d["beta"], axis=axis)
    z_cpu, ref = numbabn.forward(c["x"], c["gamma"], c["beta"], axis=axis)
    assert_device_matches(z, z_cpu, dtype, "forward", tol)
    for name in ("mean", "var", "invstd"):
        assert_device_matches(getattr(st, name), getattr(ref, name), np.float64, name, tol)
    assert (st.count, st.axis, st.shape) == (ref.count, ref.axis, ref.shape)
    return z, st, ref
