"""Compile proof of the CUDA kernels: ``numba.cuda.compile_ptx`` for compute
capability 9.0 (H100) of every kernel, for both dtypes and every combination
of optional arrays that the operations use. The simulator does not type-check
kernels; this does, without a GPU or a driver."""

import os
from types import SimpleNamespace

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx needs the real CUDA target", allow_module_level=True)

from numba import cuda, types

from numbabn.kernels import cuda as kernels

CC = (9, 0)
F64 = types.float64
NONE = types.none


def arr(dtype, ndim):
    return types.Array(dtype, ndim, "C")


# (dz, h, u, w) present in: jvp, vjp/ggnvp(callable), rvp, hvp(diag), ggnvp(diag),
# hvp(callable), rop_backward; and forward (none).
VARIANTS = [
    (False, False, True, False),
    (False, False, False, True),
    (True, False, True, False),
    (True, True, True, False),
    (False, True, True, False),
    (True, False, True, True),
    (False, False, False, False),
]


def _optional(dtype, present):
    dz, h, u, w = present
    x_like, dirs = arr(dtype, 3), arr(dtype, 4)
    return (x_like if dz else NONE, x_like if h else NONE, dirs if u else NONE, dirs if w else NONE)


def _ptx(kernel, signature):
    ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=CC)
    assert ".visible .entry" in ptx
    return ptx


@pytest.mark.parametrize("dtype", [types.float32, types.float64])
def test_reduction_kernels_compile(dtype):
    k = kernels.build(256, 32)
    x = arr(dtype, 3)
    _ptx(k.shifted_partials, (x, arr(F64, 1), arr(F64, 4)))
    for present in VARIANTS[:-1]:
        sig = (x, arr(F64, 1), arr(F64, 1), *_optional(dtype, present), arr(F64, 4))
        _ptx(k.moment_partials, sig)


@pytest.mark.parametrize("dtype", [types.float32, types.float64])
def test_apply_and_conversion_kernels_compile(dtype):
    for present in VARIANTS:
        sig = (arr(dtype, 3), arr(F64, 1), *_optional(dtype, present), arr(F64, 3),
               arr(dtype, 4))  # fmt: skip
        _ptx(kernels.apply_affine, sig)
    _ptx(kernels.to_float64_rows, (arr(dtype, 2), arr(F64, 2)))
    _ptx(kernels.first_elements, (arr(dtype, 3), arr(F64, 1)))
    _ptx(kernels.parameter_outputs, (arr(F64, 3), arr(dtype, 2), arr(dtype, 2)))
    _ptx(kernels.copy_flat, (arr(F64, 1), arr(dtype, 1)))


def test_per_channel_kernels_compile():
    _ptx(kernels.merge_partials, (arr(F64, 4), arr(F64, 3)))
    _ptx(kernels.finish_stats, (arr(F64, 1), arr(F64, 2), F64, F64, *[arr(F64, 1)] * 3))
    _ptx(kernels.fill, (arr(F64, 3), F64))
    for tangents in ((NONE, NONE), (arr(F64, 2), arr(F64, 2)), (arr(F64, 2), NONE)):
        sig = (types.int64, arr(F64, 3), arr(F64, 1), arr(F64, 1), F64, *tangents, arr(F64, 3))
        _ptx(kernels.coefficients, sig)


def test_cuda_arrays_without_a_usable_gpu_raise_runtime_error():
    if cuda.is_available():
        pytest.skip("a GPU is usable here")
    import numpy as np

    import numbabn

    class FakeDeviceArray:
        shape, ndim, dtype = (4, 3), 2, np.dtype(np.float64)
        __cuda_array_interface__ = {"shape": (4, 3), "typestr": "<f8", "data": (0, False),
                                    "version": 3}  # fmt: skip

    with pytest.raises(RuntimeError, match="CUDA is not usable on this machine"):
        numbabn.batch_stats(FakeDeviceArray())


def _launch_kernels():
    """Every ``@cuda.jit`` kernel of numbabn (device functions excluded)."""
    from numba.cuda.dispatcher import CUDADispatcher

    found = [k for k in vars(kernels).values() if isinstance(k, CUDADispatcher)]
    found += [k for k in vars(kernels.build(256, 32)).values() if isinstance(k, CUDADispatcher)]
    return [k for k in found if not k.targetoptions.get("device")]


def test_none_arguments_are_launched_as_null_pointers():
    """An absent array (None) reaches a kernel as one null pointer argument.

    Numba-CUDA's launcher has no rule for ``none`` (the simulator never
    marshals arguments, so only a GPU showed it); the kernels carry an
    extension that supplies one. This calls the launcher's own marshalling.
    """
    from numba.cuda.dispatcher import _Kernel

    marshalled = []
    with_extension = SimpleNamespace(extensions=[kernels.NoneAsNullPointer()])
    _Kernel._prepare_args(with_extension, NONE, None, None, [], marshalled)
    assert [(type(a).__name__, a.value) for a in marshalled] == [("c_ulong", 0)]
    with pytest.raises(NotImplementedError):
        _Kernel._prepare_args(SimpleNamespace(extensions=[]), NONE, None, None, [], [])
    launch_kernels = _launch_kernels()
    assert len(launch_kernels) >= 10
    for k in launch_kernels:
        assert any(isinstance(e, kernels.NoneAsNullPointer) for e in k.extensions), k
