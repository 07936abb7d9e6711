"""Where and how the CUDA backend launches: on the caller's current stream, without
array views or host synchronisation, the same bits by the direct route as by
Numba's own launch, and the same bits when threads share a stream."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numba import cuda

import numbabn
from numbabn import config
from numbabn._dispatch import cuda_backend

from cases import make_case
from device_helpers import SIMULATED, to_device, to_host


def _all_results(d):
    """Every public function on device inputs ``d`` (statistics inside and given)."""
    x, g, dz, u, hz, dzd = (d[k] for k in ("x", "gamma", "dz", "u", "hz", "dz_dot"))
    z, st = numbabn.forward(x, g, d["beta"])
    return [
        z, st.mean, st.var, st.invstd,
        numbabn.jvp(x, g, u, st, u_gamma=d["u_gamma"], u_beta=d["u_beta"]),
        *numbabn.vjp(x, g, dz, st),
        numbabn.rvp(x, g, dz, u),
        numbabn.ggnvp(x, g, u, hz, st),
        numbabn.hvp(x, g, dz, u, hz, st),
        *numbabn.rop_backward(x, g, dz, dzd, u, st, u_gamma=d["u_gamma"]),
    ]  # fmt: skip


def test_stream_of_a_simulated_call_is_the_default_one():
    if not SIMULATED:
        pytest.skip("the simulator's path")
    d = to_device(make_case((4, 3)))
    be = cuda_backend()
    x3 = be.view(d["x"], (4, 3, 1))
    slot = be._slot(x3.kind, x3.base)
    assert (slot.ptr, slot.numba_stream) == (0, 0)
    assert be._slot(x3.kind, x3.base) is slot  # one slot per stream, kept


def test_threads_sharing_a_stream_get_the_single_threaded_bits():
    """The workspace and counters of a stream are shared: a lock keeps each
    operation's launches together."""
    cases = [make_case((6, 3, 2), seed=s, n_dir=2 if s % 2 else None) for s in range(4)]
    devices = [to_device(c) for c in cases]
    want = [[to_host(r) for r in _all_results(d)] for d in devices]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda d: [to_host(r) for r in _all_results(d)], devices))
    for w, g in zip(want, got, strict=True):
        for a, b in zip(w, g, strict=True):
            np.testing.assert_array_equal(b, a)


@pytest.mark.skipif(SIMULATED, reason="the simulator has one launch route")
@pytest.mark.parametrize(("shape", "axis", "n_dir"), [((64, 40), 1, None), ((8, 6, 5, 7), 1, 3),
                                                      ((4, 5, 6, 33), -1, None)])  # fmt: skip
def test_direct_launch_gives_the_bits_of_numba_launch(monkeypatch, shape, axis, n_dir):
    c = make_case(shape, axis, n_dir=n_dir)
    d = to_device(c)
    results = {}
    for route in ("numba", "direct"):
        monkeypatch.setattr(config, "CUDA_LAUNCH", route)
        results[route] = [to_host(r) for r in _all_results(d)]
    for a, b in zip(results["numba"], results["direct"], strict=True):
        np.testing.assert_array_equal(b, a)


@pytest.mark.skipif(SIMULATED, reason="CuPy needs a real GPU")
def test_cupy_calls_run_on_cupys_current_stream_without_views(monkeypatch):
    """No Numba device array is made for CuPy inputs (no views, no synchronising
    as_cuda_array), and the kernels run on CuPy's current stream."""
    cupy = pytest.importorskip("cupy")
    c = make_case((256, 32))
    d = {k: cupy.asarray(v) for k, v in c.items()}
    want = [r.get() for r in _all_results(d)]
    from numba.cuda.cudadrv import devicearray

    made = []
    original = devicearray.DeviceNDArray.__init__

    def counted(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(devicearray.DeviceNDArray, "__init__", counted)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        got = [r.get() for r in _all_results(d)]
        be = cuda_backend()
        x3 = be.view(d["x"], (256, 32, 1))
        assert be._slot(x3.kind, x3.base).ptr == stream.ptr
    assert not made, "a Numba device array was made for CuPy inputs"
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(b, a)


@pytest.mark.skipif(SIMULATED, reason="streams need a real GPU")
def test_inputs_bound_to_another_stream_are_waited_for():
    """A Numba device array made on a stream of its own is read after that stream's
    work, without the host waiting."""
    c = make_case((512, 64))
    stream = cuda.stream()
    d = {k: cuda.to_device(np.ascontiguousarray(v), stream=stream) for k, v in c.items()}
    got = numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"])
    want = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"])
    np.testing.assert_allclose(to_host(got), want, rtol=1e-11, atol=1e-12)


@pytest.mark.skipif(SIMULATED, reason="PyTorch CUDA tensors need a real GPU")
def test_torch_tensors_in_tensors_out_on_torchs_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU")
    c = make_case((128, 16, 3))
    d = {k: torch.as_tensor(v, device="cuda") for k, v in c.items()}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"])
        be = cuda_backend()
        x3 = be.view(d["x"], (128, 16, 3))
        assert be._slot(x3.kind, x3.base).ptr == stream.cuda_stream
    torch.cuda.synchronize()
    assert isinstance(got, torch.Tensor) and got.device == d["x"].device
    want = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"])
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-11, atol=1e-12)
