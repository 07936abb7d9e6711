"""The CUDA backend without a GPU: every launch that the public functions make is
recorded (host arrays stand in for device arrays), and

* every kernel, with every signature it is launched with, compiles for compute
  capability 9.0 (H100) with ``numba.cuda.compile_ptx`` (the simulator does not
  type-check kernels; this does, without a driver);
* each launch's argument types are those Numba's dispatcher would infer, and its
  kernel parameters are those Numba's own launcher would marshal: the direct
  launch route passes the same bits as the plain Numba launch.
"""

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx needs the real CUDA target", allow_module_level=True)

from numba import cuda, types
from numba.cuda.cudadrv import devicearray
from numba.cuda.typing.typeof import Purpose, typeof

import numbabn
from numbabn import _cuda_backend as backend
from numbabn import _dispatch
from numbabn.kernels import cuda as kernels

from cases import make_case

CC = (9, 0)


class HostDeviceArray:
    """A host array presented as a CUDA array: its interface under the CUDA name."""

    def __init__(self, a: np.ndarray) -> None:
        self.host = a
        self.shape, self.ndim, self.dtype = a.shape, a.ndim, a.dtype
        self.__cuda_array_interface__ = {**a.__array_interface__, "version": 3, "stream": None}

    def reshape(self, *shape):
        return HostDeviceArray(self.host.reshape(*shape))

    def __getitem__(self, index):
        return HostDeviceArray(self.host[index])


class HostKind(backend._NumbaKind):
    """Allocates :class:`HostDeviceArray` results; one stream."""

    def empty(self, shape, dtype, like):
        return HostDeviceArray(np.zeros(shape, dtype))

    zeros = empty

    def stream_key(self, like):
        return 0, 0

    view = backend._Kind.view


class Recorder:
    """Stands in for the direct launcher: records each launch, and checks that the
    signature a plan kept for it is that of its arguments."""

    def __init__(self) -> None:
        self.launches = []

    def launch(self, slot, kernel, grid, args, signature):
        assert signature == backend.signature_of(args), kernel.py_func.__name__
        self.launches.append((kernel, args))


@pytest.fixture(scope="module")
def launches():
    """Every launch of every public function over a matrix of inputs."""
    be = backend.CudaBackend.__new__(backend.CudaBackend)
    be.cuda, be.kernels, be.simulated = cuda, kernels, False
    be._kinds, be._slots, be._plans = {}, {}, {}
    be._slots_lock = threading.Lock()
    be._direct = Recorder()
    be._kinds[HostDeviceArray] = HostKind(be)
    be.from_host = lambda a: be.view(HostDeviceArray(np.array(a)), a.shape)
    be.to_host = lambda a: (a.view() if type(a) is backend.DeviceArg else a).host
    mp = pytest.MonkeyPatch()
    mp.setattr(_dispatch, "cuda_backend", lambda: be)
    try:
        for shape, axis in (((6, 4), 1), ((3, 4, 5), 1), ((2, 3, 2, 4), -1)):
            for dtype in (np.float32, np.float64):
                for n_dir in (None, 2):
                    _every_call(make_case(shape, axis, dtype, n_dir=n_dir), axis)
    finally:
        mp.undo()
    return be._direct.launches


class _SingleRank:
    def allreduce_sum(self, buffer):
        pass


def _every_call(c: dict, axis: int) -> None:
    d = {k: HostDeviceArray(v) for k, v in c.items()}
    x, g, dz, u, hz, dzd = (d[k] for k in ("x", "gamma", "dz", "u", "hz", "dz_dot"))
    ug, ub = d["u_gamma"], d["u_beta"]
    numbabn.forward(x, g, d["beta"], axis=axis)
    for st in (numbabn.batch_stats(x, axis=axis), None,
               numbabn.batch_stats(x, axis=axis, comm=_SingleRank())):  # fmt: skip
        kw = {"axis": axis} if st is None else {}
        numbabn.jvp(x, g, u, st, **kw)
        numbabn.jvp(x, g, u, st, u_gamma=ug, u_beta=ub, **kw)
        numbabn.jvp(x, g, u, st, u_gamma=ug, **kw)
        numbabn.vjp(x, g, dz, st, **kw)
        numbabn.rvp(x, g, dz, u, st, **kw)
        numbabn.ggnvp(x, g, u, hz, st, **kw)
        numbabn.hvp(x, g, dz, u, hz, st, **kw)
        numbabn.hvp(x, g, dz, u, lambda t: t, st, **kw)
        numbabn.rop_backward(x, g, dz, dzd, u, st, **kw)
        numbabn.rop_backward(x, g, dz, dzd, u, st, u_gamma=ug, **kw)
        numbabn.rop_backward(x, g, dz, None, u, st, u_gamma=ug, **kw)
        numbabn.vjp_backward(x, g, dz, u, st, a_gamma=ug, a_beta=ub, **kw)
    numbabn.forward(x, g, d["beta"], axis=axis, comm=_SingleRank())


def _launch_kernels():
    """Every ``@cuda.jit`` kernel of numbabn (device functions excluded)."""
    from numba.cuda.dispatcher import CUDADispatcher

    found = [k for k in vars(kernels).values() if isinstance(k, CUDADispatcher)]
    found += [k for k in vars(kernels.build(256, 32)).values() if isinstance(k, CUDADispatcher)]
    return [k for k in found if not k.targetoptions.get("device")]


def _signatures(launches) -> dict:
    """The distinct signatures each kernel is launched with."""
    found = {}
    for kernel, args in launches:
        found.setdefault(kernel.py_func, set()).add(backend.signature_of(args))
    return found


def test_every_kernel_is_launched(launches):
    launched = {k.py_func.__name__ for k, _ in launches}
    assert launched == {k.py_func.__name__ for k in _launch_kernels()}


@pytest.mark.parametrize("name", ["stats_reduce", "moment_reduce", "apply_affine",
                                  "coefficients", "finish_stats", "copy_flat"])  # fmt: skip
def test_every_launch_signature_compiles(launches, name):
    signatures = {f: s for f, s in _signatures(launches).items() if f.__name__ == name}
    assert signatures, name
    for py_func, sigs in signatures.items():
        for sig in sigs:
            ptx, _ = cuda.compile_ptx(py_func, sig, cc=CC)
            assert ".visible .entry" in ptx


class _DeviceMemory:
    """What Numba's launcher reads of a C-contiguous device array."""

    __cuda_memory__ = True

    def __init__(self, a: backend.DeviceArg) -> None:
        strides = backend._c_strides(a.shape, a.dtype.itemsize)
        layout = devicearray._StridedLayoutShim(
            strides_in_bytes=strides, is_contiguous_c=True, is_contiguous_f=len(a.shape) <= 1,
            is_contiguous_any=True,
        )  # fmt: skip
        self._strided_memory_view_shim = devicearray._StridedMemoryViewShim(
            ptr=a.ptr, shape=a.shape, dtype=a.dtype, size=a.size, _layout=layout
        )


def _as_interface(a):
    """A stand-in with the CUDA array interface of a DeviceArg, for Numba's typeof."""
    if type(a) is not backend.DeviceArg:
        return a
    host = np.empty(a.shape, a.dtype)
    return HostDeviceArray(host)


def test_launches_pass_what_the_numba_launcher_would(launches):
    """The direct route's argument types equal Numba's typeof of the arrays, and its
    kernel parameters equal those Numba's launcher marshals for them."""
    from numba.cuda.dispatcher import _Kernel

    numba_kernel = SimpleNamespace(extensions=[kernels.NoneAsNullPointer()])
    for kernel, args in launches:
        inferred = tuple(typeof(_as_interface(a), Purpose.argument) for a in args)
        assert backend.signature_of(args) == inferred, kernel.py_func.__name__
        signature = backend.signature_of(args)
        want = []
        for ty, a in zip(signature, args, strict=True):
            value = _DeviceMemory(a) if type(a) is backend.DeviceArg else a
            _Kernel._prepare_args(numba_kernel, ty, value, 0, [], want)
        got = backend.marshal(args)
        assert [(type(p), getattr(p, "value", p)) for p in got] == [
            (type(p), getattr(p, "value", p)) for p in want
        ], kernel.py_func.__name__


def test_cuda_arrays_without_a_usable_gpu_raise_runtime_error():
    if cuda.is_available():
        pytest.skip("a GPU is usable here")

    class FakeDeviceArray:
        shape, ndim, dtype = (4, 3), 2, np.dtype(np.float64)
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f8", "data": (0, False),
                                    "version": 3}  # fmt: skip

    with pytest.raises(RuntimeError, match="CUDA is not usable on this machine"):
        numbabn.batch_stats(FakeDeviceArray())


def test_none_arguments_are_launched_as_null_pointers():
    """An absent array (None) reaches a kernel as one null pointer argument.

    Numba-CUDA's launcher has no rule for ``none`` (the simulator never
    marshals arguments, so only a GPU showed it); the kernels carry an
    extension that supplies one. This calls the launcher's own marshalling.
    """
    from numba.cuda.dispatcher import _Kernel

    marshalled = []
    with_extension = SimpleNamespace(extensions=[kernels.NoneAsNullPointer()])
    _Kernel._prepare_args(with_extension, types.none, None, None, [], marshalled)
    assert [(type(a).__name__, a.value) for a in marshalled] == [("c_ulong", 0)]
    with pytest.raises(NotImplementedError):
        _Kernel._prepare_args(SimpleNamespace(extensions=[]), types.none, None, None, [], [])
    launch_kernels = _launch_kernels()
    assert len(launch_kernels) >= 6
    for k in launch_kernels:
        assert any(isinstance(e, kernels.NoneAsNullPointer) for e in k.extensions), k
