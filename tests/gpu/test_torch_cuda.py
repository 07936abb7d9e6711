"""numbabn.torch on CUDA tensors (a real GPU that PyTorch sees; skipped on the
simulator): value, gradients, double backward and forward-over-reverse of the
layer equal torch's own BatchNorm on the GPU, results stay on the device, and the
modules keep channels_last and update their running statistics as torch's."""

from __future__ import annotations

import pytest

from device_helpers import SIMULATED

torch = pytest.importorskip("torch")
if SIMULATED or not torch.cuda.is_available():
    pytest.skip("numbabn.torch on CUDA tensors needs a real GPU", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402
from torch.func import grad, jvp  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

SHAPES = [(5, 7), (5, 7, 4), (8, 7, 3, 4), (5, 3, 3, 4, 2), (64, 32, 16, 16)]
TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


def _inputs(shape, dtype, seed=0, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 + 2.0 * torch.randn(shape, generator=gen, dtype=dtype)
    w = 1.0 + 0.5 * torch.randn(shape[1], generator=gen, dtype=dtype)
    b = torch.randn(shape[1], generator=gen, dtype=dtype)
    weights = torch.randn(shape, generator=gen, dtype=dtype)
    v = [torch.randn(t.shape, generator=gen, dtype=dtype) for t in (x, w, b)]
    x = x.cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w.cuda(), b.cuda(), weights.cuda(), [t.cuda() for t in v]


def _assert_close(got, want, dtype, what):
    assert got.is_cuda, f"{what}: not on the GPU"
    got, want = got.detach().double(), want.detach().double()
    err = float((got - want).abs().max() / max(float(want.abs().max()), 1.0))
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e}"


def _theirs(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True)


def _value_gradient_hvp(layer, x, w, b, weights, v):
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    z = layer(*leaves)
    loss = (torch.sin(z) * weights).sum()
    g = torch.autograd.grad(loss, leaves, create_graph=True)
    hv = torch.autograd.grad(sum((a * d).sum() for a, d in zip(g, v, strict=True)), leaves)
    return [z.detach(), *(t.detach() for t in g), *hv]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_gradient_and_double_backward_equal_torch(shape, dtype):
    args = _inputs(shape, dtype)
    ours = _value_gradient_hvp(nbt.batch_norm, *args)
    theirs = _value_gradient_hvp(_theirs, *args)
    names = ["z", "dx", "dw", "db", "Hv x", "Hv w", "Hv b"]
    for a, e, name in zip(ours, theirs, names, strict=True):
        _assert_close(a, e, dtype, name)


def test_forward_over_reverse_equals_double_backward():
    x, w, b, weights, v = _inputs((8, 7, 3, 4), torch.float64)

    def loss(x_, w_, b_):
        return (torch.sin(nbt.batch_norm(x_, w_, b_)) * weights).sum()

    got = jvp(grad(loss, argnums=(0, 1, 2)), (x, w, b), tuple(v))[1]
    want = _value_gradient_hvp(_theirs, x, w, b, weights, v)[4:]
    for a, e, name in zip(got, want, ("x", "w", "b"), strict=True):
        _assert_close(a, e, torch.float64, f"jvp(grad) {name}")


def test_module_keeps_channels_last_and_running_statistics():
    x = _inputs((16, 8, 5, 5), torch.float32, channels_last=True)[0]
    theirs = torch.nn.BatchNorm2d(8).cuda()
    ours = nbt.convert_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(8))).cuda()
    for step in range(3):
        z = ours(x + step)
        want = theirs(x + step)
        assert z.is_contiguous(memory_format=torch.channels_last)
        _assert_close(z, want, torch.float32, f"step {step}")
    _assert_close(ours[0].running_mean, theirs.running_mean, torch.float32, "running_mean")
    _assert_close(ours[0].running_var, theirs.running_var, torch.float32, "running_var")
