"""numbabn.backpack's BatchNorm derivatives, one module at a time.

The residual product against BackPACK's own (2-D input, the only case it has)
and against torch double backward (2-D to 5-D input); the Jacobian products
against BackPACK's own (which handle N-d input); evaluation mode as an affine
map; the statistics cache; and what :func:`support_batchnorm` registers.
"""

from __future__ import annotations

import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("backpack")

from backpack.core.derivatives.batchnorm_nd import BatchNormNdDerivatives  # noqa: E402
from backpack.extensions import GGNMP, HMP, PCHMP, DiagGGNExact  # noqa: E402
from torch import nn  # noqa: E402

from numbabn.backpack import (  # noqa: E402
    GGNMPBatchNormNd,
    HMPBatchNormNd,
    NumbaBatchNormDerivatives,
    batchnorm_classes,
    support_batchnorm,
)

TOL = 1e-9  # max abs error / max(max abs reference, 1), in float64

SHAPES = {  # input shape -> module class
    (7, 3): nn.BatchNorm1d,
    (4, 3, 5): nn.BatchNorm1d,
    (3, 2, 4, 3): nn.BatchNorm2d,
    (2, 3, 2, 3, 2): nn.BatchNorm3d,
}
shapes = pytest.mark.parametrize("shape", list(SHAPES), ids=lambda s: "x".join(map(str, s)))
directions = pytest.mark.parametrize("n_dir", [1, 3])


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, 1)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    scale = max(expected.abs().max().item(), 1.0)
    return (actual - expected).abs().max().item() / scale


def make_module(shape, *, affine=True, training=True, eps=1e-5, dtype=torch.float64, seed=0):
    """A BatchNorm module holding BackPACK's ``input0``/``output``, and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    module = SHAPES[shape](shape[1], eps=eps, affine=affine).to(dtype)
    if affine:
        module.weight.data.copy_(torch.rand(shape[1], generator=gen) + 0.5)
        module.bias.data.copy_(torch.randn(shape[1], generator=gen))
    module.running_mean.copy_(torch.randn(shape[1], generator=gen))
    module.running_var.copy_(torch.rand(shape[1], generator=gen) + 0.5)
    module.train(training)
    x = (torch.randn(shape, generator=gen) * 2.0 + 1.5).to(dtype)
    with torch.no_grad():
        module.input0, module.output = x, module(x)
    dz = torch.randn(shape, generator=gen).to(dtype)
    return module, x, dz


def random_mat(n_dir: int, shape, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n_dir, *shape), generator=gen).to(dtype)


def double_backward_residual(module, x, dz, mat) -> torch.Tensor:
    """``sum_i dz_i d2 z_i/dx dx @ mat`` by differentiating ``Jᵀ dz`` once more."""
    x = x.detach().requires_grad_(True)
    jt_dz = torch.autograd.grad(module(x), x, grad_outputs=dz, create_graph=True)[0]
    rows = [torch.autograd.grad(jt_dz, x, grad_outputs=m, retain_graph=True)[0] for m in mat]
    return torch.stack(rows)


def jacobian_product(module, x, mat) -> torch.Tensor:
    """``J mat`` by autograd (the double-VJP trick), one direction at a time."""
    x = x.detach().requires_grad_(True)
    z = module(x)
    probe = torch.zeros_like(z, requires_grad=True)
    jt_probe = torch.autograd.grad(z, x, grad_outputs=probe, create_graph=True)[0]
    rows = [torch.autograd.grad(jt_probe, probe, grad_outputs=m, retain_graph=True)[0] for m in mat]
    return torch.stack(rows)


# --- the residual ----------------------------------------------------------------------
@directions
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_residual_equals_backpack_own_2d(n_dir, eps):
    module, x, dz = make_module((7, 3), eps=eps)
    mat = random_mat(n_dir, x.shape)
    ours = NumbaBatchNormDerivatives().residual_mat_prod(module, None, (dz,), mat)
    own = BatchNormNdDerivatives().residual_mat_prod(module, None, (dz,), mat)
    assert own.abs().max().item() > 1e-3
    assert relative_error(ours, own) <= TOL


@shapes
@directions
@pytest.mark.parametrize("affine", [True, False])
def test_residual_equals_double_backward(shape, n_dir, affine):
    module, x, dz = make_module(shape, affine=affine)
    mat = random_mat(n_dir, shape)
    ours = NumbaBatchNormDerivatives().residual_mat_prod(module, None, (dz,), mat)
    expected = double_backward_residual(module, x, dz, mat)
    assert expected.abs().max().item() > 1e-3
    assert relative_error(ours, expected) <= TOL


def test_backpack_own_residual_refuses_nd_input():
    """What this package adds: BackPACK 1.7.1 has the residual for 2-D input only."""
    module, x, dz = make_module((3, 2, 4, 3))
    with pytest.raises(NotImplementedError, match="only for 0 dimensions"):
        BatchNormNdDerivatives().residual_mat_prod(module, None, (dz,), random_mat(1, x.shape))


def test_residual_in_float32():
    module, x, dz = make_module((3, 2, 4, 3), dtype=torch.float32)
    mat = random_mat(3, x.shape, dtype=torch.float32)
    ours = NumbaBatchNormDerivatives().residual_mat_prod(module, None, (dz,), mat)
    expected = double_backward_residual(module.double(), x.double(), dz.double(), mat.double())
    assert ours.dtype == torch.float32
    assert relative_error(ours.double(), expected) <= 1e-4


# --- first-order products --------------------------------------------------------------
@shapes
@directions
@pytest.mark.parametrize("affine", [True, False])
def test_input_jacobians_equal_autograd(shape, n_dir, affine):
    module, x, _ = make_module(shape, affine=affine)
    mat = random_mat(n_dir, shape)
    ours = NumbaBatchNormDerivatives()
    expected = jacobian_product(module, x, mat)  # J is symmetric: J mat = Jᵀ mat
    assert relative_error(ours.jac_mat_prod(module, None, None, mat), expected) <= TOL
    assert relative_error(ours.jac_t_mat_prod(module, None, None, mat), expected) <= TOL


@shapes
@directions
@pytest.mark.parametrize("training", [True, False])
def test_jacobians_equal_backpack_own(shape, n_dir, training):
    """BackPACK's own first-order BatchNorm products handle N-d input."""
    module, x, _ = make_module(shape, training=training)
    mat_in, mat_out = random_mat(n_dir, shape, seed=2), random_mat(n_dir, shape, seed=3)
    mat_c = random_mat(n_dir, (shape[1],), seed=4)
    ours, own = NumbaBatchNormDerivatives(), BatchNormNdDerivatives()
    pairs = [
        (lambda d: d.jac_mat_prod(module, None, None, mat_in)),
        (lambda d: d.jac_t_mat_prod(module, None, None, mat_out)),
        (lambda d: d.weight_jac_mat_prod(module, None, None, mat_c)),
        (lambda d: d.bias_jac_mat_prod(module, None, None, mat_c)),
        (lambda d: d.param_mjp("weight", module, None, None, mat_out)),
        (lambda d: d.param_mjp("bias", module, None, None, mat_out)),
        (lambda d: d.param_mjp("weight", module, None, None, mat_out, sum_batch=False)),
    ]
    for i, product in enumerate(pairs):
        expected = product(own)
        assert expected.abs().max().item() > 1e-3, i
        assert relative_error(product(ours), expected) <= TOL, i


@shapes
@directions
def test_fused_backward_step_equals_vjp_plus_residual(shape, n_dir):
    """HMP's input step ``Jᵀ out_mat + R(dz) mat`` in one numbabn call."""
    module, x, dz = make_module(shape)
    mat, out_mat = random_mat(n_dir, shape, seed=2), random_mat(n_dir, shape, seed=3)
    d = NumbaBatchNormDerivatives()
    fused = d.jac_t_mat_prod_plus_residual(module, None, (dz,), out_mat, mat)
    expected = jacobian_product(module, x, out_mat) + double_backward_residual(module, x, dz, mat)
    assert relative_error(fused, expected) <= TOL


# --- evaluation mode: an affine map ------------------------------------------------------
@shapes
@pytest.mark.parametrize("affine", [True, False])
def test_evaluation_mode_is_affine(shape, affine):
    """Running statistics: a diagonal Jacobian ``gamma / sqrt(running_var + eps)``, no
    residual, and the module's input Hessian is ``Jᵀ H_z J`` (that of an affine map)."""
    module, x, dz = make_module(shape, affine=affine, training=False)
    mat = random_mat(3, shape)
    d = NumbaBatchNormDerivatives()
    assert d.hessian_is_zero(module)
    assert torch.equal(d.residual_mat_prod(module, None, (dz,), mat), torch.zeros_like(mat))
    scale = (module.running_var + module.eps).rsqrt()
    if affine:
        scale = scale * module.weight.detach()
    scale = scale.view(1, 1, -1, *[1] * (len(shape) - 2))  # against [V, N, C, ...]
    diagonal = mat * scale
    assert relative_error(d.jac_mat_prod(module, None, None, mat), diagonal) <= TOL
    assert relative_error(jacobian_product(module, x, mat), diagonal) <= TOL
    # Backpropagate the output curvature H_z = 2 I through the module extension.
    h_in = HMPBatchNormNd(d).backpropagate(None, module, None, (dz,), lambda m: 2.0 * m)
    assert relative_error(h_in(mat), 2.0 * diagonal * scale) <= TOL


def test_evaluation_without_running_stats_uses_batch_statistics():
    """As in PyTorch's forward: no running statistics means batch statistics in eval too."""
    module, x, dz = make_module((3, 2, 4, 3))
    evaluated = nn.BatchNorm2d(2, track_running_stats=False).double().eval()
    evaluated.weight.data.copy_(module.weight)
    evaluated.bias.data.copy_(module.bias)
    evaluated.input0, evaluated.output = x, evaluated(x)
    mat = random_mat(3, x.shape)
    d = NumbaBatchNormDerivatives()
    assert not d.hessian_is_zero(evaluated)
    ours = d.residual_mat_prod(evaluated, None, (dz,), mat)
    assert relative_error(ours, double_backward_residual(module, x, dz, mat)) <= TOL


# --- the statistics cache ----------------------------------------------------------------
def test_statistics_follow_the_module_input():
    """A new input, or one changed in place, gets new statistics."""
    module, x, dz = make_module((3, 2, 4, 3))
    mat = random_mat(2, x.shape)
    d = NumbaBatchNormDerivatives()
    d.residual_mat_prod(module, None, (dz,), mat)  # fills the cache
    module.input0 = x * 3.0 + 1.0
    fresh = NumbaBatchNormDerivatives().residual_mat_prod(module, None, (dz,), mat)
    assert torch.equal(d.residual_mat_prod(module, None, (dz,), mat), fresh)
    module.input0.mul_(0.5).add_(torch.linspace(-1.0, 1.0, module.input0.numel()).view(x.shape))
    fresh = NumbaBatchNormDerivatives().residual_mat_prod(module, None, (dz,), mat)
    assert torch.equal(d.residual_mat_prod(module, None, (dz,), mat), fresh)
    expected = double_backward_residual(module, module.input0, dz, mat)
    assert relative_error(fresh, expected) <= TOL


def test_cache_holds_no_batch_memory():
    """Once BackPACK drops a module's input, nothing here keeps the tensor alive."""
    module, x, dz = make_module((3, 2, 4, 3))
    d = NumbaBatchNormDerivatives()
    d.residual_mat_prod(module, None, (dz,), random_mat(2, x.shape))
    d.weight_jac_mat_prod(module, None, None, random_mat(2, (x.shape[1],)))
    x_ref = weakref.ref(x)
    del module.input0, module.output, x
    gc.collect()
    assert x_ref() is None


# --- registration ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extension_class", "module_extension_class"),
    [(HMP, HMPBatchNormNd), (GGNMP, GGNMPBatchNormNd)],
)
def test_support_batchnorm_registers_every_class(extension_class, module_extension_class):
    extension = extension_class()
    assert support_batchnorm(extension) is extension
    lookup = extension._BackpropExtension__module_extensions
    classes = batchnorm_classes()
    assert {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d} <= set(classes)
    for cls in classes:
        assert type(lookup[cls]) is module_extension_class
    assert lookup[nn.Linear] is not None  # the rest of BackPACK's table is kept


@pytest.mark.parametrize("extension", [PCHMP(), DiagGGNExact()])
def test_support_batchnorm_refuses_other_extensions(extension):
    with pytest.raises(TypeError, match="HMP or GGNMP"):
        support_batchnorm(extension)
