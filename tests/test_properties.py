"""Property-based tests (hypothesis) over ndim, channel axis, memory layout,
dtype, eps, direction count and batch size against the autograd reference; and
finite-difference checks: jvp/vjp against differences of forward (gradcheck),
rvp/hvp/rop_backward against differences of vjp (gradgradcheck)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbabn

import reference as ref
from cases import TOLERANCE, relative_error

LAYOUTS = ["C", "fortran", "negative", "strided"]


def relayout(a, kind):
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative":
        return np.ascontiguousarray(a[::-1])[::-1]
    if kind == "strided":
        big = np.zeros((2 * a.shape[0], *a.shape[1:]), a.dtype)
        big[::2] = a
        return big[::2]
    return a


@st.composite
def problems(draw):
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(-ndim, ndim - 1))
    if np.prod(shape) // shape[axis] < 2:  # at least 2 elements per channel
        shape = (shape[0] + 1, *shape[1:]) if axis % ndim != 0 else (*shape[:-1], shape[-1] + 1)
    n_dir = draw(st.sampled_from([None, 1, 3]))
    return {
        "shape": shape,
        "axis": axis,
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1, 1.0])),
        "n_dir": n_dir,
        "layout": draw(st.sampled_from(LAYOUTS)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _data(p):
    rng = np.random.default_rng(p["seed"])
    shape, n_ch, dt = p["shape"], p["shape"][p["axis"]], p["dtype"]
    dshape = shape if p["n_dir"] is None else (p["n_dir"], *shape)
    d = {
        "x": rng.normal(rng.uniform(-3, 3), rng.uniform(0.1, 3), size=shape),
        "gamma": rng.normal(1, 0.5, size=n_ch),
        "beta": rng.normal(size=n_ch),
        "dz": rng.normal(size=shape),
        "hz": rng.uniform(0.1, 2, size=shape),
        "u": rng.normal(size=dshape),
        "dz_dot": rng.normal(size=dshape),
    }
    return {k: relayout(v.astype(dt), p["layout"]) if v.ndim > 1 else v.astype(dt)
            for k, v in d.items()}  # fmt: skip


def _per_direction(fn, p, *arrays):
    if p["n_dir"] is None:
        return fn(*arrays)
    return np.stack([fn(*(a[v] for a in arrays)) for v in range(p["n_dir"])])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_function_against_autograd(p):
    d = _data(p)
    x, g, eps, axis, dt = d["x"], d["gamma"], p["eps"], p["axis"], p["dtype"]
    tol = TOLERANCE[np.dtype(dt)]
    st_ = numbabn.batch_stats(x, eps=eps, axis=axis)
    z, _ = numbabn.forward(x, g, d["beta"], eps=eps, axis=axis)
    assert relative_error(z, ref.forward(x, g, d["beta"], eps, axis)) <= tol
    pairs = {
        "jvp": (numbabn.jvp(x, g, d["u"], st_),
                _per_direction(lambda u: ref.jvp(x, g, u, eps, axis), p, d["u"])),
        "rvp": (numbabn.rvp(x, g, d["dz"], d["u"], st_),
                _per_direction(lambda u: ref.rvp(x, g, d["dz"], u, eps, axis), p, d["u"])),
        "hvp": (numbabn.hvp(x, g, d["dz"], d["u"], d["hz"], st_),
                _per_direction(lambda u: ref.hvp(x, g, d["dz"], u, d["hz"], eps, axis), p, d["u"])),
        "ggnvp": (numbabn.ggnvp(x, g, d["u"], d["hz"], st_),
                  _per_direction(lambda u: ref.ggnvp(x, g, u, d["hz"], eps, axis), p, d["u"])),
        "rop dx_dot": (numbabn.rop_backward(x, g, d["dz"], d["dz_dot"], d["u"], st_)[0],
                       _per_direction(lambda dd, u: ref.rop_backward(x, g, d["dz"], dd, u, None,
                                                                     eps, axis)[0],
                                      p, d["dz_dot"], d["u"])),
    }  # fmt: skip
    for name, (got, want) in pairs.items():
        assert got.dtype == dt, name
        assert relative_error(got, want) <= tol, name
    dx, dgamma, dbeta = numbabn.vjp(x, g, d["dz"], st_)
    for got, want in zip((dx, dgamma, dbeta), ref.vjp(x, g, d["dz"], eps, axis), strict=True):
        assert relative_error(got, want) <= tol


# --- finite differences (float64, central, step h) --------------------------------------
H = 1e-6
FD_TOL = 1e-6


def _central(f, h=H):
    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize(("shape", "axis"), [((6, 3), 1), ((4, 3, 5), 1), ((3, 2, 2, 4), -1)])
def test_jvp_and_vjp_against_finite_differences(shape, axis):
    rng = np.random.default_rng(7)
    x, u, dz = (rng.normal(size=shape) for _ in range(3))
    g, b, ug, ub = (rng.normal(size=shape[axis]) for _ in range(4))
    kw = {"eps": 1e-3, "axis": axis}

    def z(t):
        return numbabn.forward(x + t * u, g + t * ug, b + t * ub, **kw)[0]

    fd = _central(z)
    assert relative_error(numbabn.jvp(x, g, u, u_gamma=ug, u_beta=ub, **kw), fd) <= FD_TOL
    dx, dgamma, dbeta = numbabn.vjp(x, g, dz, **kw)
    # adjoint identity <dz, J u> = <vjp(dz), u>, and parameter gradients by differences
    assert np.isclose(np.vdot(dz, numbabn.jvp(x, g, u, **kw)), np.vdot(dx, u), rtol=1e-12)
    for k in range(shape[axis]):
        e = np.eye(shape[axis])[k]
        loss_g = _central(lambda t, e=e: np.vdot(dz, numbabn.forward(x, g + t * e, b, **kw)[0]))
        loss_b = _central(lambda t, e=e: np.vdot(dz, numbabn.forward(x, g, b + t * e, **kw)[0]))
        assert abs(dgamma[k] - loss_g) <= FD_TOL * max(1, abs(loss_g))
        assert abs(dbeta[k] - loss_b) <= FD_TOL * max(1, abs(loss_b))


@pytest.mark.parametrize(("shape", "axis"), [((6, 3), 1), ((4, 3, 5), 1), ((3, 2, 2, 4), -1)])
def test_second_order_against_differences_of_vjp(shape, axis):
    rng = np.random.default_rng(8)
    x, u, dz, dz_dot = (rng.normal(size=shape) for _ in range(4))
    hz = rng.uniform(0.5, 2, size=shape)
    g, ug = rng.normal(1, 0.3, size=shape[axis]), rng.normal(size=shape[axis])
    kw = {"eps": 1e-3, "axis": axis}
    b = np.zeros_like(g)
    z0 = numbabn.forward(x, g, b, **kw)[0]

    def dx_at(t, gradient):
        return numbabn.vjp(x + t * u, g, gradient(t), **kw)[0]

    rvp_fd = _central(lambda t: dx_at(t, lambda t: dz))
    assert relative_error(numbabn.rvp(x, g, dz, u, **kw), rvp_fd) <= FD_TOL
    # gradient of l = dz.z + 1/2 (z - z0)^T diag(hz) (z - z0) is dz + hz*(z - z0)
    hvp_fd = _central(
        lambda t: dx_at(t, lambda t: dz + hz * (numbabn.forward(x + t * u, g, b, **kw)[0] - z0))
    )
    assert relative_error(numbabn.hvp(x, g, dz, u, hz, **kw), hvp_fd) <= FD_TOL
    ggn_fd = _central(
        lambda t: dx_at(t, lambda t: hz * (numbabn.forward(x + t * u, g, b, **kw)[0] - z0))
    )
    assert relative_error(numbabn.ggnvp(x, g, u, hz, **kw), ggn_fd) <= FD_TOL

    def backward(t):
        dx, dg, db = numbabn.vjp(x + t * u, g + t * ug, dz + t * dz_dot, **kw)
        return np.concatenate([dx.ravel(), dg, db])

    got = numbabn.rop_backward(x, g, dz, dz_dot, u, u_gamma=ug, **kw)
    assert relative_error(np.concatenate([a.ravel() for a in got]), _central(backward)) <= FD_TOL
