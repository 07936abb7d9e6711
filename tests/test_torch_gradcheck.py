"""torch.autograd.gradcheck and gradgradcheck (numerical against analytical
derivatives) in every mode torch offers for a custom Function, a third derivative,
and batched gradients through torch.func.vmap.

gradcheck's own ``check_batched_grad`` and ``check_batched_forward_grad`` run the
deprecated prototype vmap (``torch._vmap_internals``), which ignores an
autograd.Function's vmap rule and so cannot run numbabn's kernels; the same
checks are made here with ``torch.func.vmap``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.autograd import gradcheck, gradgradcheck  # noqa: E402
from torch.func import vmap  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

from test_torch_reference import assert_close, like, make_inputs, plain_bn  # noqa: E402

SMALL = [(4, 3), (3, 2, 3), (2, 2, 2, 3)]


def _leaves(shape, affine=True, channels_last=False):
    x, w, b = make_inputs(shape, affine=affine, channels_last=channels_last)
    return tuple(t.requires_grad_() for t in (x, w, b) if t is not None)


def _layer(*args):
    return nbt.batch_norm(*args, eps=1e-3)


@pytest.mark.parametrize("shape", SMALL)
def test_gradcheck_reverse_and_forward_mode(shape):
    args = _leaves(shape)
    assert gradcheck(_layer, args, check_forward_ad=True, check_backward_ad=True)


@pytest.mark.parametrize("shape", SMALL)
def test_gradgradcheck_every_mode(shape):
    args = _leaves(shape)
    assert gradgradcheck(_layer, args, check_fwd_over_rev=True, check_rev_over_rev=True)


def test_gradcheck_without_parameters_and_channels_last():
    (x,) = _leaves((3, 2, 2, 2), affine=False, channels_last=True)
    assert gradcheck(_layer, (x,), check_forward_ad=True)
    assert gradgradcheck(_layer, (x,), check_fwd_over_rev=True)


def test_third_derivative_gradgradcheck():
    """The gradient's gradient differentiated once more (third order)."""
    args = _leaves((3, 2, 2))

    def gradient(x, w, b):
        return torch.autograd.grad((_layer(x, w, b) ** 2).sum(), (x, w), create_graph=True)

    assert gradgradcheck(gradient, args)


def test_third_derivative_through_a_non_leaf_input():
    """Third derivative w.r.t. a tensor whose path to the layer passes another op (the
    gradient the engine needs must not be skipped), against elementary torch operations:
    torch's own BatchNorm gets this one wrong."""
    x0, w, b = _leaves((4, 2, 3))

    def third(layer):
        x = x0 * 1.5
        (g,) = torch.autograd.grad((layer(x, w, b) ** 3).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), x, create_graph=True)
        return torch.autograd.grad(h.sin().sum(), (x0, w))

    assert_close(third(_layer), third(lambda *a: plain_bn(*a, eps=1e-3)), what="third")


def test_batched_gradients_with_func_vmap():
    """vmap over output cotangents of the gradient and of the gradient's gradient."""
    x, w, b = _leaves((4, 3, 2))
    z = _layer(x, w, b)
    cots = torch.stack([like(z, s) for s in range(3)])

    def vjp(c):
        return torch.autograd.grad(z, (x, w, b), c, retain_graph=True, create_graph=True)

    batched = vmap(vjp)(cots)
    for k in range(3):
        assert_close(tuple(t[k] for t in batched), vjp(cots[k]), what=f"vjp {k}")
    grads = vjp(like(z, 9))
    outer = torch.stack([like(grads[0], 20 + s) for s in range(3)])

    def vjp2(c):
        return torch.autograd.grad(grads[0], (x, w), c, retain_graph=True)

    batched2 = vmap(vjp2)(outer)
    for k in range(3):
        assert_close(tuple(t[k] for t in batched2), vjp2(outer[k]), what=f"vjp of vjp {k}")


def test_prototype_vmap_of_gradcheck_gets_a_clear_error():
    args = _leaves((3, 2))
    with pytest.raises(Exception, match="use torch.func.vmap"):
        gradcheck(_layer, args, check_batched_grad=True)


def _leaf_cases():
    """Each autograd leaf as a function of x and weight (statistics recomputed from x,
    as in the layer) and of its directions; V=2 directions where a leaf takes them."""
    from numbabn.torch import _functions as fn
    from numbabn.torch._kernels import Spec

    spec = Spec(1e-3)
    gen = torch.Generator().manual_seed(5)
    shape = (4, 2, 3)

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    def stats(x):
        return fn.BatchNormFn.apply(x.detach(), None, None, spec)[1]

    dz, dzd, u, v = (r(*shape) for _ in range(4))
    ug, vg = r(2), r(2)
    us, dzs, ugs = r(2, *shape), r(2, *shape), r(2, 2)
    return {
        "Backward": (lambda x, w, a: fn.Backward.apply(a, x, w, stats(x), spec), dz),
        "Backward V": (lambda x, w, a: fn.Backward.apply(a, x, w, stats(x), spec), dzs),
        "Tangent": (lambda x, w, a: fn.Tangent.apply(x, w, stats(x), a, ug, vg, spec), u),
        "Tangent V": (lambda x, w, a: fn.Tangent.apply(x, w, stats(x), a, ugs, None, spec), us),
        "Rop": (lambda x, w, a: fn.Rop.apply(x, w, stats(x), dz, dzd, a, ug, spec), u),
        "Rop V": (lambda x, w, a: fn.Rop.apply(x, w, stats(x), a, None, us, ugs, spec), dzs),
        "Second": (lambda x, w, a: fn.Second.apply(x, w, stats(x), a, ug, v, vg, spec), u),
        "Second V": (lambda x, w, a: fn.Second.apply(x, w, stats(x), a, ugs, v, None, spec), us),
        "TangentAndRop": (
            lambda x, w, a: fn.TangentAndRop.apply(x, w, stats(x), dz, a, ug, vg, spec), u),
        "TangentAndRop dz": (
            lambda x, w, a: fn.TangentAndRop.apply(x, w, stats(x), a, u, ug, vg, spec), dz),
        "TangentAndRop V": (
            lambda x, w, a: fn.TangentAndRop.apply(x, w, stats(x), dz, a, ugs, None, spec), us),
    }  # fmt: skip


@pytest.mark.parametrize("leaf", list(_leaf_cases()))
def test_each_leaf_gradcheck_in_x_weight_and_direction(leaf):
    fn, direction = _leaf_cases()[leaf]
    x, w, _ = make_inputs((4, 2, 3))
    args = (x.requires_grad_(), w.requires_grad_(), direction.clone().requires_grad_())
    assert gradcheck(fn, args, check_forward_ad=True)
