"""Shared references of the numbabn.torch tests, and the check of the one closed form
derived for it: the output-shaped second directional derivative D²z[(u, g), (v, h)]
against the third derivative of torch's own BatchNorm (differentiating its double
backward in the output cotangent).

The other test_torch_* modules import the helpers from here.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import numbabn.torch as nbt  # noqa: E402
from numbabn.torch._closed_form import moments, second_directional  # noqa: E402

F64, F32 = torch.float64, torch.float32
SHAPES = [(5, 7), (5, 7, 4), (5, 7, 3, 4), (5, 3, 3, 4, 2)]
#: Largest |error| / max(|reference|, 1) accepted, by dtype.
TOL = {F64: 1e-10, F32: 2e-4}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    a, e = actual.detach().double(), expected.detach().double()
    return float((a - e).abs().max() / max(float(e.abs().max()), 1.0))


def assert_close(actual, expected, dtype=F64, what: str = "") -> None:
    """Tensors (or matching sequences or dicts of them) equal within ``TOL[dtype]``."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), what
        actual, expected = list(actual.values()), list(expected.values())
    if isinstance(expected, tuple | list):
        assert len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, dtype, f"{what}[{i}]")
        return
    err = relative_error(actual, expected)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3e}"


def make_inputs(shape, dtype=F64, seed=0, affine=True, channels_last=False):
    """x (mean 1.5, std 2), weight and bias (None without ``affine``)."""
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 + 2.0 * torch.randn(shape, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(
            memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        )
    if not affine:
        return x, None, None
    n_ch = shape[1]
    weight = 1.0 + 0.5 * torch.randn(n_ch, generator=gen, dtype=dtype)
    return x, weight, torch.randn(n_ch, generator=gen, dtype=dtype)


def like(t: torch.Tensor | None, seed: int) -> torch.Tensor | None:
    """A random tensor shaped (and laid out) like ``t``."""
    if t is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=t.dtype).to(memory_format=_format(t))


def _format(t: torch.Tensor):
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def torch_bn(x, weight=None, bias=None, eps=1e-5):
    """torch's training-mode BatchNorm (the reference)."""
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


def plain_bn(x, weight=None, bias=None, eps=1e-5):
    """Training-mode BatchNorm in elementary torch operations, for derivatives of any
    order (torch's own BatchNorm has wrong third derivatives in x)."""
    dims = (0, *range(2, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    var = (x - mean).square().mean(dim=dims, keepdim=True)
    z = (x - mean) / torch.sqrt(var + eps)
    shape = (1, -1, *(1,) * (x.ndim - 2))
    if weight is not None:
        z = z * weight.reshape(shape)
    return z if bias is None else z + bias.reshape(shape)


def ours(x, weight=None, bias=None, eps=1e-5):
    return nbt.batch_norm(x, weight, bias, eps=eps)


def loss_of(z: torch.Tensor) -> torch.Tensor:
    """A non-quadratic scalar loss of the layer output, so that both the output
    curvature and the layer's own second derivative enter a Hessian. Its weights are
    deterministic (no random call: it runs under vmap)."""
    c = torch.cos(0.37 * torch.arange(z.numel(), dtype=z.dtype) + 1.0).reshape(z.shape)
    return (c * torch.sin(z)).sum()


def gradients_and_hvp(layer, args, directions):
    """Gradient and Hessian-vector product of ``loss_of(layer(*args))`` by double
    backward (``torch.autograd.grad`` twice); None arguments are skipped."""
    idx = [i for i, a in enumerate(args) if a is not None]
    leaves = [a.detach().clone().requires_grad_() for a in args if a is not None]
    full = list(args)
    for i, leaf in zip(idx, leaves, strict=True):
        full[i] = leaf
    grads = torch.autograd.grad(loss_of(layer(*full)), leaves, create_graph=True)
    dot = sum((g * directions[i]).sum() for g, i in zip(grads, idx, strict=True))
    hvp = torch.autograd.grad(dot, leaves)
    return tuple(g.detach() for g in grads), hvp


def second_directional_by_torch(x, weight, bias, u, g, v, h):
    """D²z[(u, g), (v, h)] as the gradient in the output cotangent c of the double
    backward of torch's BatchNorm, v . d/d(x, w) [ (u, g) . d/d(x, w) <c, z> ]."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    c = torch.zeros_like(x, requires_grad=True)
    first = torch.autograd.grad(
        (c * torch_bn(x, weight, bias)).sum(), (x, weight), create_graph=True
    )
    along_u = (first[0] * u).sum() + (first[1] * g).sum()
    second = torch.autograd.grad(along_u, (x, weight), create_graph=True)
    (d2,) = torch.autograd.grad((second[0] * v).sum() + (second[1] * h).sum(), c)
    return d2


@pytest.mark.parametrize("shape", SHAPES)
def test_second_directional_closed_form(shape):
    x, w, b = make_inputs(shape)
    u, v = like(x, 1), like(x, 2)
    g, h = like(w, 3), like(w, 4)
    mean, invstd = moments(x, 1e-5)
    count = x.numel() // x.shape[1]
    got = second_directional(x, w, mean, invstd, count, u, g, v, h)
    assert_close(got, second_directional_by_torch(x, w, b, u, g, v, h), what="D²z")
    # symmetric in its two directions; None is a zero direction
    assert_close(second_directional(x, w, mean, invstd, count, v, h, u, g), got, what="symmetry")
    zero_g = second_directional_by_torch(x, w, b, u, torch.zeros_like(g), v, h)
    assert_close(second_directional(x, w, mean, invstd, count, u, None, v, h), zero_g, what="g=0")


def test_second_directional_broadcasts_directions():
    x, w, _ = make_inputs((4, 3, 5))
    mean, invstd = moments(x, 1e-5)
    us = torch.stack([like(x, s) for s in range(3)])
    hs = torch.stack([like(w, 10 + s) for s in range(3)])
    v = like(x, 20)
    got = second_directional(x, w, mean, invstd, 20, us, None, v, hs)
    for k in range(3):
        one = second_directional(x, w, mean, invstd, 20, us[k], None, v, hs[k])
        assert_close(got[k], one, what=f"direction {k}")


def test_reference_helpers_agree():
    x, w, b = make_inputs((6, 3, 2))
    assert_close(plain_bn(x, w, b), torch_bn(x, w, b), what="plain forward")
    assert_close(ours(x, w, b), torch_bn(x, w, b), what="forward")
    directions = [like(a, 10 + i) for i, a in enumerate((x, w, b))]
    got = gradients_and_hvp(plain_bn, (x, w, b), directions)
    want = gradients_and_hvp(torch_bn, (x, w, b), directions)
    assert_close(got, want, what="plain gradient and hvp")
