"""BackPACK's HMP and GGNMP with numbabn's BatchNorm extensions, on whole networks.

Every parameter's ``p.hmp(mat)`` / ``p.ggnmp(mat)`` is checked against the
same block of the exact Hessian / GGN of an unextended copy of the network,
computed with torch autograd: the Hessian by double backward, the GGN as
``J_pᵀ H_f J_p`` with the network output's Jacobian ``J_p`` (forward mode by
the double-VJP trick) and the loss Hessian ``H_f`` in the output.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("backpack")

from backpack import backpack, extend  # noqa: E402
from backpack.extensions import GGNMP, HMP  # noqa: E402
from torch import nn  # noqa: E402

from numbabn.backpack import support_batchnorm  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:Full backward hook is firing when gradients are computed:UserWarning"
)


@pytest.fixture(autouse=True)
def float64_default():
    """BackPACK's AvgPool2d derivative builds its helper convolution in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


TOL = 1e-9  # max abs error / max(max abs reference, 1), in float64
N_CLASSES = 3


def conv_bn_net() -> tuple[nn.Module, tuple[int, ...]]:
    """Conv2d-BN2d-ReLU-Conv2d-BN2d-Sigmoid-Flatten-Linear, and its input shape."""
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2),
        nn.BatchNorm2d(2),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, N_CLASSES),
    )
    return net, (5, 2, 6, 6)


def bn_first_pool_net() -> tuple[nn.Module, tuple[int, ...]]:
    """A net that starts with a BatchNorm2d and pools (max and average)."""
    net = nn.Sequential(
        nn.BatchNorm2d(2),
        nn.Conv2d(2, 3, 3),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(3),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3, N_CLASSES),
    )
    return net, (6, 2, 6, 6)


def linear_bn_net() -> tuple[nn.Module, tuple[int, ...]]:
    """Linear-BN1d-Tanh-Linear-BN1d-Sigmoid-Linear on 2-D input."""
    net = nn.Sequential(
        nn.Linear(4, 5),
        nn.BatchNorm1d(5),
        nn.Tanh(),
        nn.Linear(5, 4),
        nn.BatchNorm1d(4),
        nn.Sigmoid(),
        nn.Linear(4, N_CLASSES),
    )
    return net, (8, 4)


def bn1d_3d_input_net() -> tuple[nn.Module, tuple[int, ...]]:
    """BatchNorm1d on 3-D input, twice (the second one's input needs the residual)."""
    net = nn.Sequential(
        nn.BatchNorm1d(3),
        nn.Sigmoid(),
        nn.BatchNorm1d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 4, N_CLASSES),
    )
    return net, (5, 3, 4)


def bn3d_net() -> tuple[nn.Module, tuple[int, ...]]:
    """BatchNorm3d on 5-D input, twice."""
    net = nn.Sequential(
        nn.BatchNorm3d(2),
        nn.Tanh(),
        nn.BatchNorm3d(2),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 2 * 2, N_CLASSES),
    )
    return net, (3, 2, 3, 2, 2)


NETS = {
    "conv_bn": conv_bn_net,
    "bn_first_pool": bn_first_pool_net,
    "linear_bn": linear_bn_net,
    "bn1d_3d_input": bn1d_3d_input_net,
    "bn3d": bn3d_net,
}
LOSSES = ["cross_entropy", "mse"]


# --- problem set-up --------------------------------------------------------------------
def randomize_batchnorm(net: nn.Module, gen: torch.Generator) -> None:
    """Random gamma, beta and running statistics, so no term is trivially 1 or 0."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen))
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def make_problem(net_name: str, loss_name: str, seed: int = 0):
    """(network, loss function, input, target) in float64."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net, in_shape = NETS[net_name]()
    net = net.double()
    randomize_batchnorm(net, gen)
    x = torch.randn(in_shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5
    n = in_shape[0]
    if loss_name == "cross_entropy":
        return net, nn.CrossEntropyLoss(), x, torch.randint(0, N_CLASSES, (n,), generator=gen)
    y = torch.randn((n, N_CLASSES), generator=gen, dtype=torch.float64)
    return net, nn.MSELoss(), x, y


def backpack_products(net, loss_fn, x, y, extension) -> list:
    """Run one backward pass with ``extension``; return the extended network's parameters.

    Extended modules keep their inputs for the products only until a backward
    pass without a curvature extension, so references use unextended copies.
    """
    model = extend(net)
    with backpack(extension):
        extend(loss_fn)(model(x), y).backward()
    return list(model.parameters())


# --- references: torch autograd on an unextended copy ----------------------------------
def hessian_block_products(net, loss_fn, x, y, mats: list) -> list:
    """``H_pp @ mat`` for each parameter p, by double backward."""
    params = list(net.parameters())
    loss = loss_fn(net(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    out = []
    for p, g, mat in zip(params, grads, mats, strict=True):
        rows = [torch.autograd.grad(g, p, grad_outputs=m, retain_graph=True)[0] for m in mat]
        out.append(torch.stack(rows))
    return out


def ggn_block_products(net, loss_fn, x, y, mats: list) -> list:
    """``J_pᵀ H_f J_p @ mat`` for each parameter p (J_p: the output's Jacobian in p)."""
    params = list(net.parameters())
    f = net(x)
    f_leaf = f.detach().requires_grad_(True)
    grad_f = torch.autograd.grad(loss_fn(f_leaf, y), f_leaf, create_graph=True)[0]
    probe = torch.zeros_like(f, requires_grad=True)  # J_p v = d/dprobe <J_pᵀ probe, v>
    out = []
    for p, mat in zip(params, mats, strict=True):
        jt_probe = torch.autograd.grad(f, p, grad_outputs=probe, create_graph=True)[0]
        rows = []
        for m in mat:
            jv = torch.autograd.grad(jt_probe, probe, grad_outputs=m, retain_graph=True)[0]
            hjv = torch.autograd.grad(grad_f, f_leaf, grad_outputs=jv, retain_graph=True)[0]
            rows.append(torch.autograd.grad(f, p, grad_outputs=hjv, retain_graph=True)[0])
        out.append(torch.stack(rows))
    return out


REFERENCES = {"hmp": hessian_block_products, "ggnmp": ggn_block_products}
EXTENSIONS = {"hmp": HMP, "ggnmp": GGNMP}


def random_mats(params, n_dir: int, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((n_dir, *p.shape), generator=gen, dtype=p.dtype) for p in params]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, 1)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(expected.abs().max().item(), 1.0)
    return (actual - expected).abs().max().item() / scale


def check_against_reference(net, loss_fn, x, y, kind: str, extension=None) -> list:
    """Compare every ``p.<kind>(mat)`` with the exact block, for V = 1 and V = 3.

    Returns the reference products, so callers can check they are not trivial.
    """
    reference_net, reference_loss = copy.deepcopy(net), copy.deepcopy(loss_fn)
    if extension is None:
        extension = support_batchnorm(EXTENSIONS[kind]())
    params = backpack_products(net, loss_fn, x, y, extension)
    references = []
    for n_dir, seed in [(1, 1), (3, 2), (3, 3)]:
        mats = random_mats(params, n_dir, seed)
        expected = REFERENCES[kind](reference_net, reference_loss, x, y, mats)
        for i, (p, mat, ref) in enumerate(zip(params, mats, expected, strict=True)):
            got = getattr(p, kind)(mat)
            err = relative_error(got, ref)
            assert err <= TOL, f"parameter {i} {tuple(p.shape)}, V={n_dir}: error {err:.2e}"
        references.append(expected)
    return references


def batchnorm_parameter_indices(net: nn.Module) -> list[int]:
    ids = {
        id(p)
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    return [i for i, p in enumerate(net.parameters()) if id(p) in ids]


# --- tests -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hmp", "ggnmp"])
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("net_name", list(NETS))
def test_blocks_equal_exact_curvature(net_name, loss_name, kind):
    """p.hmp / p.ggnmp equal the exact Hessian / GGN blocks, on every parameter."""
    net, loss_fn, x, y = make_problem(net_name, loss_name)
    bn_index = batchnorm_parameter_indices(net)
    references = check_against_reference(net, loss_fn, x, y, kind)
    # The BatchNorm blocks are not trivially zero, so the comparison has teeth.
    for expected in references:
        assert max(expected[i].abs().max().item() for i in bn_index) > 1e-4


RESIDUAL_ONLY_NETS = {  # no layer but BatchNorm has a second derivative (ReLU's is zero)
    "conv_bn2d": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
        ),
        (5, 2, 6, 6),
    ),
    "linear_bn1d": (
        lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)),
        (8, 4),
    ),
    "bn3d_relu_bn3d": (
        lambda: nn.Sequential(
            nn.BatchNorm3d(2),
            nn.ReLU(),
            nn.BatchNorm3d(2),
            nn.Flatten(),
            nn.Linear(2 * 3 * 2 * 2, 3),
        ),
        (3, 2, 3, 2, 2),
    ),
}


@pytest.mark.parametrize("net_name", list(RESIDUAL_ONLY_NETS))
def test_batchnorm_residual_enters_hessian(net_name):
    """With MSE and only piecewise-linear layers besides BatchNorm, HMP - GGNMP is
    BatchNorm's residual alone: nonzero below a BatchNorm, zero above the last one."""
    build, in_shape = RESIDUAL_ONLY_NETS[net_name]
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    net = build().double()
    randomize_batchnorm(net, gen)
    x = torch.randn(in_shape, generator=gen, dtype=torch.float64)
    y = torch.randn((in_shape[0], 3), generator=gen, dtype=torch.float64)
    net_ggn = copy.deepcopy(net)
    p_hmp = backpack_products(net, nn.MSELoss(), x, y, support_batchnorm(HMP()))
    p_ggn = backpack_products(net_ggn, nn.MSELoss(), x, y, support_batchnorm(GGNMP()))
    mats = random_mats(p_hmp, 3, seed=4)
    diffs = [
        (p.hmp(m) - q.ggnmp(m)).abs().max().item()
        for p, q, m in zip(p_hmp, p_ggn, mats, strict=True)
    ]
    assert diffs[0] > 1e-3  # the first parameter lies below a BatchNorm
    assert diffs[-1] == 0.0 and diffs[-2] == 0.0  # the last Linear's weight and bias


@pytest.mark.parametrize("kind", ["hmp", "ggnmp"])
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_2d_equals_backpack_own(kind, loss_name, training):
    """On BatchNorm1d with 2-D input (BackPACK's own support) both agree to rounding."""
    net, loss_fn, x, y = make_problem("linear_bn", loss_name)
    net.train(training)
    net_own = copy.deepcopy(net)
    ours = backpack_products(net, loss_fn, x, y, support_batchnorm(EXTENSIONS[kind]()))
    own = backpack_products(net_own, loss_fn, x, y, EXTENSIONS[kind]())
    for p, q, mat in zip(ours, own, random_mats(ours, 3, seed=5), strict=True):
        got, expected = getattr(p, kind)(mat), getattr(q, kind)(mat)
        assert expected.abs().max().item() > 0.0
        assert relative_error(got, expected) <= TOL


@pytest.mark.parametrize("kind", ["hmp", "ggnmp"])
@pytest.mark.parametrize("net_name", ["conv_bn", "bn_first_pool", "bn1d_3d_input", "bn3d"])
def test_evaluation_mode_equals_exact_curvature(net_name, kind):
    """In evaluation mode (running statistics) BatchNorm is affine; blocks stay exact."""
    net, loss_fn, x, y = make_problem(net_name, "cross_entropy")
    net.eval()
    check_against_reference(net, loss_fn, x, y, kind)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "options",
    [
        {"affine": False},
        {"track_running_stats": False},
        {"affine": False, "track_running_stats": False},
    ],
)
@pytest.mark.parametrize("net_name", ["conv_bn", "bn3d"])
def test_without_affine_or_running_stats(net_name, options, training):
    """The last BatchNorm without gamma/beta (gamma = 1) or running statistics (batch
    statistics even in evaluation mode); its residual reaches the parameters below it."""
    net, loss_fn, x, y = make_problem(net_name, "mse")
    last = max(i for i, m in enumerate(net) if isinstance(m, nn.modules.batchnorm._BatchNorm))
    net[last] = type(net[last])(net[last].num_features, **options).double()
    net.train(training)
    check_against_reference(net, loss_fn, x, y, "hmp")


def test_numbabn_torch_batchnorm_classes():
    """numbabn.torch.BatchNorm*d modules are registered too (skipped until they exist)."""
    numbabn_torch = pytest.importorskip("numbabn.torch")
    names = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
    if not all(hasattr(numbabn_torch, n) for n in names):
        pytest.skip("numbabn.torch has no BatchNorm1d/2d/3d yet")
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        numbabn_torch.BatchNorm2d(3),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
        numbabn_torch.BatchNorm1d(4),
        nn.Tanh(),
        nn.Linear(4, N_CLASSES),
    ).double()
    gen = torch.Generator().manual_seed(6)
    randomize_batchnorm(net, gen)
    x = torch.randn((5, 2, 6, 6), generator=gen, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (5,), generator=gen)
    for kind in ("hmp", "ggnmp"):
        check_against_reference(copy.deepcopy(net), nn.CrossEntropyLoss(), x, y, kind)


def conjugate_gradient(matvec, b: torch.Tensor, iters: int = 100, tol: float = 1e-12):
    """Solve ``A s = b`` for a symmetric positive definite ``A`` given as ``s -> A s``."""
    s, r = torch.zeros_like(b), b.clone()
    d, rr = r.clone(), r @ r
    for _ in range(iters):
        ad = matvec(d)
        alpha = rr / (d @ ad)
        s, r = s + alpha * d, r - alpha * ad
        rr, rr_old = r @ r, rr
        if rr.sqrt() < tol:
            break
        d = r + (rr / rr_old) * d
    return s


def test_ggn_conjugate_gradient_step():
    """The documented use: a damped block-GGN Newton step by conjugate gradients on a
    Conv2d-BN2d-ReLU net solves each block's system and lowers the loss."""
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(8)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()
    x = torch.randn((6, 2, 6, 6), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    before = loss_fn(net(x), y).item()
    params = backpack_products(net, loss_fn, x, y, support_batchnorm(GGNMP()))
    damping = 0.1
    steps = []
    for p in params:
        block = lambda v, p=p: p.ggnmp(v.view(1, *p.shape)).flatten() + damping * v  # noqa: E731
        step = conjugate_gradient(block, p.grad.flatten())
        assert relative_error(block(step), p.grad.flatten()) <= 1e-9
        steps.append(step.view_as(p))
    with torch.no_grad():
        for p, step in zip(params, steps, strict=True):
            p -= step
    assert loss_fn(net(x), y).item() < before
