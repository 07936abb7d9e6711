"""numbabn.vjp_backward (the double backward of a vjp) against reverse mode over
reverse mode in autograd, and against the jvp and rop_backward it fuses."""

import numpy as np
import pytest

import numbabn

import reference as ref
from cases import assert_close, make_case

SHAPES = [((7, 3), 1), ((4, 5, 3), -1), ((3, 2, 4, 3), 1), ((13, 600), 1), ((1, 4), 1)]


def _arguments(c, with_gamma: bool, with_beta: bool):
    return c["u"], c["u_gamma"] if with_gamma else None, c["u_beta"] if with_beta else None


@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n_dir", [None, 2])
@pytest.mark.parametrize(("with_gamma", "with_beta"), [(False, False), (True, False), (True, True)])
def test_against_reverse_over_reverse(shape, axis, dtype, n_dir, with_gamma, with_beta):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    a, ag, ab = _arguments(c, with_gamma, with_beta)
    got = numbabn.vjp_backward(c["x"], c["gamma"], c["dz"], a, a_gamma=ag, a_beta=ab, axis=axis)

    def one(v):
        pick = (lambda t: t) if v is None else (lambda t: None if t is None else t[v])
        return ref.vjp_backward(c["x"], c["gamma"], c["dz"], pick(a), pick(ag), pick(ab),
                                1e-5, axis)  # fmt: skip

    if n_dir is None:
        want = one(None)
    else:
        want = [np.stack(p) for p in zip(*map(one, range(n_dir)), strict=True)]
    for g, w, name in zip(got, want, ("dz_bar", "x_bar", "gamma_bar"), strict=True):
        assert g.shape == w.shape, name
        assert_close(g, w, dtype, name)


@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("n_dir", [None, 3])
def test_equals_the_jvp_and_rop_backward_it_fuses(shape, axis, n_dir):
    c = make_case(shape, axis, np.float32, n_dir=n_dir)
    x, g, dz, a, ag, ab = (c[k] for k in ("x", "gamma", "dz", "u", "u_gamma", "u_beta"))
    st = numbabn.batch_stats(x, axis=axis)
    dz_bar, x_bar, g_bar = numbabn.vjp_backward(x, g, dz, a, st, a_gamma=ag, a_beta=ab)
    np.testing.assert_array_equal(dz_bar, numbabn.jvp(x, g, a, st, u_gamma=ag, u_beta=ab))
    rop = numbabn.rop_backward(x, g, dz, None, a, st, u_gamma=ag)
    np.testing.assert_array_equal(x_bar, rop[0])
    np.testing.assert_array_equal(g_bar, rop[1])


def test_several_directions_give_the_bits_of_single_calls():
    c = make_case((6, 3, 5), 1, np.float32, n_dir=3)
    x, g, dz, a, ag = (c[k] for k in ("x", "gamma", "dz", "u", "u_gamma"))
    many = numbabn.vjp_backward(x, g, dz, a, a_gamma=ag)
    for v in range(3):
        one = numbabn.vjp_backward(x, g, dz, a[v], a_gamma=ag[v])
        for m, o in zip(many, one, strict=True):
            np.testing.assert_array_equal(m[v], o)


def test_inputs_are_not_modified():
    c = make_case((5, 3, 4), 1, np.float64)
    before = {k: v.copy() for k, v in c.items()}
    numbabn.vjp_backward(c["x"], c["gamma"], c["dz"], c["u"], a_gamma=c["u_gamma"],
                         a_beta=c["u_beta"])  # fmt: skip
    for k, v in c.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_bad_arguments_are_named():
    c = make_case((5, 3), 1, np.float64)
    x, g, dz, a = c["x"], c["gamma"], c["dz"], c["u"]
    with pytest.raises(ValueError, match="a has shape"):
        numbabn.vjp_backward(x, g, dz, a[:4])
    with pytest.raises(ValueError, match="dz has shape"):
        numbabn.vjp_backward(x, g, dz[:, :2], a)
    with pytest.raises(ValueError, match="a_gamma"):
        numbabn.vjp_backward(x, g, dz, a, a_gamma=np.ones(4))
    with pytest.raises(ValueError, match="a_beta"):
        numbabn.vjp_backward(x, g, dz, a, a_beta=np.ones((2, 3)))
    with pytest.raises(TypeError, match="a has dtype float32"):
        numbabn.vjp_backward(x, g, dz, a.astype(np.float32))
