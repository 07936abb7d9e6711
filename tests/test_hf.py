"""numbabn.hf: network loss, gradient, Hessian- and GGN-vector products equal
autograd on the same network and data (1e-8 relative, float64), the GGN is
symmetric and positive semi-definite, and Hessian-free training lowers the loss."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_jvp, make_vjp

from numbabn import hf
from numbabn.hf.optimizer import conjugate_gradient

from cases import relative_error

TOL = 1e-8


def autograd_network(net):
    """The same network as a plain autograd function of (theta, X)."""

    def forward(theta, X):
        a, start = X, 0
        for layer in net.layers:
            params = []
            for shape in layer.shapes:
                n = int(np.prod(shape))
                params.append(anp.reshape(theta[start : start + n], shape))
                start += n
            if isinstance(layer, hf.Linear):
                a = anp.dot(a, params[0].T) + params[1]
            elif isinstance(layer, hf.BatchNorm):
                mean = anp.mean(a, axis=0)
                var = anp.mean((a - mean) ** 2, axis=0)
                a = params[0] * (a - mean) / anp.sqrt(var + layer.eps) + params[1]
            elif isinstance(layer, hf.Tanh):
                a = anp.tanh(a)
            else:
                a = anp.maximum(a, 0.0)
        return a

    def loss_of_output(z, y):
        if net.loss_name == "mse":
            return 0.5 * anp.sum((z - y) ** 2) / z.shape[0]
        shifted = z - anp.max(z, axis=1, keepdims=True)
        logp = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
        return -anp.mean(logp[np.arange(z.shape[0]), y])

    return forward, loss_of_output


def make_problem(loss, activation, seed=0):
    layers = [hf.Linear(5, 7), hf.BatchNorm(7), activation(), hf.Linear(7, 6), hf.BatchNorm(6),
              activation(), hf.Linear(6, 3)]  # fmt: skip
    net = hf.Sequential(layers, loss=loss)
    rng = np.random.default_rng(seed)
    theta = net.init(seed) + 0.1 * rng.normal(size=net.size)
    X = rng.normal(size=(11, 5))
    y = rng.integers(0, 3, size=11) if loss == "cross_entropy" else rng.normal(size=(11, 3))
    return net, theta, X, y, rng


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("activation", [hf.Tanh, hf.ReLU])
def test_network_products_match_autograd(loss, activation):
    net, theta, X, y, rng = make_problem(loss, activation)
    forward, loss_of_output = autograd_network(net)

    def total(t):
        return loss_of_output(forward(t, X), y)

    assert abs(net.loss(theta, X, y) - total(theta)) <= TOL * abs(total(theta))
    assert relative_error(net.grad(theta, X, y), grad(total)(theta)) <= TOL
    for _ in range(3):
        v = rng.normal(size=net.size)
        want_hvp = grad(lambda t, v=v: anp.dot(grad(total)(t), v))(theta)
        assert relative_error(net.hvp(theta, X, y, v), want_hvp) <= TOL
        # GGN: J v forward, loss Hessian at z, then J^T
        jv = make_jvp(lambda t: forward(t, X))(theta)(v)[1]
        z = forward(theta, X)
        hjv = grad(lambda z_, jv=jv: anp.sum(grad(lambda zz: loss_of_output(zz, y))(z_) * jv))(z)
        pull, _ = make_vjp(lambda t: forward(t, X))(theta)
        assert relative_error(net.ggnvp(theta, X, y, v), pull(hjv)) <= TOL


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_ggn_is_symmetric_and_positive_semidefinite(loss):
    net, theta, X, y, rng = make_problem(loss, hf.Tanh, seed=3)
    for _ in range(5):
        u, v = rng.normal(size=(2, net.size))
        gu, gv = net.ggnvp(theta, X, y, u), net.ggnvp(theta, X, y, v)
        assert abs(u @ gv - v @ gu) <= 1e-10 * max(1.0, abs(u @ gv))
        assert v @ gv >= -1e-12 * (v @ v)
    hu, hv = net.hvp(theta, X, y, u), net.hvp(theta, X, y, v)
    assert abs(u @ hv - v @ hu) <= 1e-10 * max(1.0, abs(u @ hv))  # the Hessian is symmetric too


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_hessian_free_lowers_the_loss(curvature):
    net, theta, X, y, _ = make_problem("cross_entropy", hf.Tanh, seed=1)
    X = np.repeat(X, 4, axis=0) + 0.01 * np.random.default_rng(0).normal(size=(44, 5))
    y = np.repeat(y, 4)
    opt = hf.HessianFree(net, curvature=curvature, damping=1.0, max_cg_iter=20,
                         curvature_batch=32)  # fmt: skip
    start = net.loss(theta, X, y)
    losses = []
    for _ in range(5):
        theta, info = opt.step(theta, X, y)
        losses.append(info.loss)
        assert info.loss <= (losses[-2] if len(losses) > 1 else start) + 1e-12
    assert losses[-1] < 0.5 * start


def test_conjugate_gradient_solves_a_spd_system():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    a = a @ a.T + 20 * np.eye(20)
    b = rng.normal(size=20)
    result = conjugate_gradient(lambda v: a @ v, b, np.zeros(20), 100, tol=1e-12)
    np.testing.assert_allclose(result.iterates[-1], np.linalg.solve(a, b), rtol=1e-8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="^loss must be one of"):
        hf.Sequential([hf.Linear(2, 2)], loss="hinge")
    net = hf.Sequential([hf.Linear(2, 2)])
    with pytest.raises(ValueError, match="^theta has shape"):
        net.loss(np.zeros(3), np.zeros((4, 2)), np.zeros(4, int))
    with pytest.raises(ValueError, match="^curvature must be"):
        hf.HessianFree(net, curvature="fisher")
    X, y = np.zeros((4, 2)), np.zeros(4, int)
    with pytest.raises(ValueError, match=r"^v has shape \(5,\); expected \(6,\)"):
        net.hvp(np.zeros(6), X, y, np.zeros(5))
    with pytest.raises(ValueError, match=r"^v has shape"):
        net.curvature(np.zeros(6), X, y)(np.zeros((6, 1)))


def test_training_command_runs(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from numbabn.__main__ import main

    png = tmp_path / "hf.png"
    assert main(["hf", "--steps", "3", "--plot", str(png), "--min-accuracy", "0.5"]) == 0
    assert png.stat().st_size > 10_000
    assert "test accuracy" in capsys.readouterr().out


def test_tanh_kernel_matches_the_array_expression():
    """The fused CPU kernel of Tanh's R-backward equals the generic (CuPy) path."""
    rng = np.random.default_rng(4)
    layer = hf.Tanh()
    z, cache = layer.forward([], rng.normal(size=(7, 5)))
    da, g, dg = (rng.normal(size=(7, 5)) for _ in range(3))
    fused, _ = layer.rop_backward([], [], cache, da, g, dg)
    generic, _ = super(hf.Tanh, layer).rop_backward([], [], cache, da, g, dg)
    np.testing.assert_allclose(fused, generic, rtol=1e-13, atol=1e-15)
    a = np.arctanh(z)
    want = (1 - np.tanh(a) ** 2) * dg - 2 * np.tanh(a) * (1 - np.tanh(a) ** 2) * da * g
    np.testing.assert_allclose(fused, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [hf.BatchNorm(5), hf.Tanh(), hf.Linear(5, 3)],
        lambda: [hf.Tanh(), hf.Linear(5, 4), hf.BatchNorm(4), hf.ReLU(), hf.Linear(4, 3)],
    ],
    ids=["batchnorm-first", "activation-first"],
)
def test_networks_that_do_not_start_with_linear(layers):
    """The first layer sees a zero input tangent and computes no input R-gradient."""
    net = hf.Sequential(layers())
    rng = np.random.default_rng(5)
    theta = net.init(0) + 0.1 * rng.normal(size=net.size)
    X, y = rng.normal(size=(9, 5)), rng.integers(0, 3, size=9)
    forward, loss_of_output = autograd_network(net)

    def total(t):
        return loss_of_output(forward(t, X), y)

    v = rng.normal(size=net.size)
    want = grad(lambda t: anp.dot(grad(total)(t), v))(theta)
    assert relative_error(net.hvp(theta, X, y, v), want) <= TOL
    assert relative_error(net.grad(theta, X, y), grad(total)(theta)) <= TOL


def test_reused_work_arrays_never_leak_between_calls():
    """A network reuses its work arrays: results of earlier calls stay intact,
    every call equals the same call on a fresh network, also after pickling and
    from several threads at once."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    net, theta, X, y, rng = make_problem("cross_entropy", hf.Tanh)
    fresh = lambda: make_problem("cross_entropy", hf.Tanh)[0]  # noqa: E731
    vs = rng.normal(size=(4, net.size))
    z_first = net.predict(theta, X)
    z_kept = z_first.copy()
    got = [net.hvp(theta, X, y, v) for v in vs]
    net.predict(theta + 1.0, X)
    np.testing.assert_array_equal(z_first, z_kept)
    for v, g in zip(vs, got, strict=True):
        np.testing.assert_array_equal(g, fresh().hvp(theta, X, y, v))
    np.testing.assert_array_equal(got[0], net.hvp(theta, X, y, vs[0]))
    X2 = np.concatenate([X, X[:3]])  # a second batch shape
    y2 = np.concatenate([y, y[:3]])
    np.testing.assert_array_equal(
        net.ggnvp(theta, X2, y2, vs[1]), fresh().ggnvp(theta, X2, y2, vs[1])
    )
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(clone.hvp(theta, X, y, vs[2]), got[2])
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda v: net.hvp(theta, X, y, v), np.repeat(vs, 3, axis=0)))
    for k, g in enumerate(parallel):
        np.testing.assert_array_equal(g, got[k // 3])
    net.clear_workspace()
    np.testing.assert_array_equal(net.hvp(theta, X, y, vs[3]), got[3])


def test_scratch_hands_out_one_array_per_layer_role_and_shape():
    from numbabn.hf.workspace import FRESH, Workspace

    like = np.zeros((3, 2))
    first, second = Workspace().scratches(2)
    a = first.empty("z", (3, 2), like)
    assert first.empty("z", (3, 2), like) is a
    assert first.empty("dz", (3, 2), like) is not a
    assert second.empty("z", (3, 2), like) is not a
    assert first.empty("z", (4, 2), like) is not a
    assert first.empty("z", (3, 2), like.astype(np.float32)).dtype == np.float32
    assert FRESH.empty("z", (3, 2), like) is not FRESH.empty("z", (3, 2), like)
    np.testing.assert_array_equal(first.zeros("zero", like), 0.0)


def test_batchnorm_layers_restore_numbas_thread_count():
    """hf runs numbabn on one Numba thread and gives the caller's count back,
    also when a call fails."""
    import numba

    net, theta, X, y, rng = make_problem("cross_entropy", hf.Tanh)
    before = numba.get_num_threads()
    net.hvp(theta, X, y, rng.normal(size=net.size))
    assert numba.get_num_threads() == before
    layer = hf.BatchNorm(5)
    with pytest.raises(ValueError):
        layer.forward([np.ones(4), np.zeros(4)], X)  # 4 channels for a 5-channel batch
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_curvature_operator_keeps_its_point_between_products(kind):
    """net.curvature computes the forward pass (and gradient) once: its products
    equal autograd and the per-call products, also with other calls of the
    network in between and from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    net, theta, X, y, rng = make_problem("cross_entropy", hf.Tanh)
    forward, loss_of_output = autograd_network(net)
    op = net.curvature(theta, X, y, kind=kind)
    per_call = net.hvp if kind == "hessian" else net.ggnvp
    vs = rng.normal(size=(3, net.size))
    first = op(vs[0])
    if kind == "hessian":
        want = grad(lambda t: anp.dot(grad(lambda s: loss_of_output(forward(s, X), y))(t), vs[0]))
        assert relative_error(first, want(theta)) <= TOL
    # other work of the same network, at other points and batch shapes
    net.hvp(theta + 1.0, X, y, vs[1])
    net.ggnvp(theta - 1.0, X[:7], y[:7], vs[2])
    net.grad(theta + 0.5, X, y)
    np.testing.assert_array_equal(op(vs[0]), first)
    for v in vs[1:]:
        np.testing.assert_array_equal(op(v), per_call(theta, X, y, v))
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(op, np.repeat(vs, 3, axis=0)))
    for k, got in enumerate(parallel):
        np.testing.assert_array_equal(got, op(vs[k // 3]))
    with pytest.raises(ValueError, match="^kind must be one of"):
        net.curvature(theta, X, y, kind="fisher")
