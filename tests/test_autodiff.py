"""Every public function against the autograd oracles of ``reference.py``:
2-D to 5-D shapes, channel-first and channels-last, float32 and float64, small
and large eps, a batch of one, and several directions at once."""

import numpy as np
import pytest

import numbabn
from numbabn import config

import reference as ref
from cases import assert_close, make_case, symmetric_curvature

SHAPES = [
    ((7, 3), 1),
    ((7, 3), -1),
    ((4, 3, 5), 1),
    ((4, 5, 3), -1),
    ((3, 2, 4, 3), 1),
    ((3, 4, 3, 2), -1),
    ((2, 3, 2, 2, 3), 1),
    ((2, 2, 3, 2, 3), -1),
    ((1, 3, 4, 5), 1),  # a batch of one
    ((1, 4), 1),  # one element per channel: xhat = 0
    ((13, 600), 1),  # rows of >= 512 channels: the four-row reduction, a 1-row tail
    ((2, 3, 520), -1),  # the same, channels-last, a 2-row tail
]
DTYPES = [np.float64, np.float32]
layouts = pytest.mark.parametrize(("shape", "axis"), SHAPES)
dtypes = pytest.mark.parametrize("dtype", DTYPES)
epsilons = pytest.mark.parametrize("eps", [1e-5, 0.25])
directions = pytest.mark.parametrize("n_dir", [None, 3])


def _stack(fn, c, n_dir, keys):
    """The reference of ``fn`` for each direction (keys name the per-direction inputs)."""
    if n_dir is None:
        return fn(*(c[k] for k in keys))
    return np.stack([fn(*(c[k][v] for k in keys)) for v in range(n_dir)])


@layouts
@dtypes
@epsilons
def test_forward_and_stats(shape, axis, dtype, eps):
    c = make_case(shape, axis, dtype)
    z, st = numbabn.forward(c["x"], c["gamma"], c["beta"], eps=eps, axis=axis)
    assert_close(z, ref.forward(c["x"], c["gamma"], c["beta"], eps, axis), dtype, "forward")
    axes = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    x64 = c["x"].astype(np.float64)
    np.testing.assert_allclose(st.mean, x64.mean(axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(st.var, x64.var(axis=axes), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(st.invstd, 1 / np.sqrt(x64.var(axis=axes) + eps), rtol=1e-10)
    assert st.count == int(np.prod([shape[i] for i in axes]))
    assert (st.eps, st.axis, st.shape) == (eps, axis % len(shape), shape)


@layouts
@dtypes
@epsilons
@directions
def test_jvp(shape, axis, dtype, eps, n_dir):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    got = numbabn.jvp(c["x"], c["gamma"], c["u"], eps=eps, axis=axis)
    want = _stack(lambda u: ref.jvp(c["x"], c["gamma"], u, eps, axis), c, n_dir, ["u"])
    assert_close(got, want, dtype, "jvp")
    got = numbabn.jvp(
        c["x"], c["gamma"], c["u"], u_gamma=c["u_gamma"], u_beta=c["u_beta"], eps=eps, axis=axis
    )
    want = _stack(
        lambda u, ug, ub: ref.jvp(c["x"], c["gamma"], u, eps, axis, ug, ub),
        c,
        n_dir,
        ["u", "u_gamma", "u_beta"],
    )
    assert_close(got, want, dtype, "jvp with parameter tangents")


@layouts
@dtypes
@epsilons
def test_vjp(shape, axis, dtype, eps):
    c = make_case(shape, axis, dtype)
    dx, dgamma, dbeta = numbabn.vjp(c["x"], c["gamma"], c["dz"], eps=eps, axis=axis)
    want = ref.vjp(c["x"], c["gamma"], c["dz"], eps, axis)
    for got, exp, name in zip((dx, dgamma, dbeta), want, ("dx", "dgamma", "dbeta"), strict=True):
        assert_close(got, exp, dtype, name)


def test_vjp_several_gradients():
    c = make_case((4, 3, 5), n_dir=2)
    dx, dgamma, dbeta = numbabn.vjp(c["x"], c["gamma"], c["dz_dot"])
    for v in range(2):
        want = ref.vjp(c["x"], c["gamma"], c["dz_dot"][v], 1e-5, 1)
        for got, exp in zip((dx[v], dgamma[v], dbeta[v]), want, strict=True):
            assert_close(got, exp, np.float64, "vjp direction")


@layouts
@dtypes
@epsilons
@directions
def test_rvp(shape, axis, dtype, eps, n_dir):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    got = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], eps=eps, axis=axis)
    want = _stack(lambda u: ref.rvp(c["x"], c["gamma"], c["dz"], u, eps, axis), c, n_dir, ["u"])
    assert_close(got, want, dtype, "rvp")


@layouts
@dtypes
@directions
def test_hvp_and_ggnvp_diagonal(shape, axis, dtype, n_dir):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    eps = 1e-3
    got = numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], c["hz"], eps=eps, axis=axis)
    want = _stack(
        lambda u: ref.hvp(c["x"], c["gamma"], c["dz"], u, c["hz"], eps, axis), c, n_dir, ["u"]
    )
    assert_close(got, want, dtype, "hvp")
    got = numbabn.ggnvp(c["x"], c["gamma"], c["u"], c["hz"], eps=eps, axis=axis)
    want = _stack(lambda u: ref.ggnvp(c["x"], c["gamma"], u, c["hz"], eps, axis), c, n_dir, ["u"])
    assert_close(got, want, dtype, "ggnvp")


@pytest.mark.parametrize(("shape", "axis"), [((5, 3), 1), ((3, 2, 4), -1), ((2, 3, 2, 2), 1)])
@dtypes
@directions
def test_hvp_and_ggnvp_matrix_curvature(shape, axis, dtype, n_dir):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    mat = symmetric_curvature(int(np.prod(shape)))
    calls = []

    def hz(t):
        calls.append(t.shape)
        return (mat @ t.astype(np.float64).ravel()).reshape(t.shape).astype(t.dtype)

    got = numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], hz, axis=axis)
    want = _stack(
        lambda u: ref.hvp(c["x"], c["gamma"], c["dz"], u, mat, 1e-5, axis), c, n_dir, ["u"]
    )
    assert_close(got, want, dtype, "hvp")
    assert calls == [shape] * (n_dir or 1)
    got = numbabn.ggnvp(c["x"], c["gamma"], c["u"], hz, axis=axis)
    want = _stack(lambda u: ref.ggnvp(c["x"], c["gamma"], u, mat, 1e-5, axis), c, n_dir, ["u"])
    assert_close(got, want, dtype, "ggnvp")


@layouts
@dtypes
@directions
@pytest.mark.parametrize("with_u_gamma", [False, True])
@pytest.mark.parametrize("with_dz_dot", [False, True])
def test_rop_backward(shape, axis, dtype, n_dir, with_u_gamma, with_dz_dot):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    ug = c["u_gamma"] if with_u_gamma else None
    if not with_dz_dot:  # None is zero
        c["dz_dot"] = np.zeros_like(c["dz_dot"])
    dz_dot = c["dz_dot"] if with_dz_dot else None
    got = numbabn.rop_backward(c["x"], c["gamma"], c["dz"], dz_dot, c["u"], u_gamma=ug, axis=axis)

    def one(dz_dot, u, u_gamma):
        return ref.rop_backward(
            c["x"], c["gamma"], c["dz"], dz_dot, u, u_gamma if with_u_gamma else None, 1e-5, axis
        )

    if n_dir is None:
        want = one(c["dz_dot"], c["u"], c["u_gamma"])
    else:
        per = [one(c["dz_dot"][v], c["u"][v], c["u_gamma"][v]) for v in range(n_dir)]
        want = [np.stack(parts) for parts in zip(*per, strict=True)]
    for g, w, name in zip(got, want, ("dx_dot", "dgamma_dot", "dbeta_dot"), strict=True):
        assert_close(g, w, dtype, name)


@dtypes
def test_wide_rows_in_several_chunks(dtype):
    """The four-row reduction of wide rows where the batch splits into chunks
    whose lengths are not multiples of four (zero-padded last blocks)."""
    shape, n_dir = (1030, 520), 3
    c = make_case(shape, 1, dtype, n_dir=n_dir)
    x, g, dz, hz = c["x"], c["gamma"], c["dz"], c["hz"]
    assert config.MIN_CHUNK_ROWS <= shape[0] // 4  # several chunks
    got = numbabn.hvp(x, g, dz, c["u"], hz)
    want = _stack(lambda u: ref.hvp(x, g, dz, u, hz, 1e-5, 1), c, n_dir, ["u"])
    assert_close(got, want, dtype, "hvp")
    dx, dgamma, _ = numbabn.rop_backward(x, g, dz, c["dz_dot"], c["u"], u_gamma=c["u_gamma"])
    for v in range(n_dir):
        want = ref.rop_backward(x, g, dz, c["dz_dot"][v], c["u"][v], c["u_gamma"][v], 1e-5, 1)
        assert_close(dx[v], want[0], dtype, "rop_backward dx_dot")
        assert_close(dgamma[v], want[1], dtype, "rop_backward dgamma_dot")


def test_stats_reuse_gives_same_result():
    c = make_case((4, 3, 5, 2))
    st = numbabn.batch_stats(c["x"], eps=0.1)
    a = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], st)
    b = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], eps=0.1)
    np.testing.assert_array_equal(a, b)
    st_last = numbabn.batch_stats(c["x"], axis=-1)
    a = numbabn.jvp(c["x"], c["gamma"][:2], c["u"], st_last)
    b = numbabn.jvp(c["x"], c["gamma"][:2], c["u"], axis=-1)
    np.testing.assert_array_equal(a, b)
