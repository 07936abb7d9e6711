"""torch.func transforms through numbabn's BatchNorm, against double backward
(``torch.autograd.grad`` twice) through torch's BatchNorm: jvp(grad), jvp(jacrev),
jacfwd(jacrev) and jacrev(jacrev) (the Hessian), jvp(jvp), and vmap over directions of each; for x,
weight and bias of one layer, and for the parameters of a small
Conv2d-BatchNorm2d-ReLU-Linear net. Also torch.autograd.functional's hvp and vhp
(the double-backward trick), per-sample vmap, and running statistics inside
transforms.

Comparisons are with double backward, not with torch's BatchNorm under the same
transforms, which is wrong in some of them.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

from test_torch_reference import (  # noqa: E402
    assert_close,
    gradients_and_hvp,
    like,
    loss_of,
    make_inputs,
    ours,
    second_directional_by_torch,
    torch_bn,
)

ARGS = ["x", "weight", "bias", "all"]
N_DIR = 3


def _layer_problem(shape=(5, 3, 4)):
    args = make_inputs(shape)
    return args, [like(a, 30 + i) for i, a in enumerate(args)]


def _restricted(layer, args, which: str):
    """The loss as a function of the selected arguments only, and their indices."""
    idx = [0, 1, 2] if which == "all" else [ARGS.index(which)]

    def f(*sel):
        full = list(args)
        for i, a in zip(idx, sel, strict=True):
            full[i] = a
        return loss_of(layer(*full))

    return f, idx


def _restricted_problem(args, which):
    """numbabn's BatchNorm as a function of the arguments ``which`` names: the
    function, their indices, their values and the argnums for torch.func."""
    f, idx = _restricted(ours, args, which)
    return f, idx, tuple(args[i] for i in idx), tuple(range(len(idx)))


def _reference_hvp(args, directions, idx):
    zero = [d if i in idx else torch.zeros_like(d) for i, d in enumerate(directions)]
    _, hvp = gradients_and_hvp(torch_bn, args, zero)
    return tuple(hvp[i] for i in idx)


@pytest.mark.parametrize("which", ARGS)
def test_jvp_of_grad_and_of_jacrev(which):
    args, directions = _layer_problem()
    f, idx, primals, argnums = _restricted_problem(args, which)
    tangents = tuple(directions[i] for i in idx)
    want = _reference_hvp(args, directions, idx)
    assert_close(jvp(grad(f, argnums=argnums), primals, tangents)[1], want, what="jvp(grad)")
    assert_close(jvp(jacrev(f, argnums=argnums), primals, tangents)[1], want, what="jvp(jacrev)")


@pytest.mark.parametrize("which", ARGS)
def test_vmap_over_directions_of_jvp_grad_and_jvp_jacrev(which):
    args, _ = _layer_problem()
    f, idx, primals, argnums = _restricted_problem(args, which)
    stacks = [torch.stack([like(a, 100 * k + i) for k in range(N_DIR)]) for i, a in enumerate(args)]
    tangents = tuple(stacks[i] for i in idx)
    for outer in (grad, jacrev):
        got = vmap(lambda *t, outer=outer: jvp(outer(f, argnums=argnums), primals, t)[1])(*tangents)
        for k in range(N_DIR):
            want = _reference_hvp(args, [s[k] for s in stacks], idx)
            assert_close(tuple(g[k] for g in got), want, what=f"vmap {outer.__name__} {k}")


@pytest.mark.parametrize("which", ARGS)
def test_hessian_jacfwd_and_jacrev_of_jacrev(which):
    args, _ = _layer_problem((3, 2, 2))
    f, idx, primals, argnums = _restricted_problem(args, which)
    g, _ = _restricted(torch_bn, args, which)
    want = torch.autograd.functional.hessian(g, primals)  # double backward
    for outer in (jacfwd, jacrev):  # jacrev: vmap over the cotangents of a backward
        got = outer(jacrev(f, argnums=argnums), argnums=argnums)(*primals)
        for a in range(len(idx)):
            for b in range(len(idx)):
                assert_close(got[a][b], want[a][b], what=f"{outer.__name__} H[{a}][{b}]")
    assert_close(hessian(f, argnums=argnums)(*primals)[0][0], want[0][0], what="hessian")


@pytest.mark.parametrize("which", ARGS)
def test_jvp_of_jvp(which):
    args, directions = _layer_problem()
    f, idx, primals, _ = _restricted_problem(args, which)
    u = tuple(directions[i] for i in idx)
    v = tuple(like(args[i], 60 + i) for i in idx)

    def along_u(*p):
        return jvp(f, p, u)[1]

    got = jvp(along_u, primals, v)[1]
    hvp = _reference_hvp(args, directions, idx)
    want = sum((h * t).sum() for h, t in zip(hvp, v, strict=True))
    assert_close(got, want, what="v.H.u")
    # several second directions at once
    vs = tuple(torch.stack([like(args[i], 70 + 10 * k + i) for k in range(N_DIR)]) for i in idx)
    batched = vmap(lambda *t: jvp(along_u, primals, t)[1])(*vs)
    for k in range(N_DIR):
        want_k = sum((h * t[k]).sum() for h, t in zip(hvp, vs, strict=True))
        assert_close(batched[k], want_k, what=f"vmap v.H.u {k}")


def test_jvp_of_jvp_of_the_layer_output():
    """The output-shaped second directional derivative D²z[(u, g), (v, h)]."""
    (x, w, b), _ = _layer_problem()
    u, v = like(x, 1), like(x, 2)
    g, h = like(w, 3), like(w, 4)

    def along(x_, w_):
        return jvp(lambda a, c: ours(a, c, b), (x_, w_), (u, g))[1]

    got = jvp(along, (x, w), (v, h))[1]
    assert_close(got, second_directional_by_torch(x, w, b, u, g, v, h), what="D²z")


def test_per_sample_vmap_gives_each_batch_its_own_statistics():
    batches = torch.stack([make_inputs((4, 3, 2), seed=s)[0] for s in range(3)])
    _, w, b = make_inputs((4, 3, 2))
    got = vmap(lambda x: ours(x, w, b))(batches)
    for k in range(3):
        assert_close(got[k], torch_bn(batches[k], w, b), what=f"batch {k}")
    grads = vmap(grad(lambda x: loss_of(ours(x, w, b))))(batches)
    for k in range(3):
        xk = batches[k].clone().requires_grad_()
        (want,) = torch.autograd.grad(loss_of(torch_bn(xk, w, b)), xk)
        assert_close(grads[k], want, what=f"gradient {k}")


# --- a small network -------------------------------------------------------------------
def _net_problem():
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4),
    ).double()  # fmt: skip
    with torch.no_grad():  # parameters away from torch's defaults (ones, zeros)
        theirs[1].weight.uniform_(0.5, 1.5)
        theirs[1].bias.normal_()
    mine = nbt.convert_batchnorm(copy.deepcopy(theirs))
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    params = {k: p.detach() for k, p in theirs.named_parameters()}
    v = {k: torch.randn_like(p) for k, p in params.items()}
    return theirs, mine, x, y, params, v


def _net_loss(net, x, y):
    buffers = {k: b.clone() for k, b in net.named_buffers()}

    def loss(p):
        return F.cross_entropy(functional_call(net, (p, buffers), (x,)), y)

    return loss


def _double_backward_hvp(net, x, y, params, v):
    p = {k: t.clone().requires_grad_() for k, t in params.items()}
    g = torch.autograd.grad(_net_loss(net, x, y)(p), list(p.values()), create_graph=True)
    dot = sum((a * v[k]).sum() for a, k in zip(g, p, strict=True))
    return dict(zip(p, torch.autograd.grad(dot, list(p.values())), strict=True))


def test_network_transforms_equal_double_backward():
    theirs, mine, x, y, params, v = _net_problem()
    want = _double_backward_hvp(theirs, x, y, params, v)
    loss = _net_loss(mine, x, y)
    assert_close(_double_backward_hvp(mine, x, y, params, v), want, what="double backward")
    got = jvp(grad(loss), (params,), (v,))[1]
    assert_close([got[k] for k in want], list(want.values()), what="jvp(grad)")
    got = jvp(jacrev(loss), (params,), (v,))[1]
    assert_close([got[k] for k in want], list(want.values()), what="jvp(jacrev)")
    full = jacfwd(jacrev(loss))(params)
    hv = {a: sum((full[a][b] * v[b]).reshape(*params[a].shape, -1).sum(-1) for b in params)
          for a in params}  # fmt: skip
    assert_close([hv[k] for k in want], list(want.values()), what="jacfwd(jacrev)")
    w2 = {k: torch.randn_like(p) for k, p in params.items()}
    vhv = jvp(lambda p: jvp(loss, (p,), (v,))[1], (params,), (w2,))[1]
    assert_close(vhv, sum((want[k] * w2[k]).sum() for k in want), what="jvp(jvp)")


def test_network_vmap_over_directions():
    theirs, mine, x, y, params, _ = _net_problem()
    loss = _net_loss(mine, x, y)
    vs = [{k: torch.randn_like(p) for k, p in params.items()} for _ in range(N_DIR)]
    stacked = {k: torch.stack([v[k] for v in vs]) for k in params}
    got = vmap(lambda t: jvp(grad(loss), (params,), (t,))[1])(stacked)
    for i, v in enumerate(vs):
        want = _double_backward_hvp(theirs, x, y, params, v)
        assert_close([got[k][i] for k in want], list(want.values()), what=f"direction {i}")


def test_autograd_functional_hvp_and_vhp_of_network():
    theirs, mine, x, y, params, v = _net_problem()
    names = list(params)

    def as_tuple_fn(net):
        loss = _net_loss(net, x, y)
        return lambda *ps: loss(dict(zip(names, ps, strict=True)))

    inputs, vec = tuple(params.values()), tuple(v[k] for k in names)
    for fn in (torch.autograd.functional.hvp, torch.autograd.functional.vhp):
        _, got = fn(as_tuple_fn(mine), inputs, vec)
        _, want = fn(as_tuple_fn(theirs), inputs, vec)
        assert_close(got, want, what=fn.__name__)


def test_running_statistics_left_alone_inside_transforms_and_updated_outside():
    _, mine, x, y, params, v = _net_problem()
    bn = mine[1]
    before = {k: b.clone() for k, b in mine.named_buffers()}
    buffers = dict(mine.named_buffers())  # the module's own buffers

    def loss(p):
        return F.cross_entropy(functional_call(mine, (p, buffers), (x,)), y)

    jvp(grad(loss), (params,), (v,))
    vmap(lambda t: jvp(grad(loss), (params,), (t,))[1])({k: t[None] for k, t in v.items()})
    for k, b in mine.named_buffers():
        assert torch.equal(b, before[k]), k
    mine(x)  # outside any transform: updated as torch
    expected = 0.9 * before["1.running_mean"] + 0.1 * mine[0](x).mean(dim=(0, 2, 3))
    assert_close(bn.running_mean, expected, what="running_mean")
    assert int(bn.num_batches_tracked) == int(before["1.num_batches_tracked"]) + 1


def _batchnorm_ops(layer) -> set[str]:
    """The profiled ops with 'batch_norm' in their name during a double backward, a
    jvp(grad) and a hessian through ``layer``."""
    (x, w, b), directions = _layer_problem((3, 2, 2))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gradients_and_hvp(layer, (x, w, b), directions)
        jvp(grad(lambda a: loss_of(layer(a, w, b))), (x,), (directions[0],))
        hessian(lambda a: loss_of(layer(a, w, b)))(x)
    return {e.key for e in prof.key_averages() if "batch_norm" in e.key}


def test_no_torch_batchnorm_code_runs():
    assert "aten::native_batch_norm_backward" in _batchnorm_ops(torch_bn)  # the probe works
    assert _batchnorm_ops(ours) == set()
