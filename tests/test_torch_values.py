"""numbabn.torch.batch_norm against torch.nn.functional.batch_norm (training mode):
values, gradients and Hessian-vector products (double backward), on 2-D to 5-D
batches, a batch of two, channels_last, float32, and without weight or bias;
the update of the running statistics."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

from test_torch_reference import (  # noqa: E402
    F32,
    F64,
    SHAPES,
    assert_close,
    gradients_and_hvp,
    like,
    make_inputs,
    ours,
    torch_bn,
)

CASES = [
    *[(s, F64, False) for s in SHAPES],
    ((2, 7, 3), F64, False),  # a batch of two
    ((5, 7, 3, 4), F64, True),  # channels_last
    ((5, 3, 3, 4, 2), F64, True),  # channels_last_3d
    ((5, 7, 3, 4), F32, False),
    ((5, 7, 3, 4), F32, True),
    ((5, 7), F32, False),
]


def _id(case):
    shape, dtype, cl = case
    return "x".join(map(str, shape)) + ("-f32" if dtype == F32 else "") + ("-cl" if cl else "")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
@pytest.mark.parametrize("params", ["affine", "none", "weight only"])
def test_value_gradient_and_hvp_equal_torch(case, params):
    shape, dtype, channels_last = case
    x, w, b = make_inputs(shape, dtype, affine=params != "none", channels_last=channels_last)
    if params == "weight only":
        b = None
    args = (x, w, b)
    z = ours(*args)
    assert z.dtype == dtype and z.shape == x.shape
    assert_close(z, torch_bn(*args), dtype, "forward")
    if channels_last:  # the memory format is kept
        assert z.is_contiguous(memory_format=_format_of(x)) and not z.is_contiguous()
    directions = [like(a, 100 + i) for i, a in enumerate(args)]
    got_grads, got_hvp = gradients_and_hvp(ours, args, directions)
    want_grads, want_hvp = gradients_and_hvp(torch_bn, args, directions)
    assert_close(got_grads, want_grads, dtype, "gradient")
    assert_close(got_hvp, want_hvp, dtype, "hvp")


def _format_of(x):
    return torch.channels_last if x.ndim == 4 else torch.channels_last_3d


@pytest.mark.parametrize("momentum", [0.1, 0.7])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_running_statistics_follow_torch(momentum, dtype):
    n_ch = 4
    mine = [torch.zeros(n_ch, dtype=dtype), torch.ones(n_ch, dtype=dtype)]
    theirs = [t.clone() for t in mine]
    for step in range(4):
        x, w, b = make_inputs((6, n_ch, 3), dtype, seed=step)
        nbt.batch_norm(x, w, b, running_mean=mine[0], running_var=mine[1], momentum=momentum)
        F.batch_norm(x, theirs[0], theirs[1], w, b, training=True, momentum=momentum)
    assert not torch.equal(mine[0], torch.zeros(n_ch, dtype=dtype))
    assert_close(mine[0], theirs[0], dtype, "running_mean")
    assert_close(mine[1], theirs[1], dtype, "running_var")  # unbiased, as torch


def test_eps_is_used():
    x, w, b = make_inputs((4, 3, 2))
    x = x * 1e-2  # variance comparable to eps
    assert_close(ours(x, w, b, eps=0.3), torch_bn(x, w, b, eps=0.3), what="eps=0.3")
    assert torch.max((ours(x, w, b, eps=0.3) - ours(x, w, b)).abs()) > 0.1


def test_input_is_not_modified_and_shares_no_memory_with_output():
    x, w, b = make_inputs((5, 3, 4))
    before = x.clone()
    z = ours(x, w, b)
    assert torch.equal(x, before)
    z.add_(1.0)  # the output is a fresh, writable tensor
    assert torch.equal(x, before)


def test_strided_input():
    x, w, b = make_inputs((5, 6, 8))
    view = x[:, ::2, 1::2]  # not contiguous in any format: copied once
    assert_close(ours(view, w[:3], b[:3]), torch_bn(view, w[:3], b[:3]), what="strided")


def test_leaves_of_one_call_check_its_statistics_once():
    """The leaves of one call share one numbabn BatchStats per statistics tensor
    (checked on first use, then run by plan); a tensor changed in place gets a new one."""
    from numbabn.torch import _functions as fn
    from numbabn.torch._kernels import Spec

    x, w, b = make_inputs((6, 3, 4))
    dz, u = like(x, 1), like(x, 2)
    spec = Spec(1e-5)
    _, stats = fn.BatchNormFn.apply(x, w, b, spec)
    first = fn.Backward.apply(dz, x, w, stats, spec)
    fn.Tangent.apply(x, w, stats, u, w, b, spec)
    assert len(spec.known_stats) == 1
    (kept,) = spec.known_stats.values()
    assert kept._prepared is not None  # checked by numbabn, so later calls take the plan
    assert_close(fn.Backward.apply(dz, x, w, stats, spec), first, what="kept statistics")
    stats[1:3].mul_(2.0)  # invstd doubled: a new version of the tensor
    second = fn.Backward.apply(dz, x, w, stats, spec)
    assert len(spec.known_stats) == 2
    assert torch.max((second[0] - first[0]).abs()) > 0.1
