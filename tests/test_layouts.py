"""Memory layouts, read-only and unmodified inputs, and NaN/inf confinement."""

import numpy as np
import pytest

import numbabn

from cases import make_case


def _all_calls(c, **kw):
    """Every public function on the inputs of ``c``; returns a flat tuple of arrays."""
    x, g = c["x"], c["gamma"]
    z, st = numbabn.forward(x, g, c["beta"], **kw)
    return (
        z,
        st.mean,
        st.invstd,
        numbabn.jvp(x, g, c["u"], u_gamma=c["u_gamma"], u_beta=c["u_beta"], **kw),
        *numbabn.vjp(x, g, c["dz"], **kw),
        numbabn.rvp(x, g, c["dz"], c["u"], **kw),
        numbabn.hvp(x, g, c["dz"], c["u"], c["hz"], **kw),
        numbabn.hvp(x, g, c["dz"], c["u"], lambda t: 2.0 * t, **kw),
        numbabn.ggnvp(x, g, c["u"], c["hz"], **kw),
        *numbabn.rop_backward(x, g, c["dz"], c["dz_dot"], c["u"], u_gamma=c["u_gamma"], **kw),
    )


def _views(a, kind):
    """The values of ``a`` in another memory layout."""
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative":
        flipped = np.ascontiguousarray(a[..., ::-1])
        return flipped[..., ::-1]
    if kind == "strided":
        big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "readonly":
        b = a.copy()
        b.setflags(write=False)
        return b
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["fortran", "negative", "strided", "readonly"])
@pytest.mark.parametrize(("shape", "axis"), [((6, 3, 4, 2), 1), ((6, 4, 2, 3), -1), ((8, 3), 1)])
def test_every_layout_gives_the_same_result(kind, shape, axis):
    c = make_case(shape, axis)
    base = _all_calls(c, axis=axis)
    other = {k: _views(v, kind) if v.ndim > 1 else v for k, v in c.items()}
    assert not other["x"].flags.c_contiguous or kind == "readonly"
    for a, b in zip(base, _all_calls(other, axis=axis), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_dir", [None, 2])
def test_inputs_are_never_modified(dtype, n_dir):
    c = make_case((4, 3, 5), dtype=dtype, n_dir=n_dir)
    saved = {k: v.copy() for k, v in c.items()}
    _all_calls(c)
    for k, v in c.items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)


def test_results_are_fresh_arrays():
    c = make_case((4, 3, 5))
    out = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"])
    for k in ("x", "dz", "u"):
        assert not np.shares_memory(out, c[k])


def test_stats_are_immutable():
    st = numbabn.batch_stats(make_case((4, 3))["x"])
    with pytest.raises(ValueError):
        st.mean[0] = 1.0
    with pytest.raises(AttributeError):
        st.eps = 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_stay_in_their_channel(bad):
    c = make_case((6, 3, 4))
    clean = _all_calls(c)
    dirty = {k: v.copy() for k, v in c.items()}
    dirty["x"][2, 1, 3] = bad
    dirty["dz"][0, 1, 0] = bad
    outputs = zip(clean, _all_calls(dirty), strict=True)
    for i, (a, b) in enumerate(outputs):
        if a.shape[-1] == 3:  # per-channel outputs (C,)
            ch0, ch1, ch2 = np.s_[..., 0], np.s_[..., 1], np.s_[..., 2]
        else:
            ch0, ch1, ch2 = np.s_[:, 0], np.s_[:, 1], np.s_[:, 2]
        np.testing.assert_array_equal(a[ch0], b[ch0])
        np.testing.assert_array_equal(a[ch2], b[ch2])
        if i != len(clean) - 1:  # dbeta_dot = sum(dz_dot) reads neither x nor dz
            assert np.isnan(b[ch1]).any() or np.isinf(b[ch1]).any()
