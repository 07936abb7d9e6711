"""The dense Jacobian/Hessian reference is checked against autodiff, and numbabn
against the dense reference on tiny batches."""

import numpy as np
import pytest
from autograd import hessian, jacobian

import numbabn

import reference as ref
from cases import assert_close, make_case


@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_dense_tensors_match_autograd(eps):
    c = make_case((5, 3), seed=3)
    jac, hess = ref.dense_layer_tensors(c["x"], c["gamma"], eps)

    def z(x):
        return ref.bn(x, c["gamma"], c["beta"], eps, 1)

    np.testing.assert_allclose(jac, jacobian(z)(c["x"]), rtol=0, atol=1e-12)
    for n in range(5):
        for d in range(3):
            h_auto = hessian(lambda x, n=n, d=d: z(x)[n, d])(c["x"])
            np.testing.assert_allclose(hess[n, d], h_auto, rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    ("shape", "axis"), [((5, 3), 1), ((4, 2, 3), 1), ((3, 2, 2, 2), -1), ((1, 2, 3), 1)]
)
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_numbabn_matches_dense(shape, axis, eps):
    c = make_case(shape, axis, seed=4)
    dense = ref.dense_products(c["x"], c["gamma"], eps, axis % len(shape), c["dz"], c["u"], c["hz"])
    args = {"eps": eps, "axis": axis}
    assert_close(numbabn.jvp(c["x"], c["gamma"], c["u"], **args), dense["jvp"], np.float64, "jvp")
    assert_close(
        numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], **args), dense["rvp"], np.float64, "rvp"
    )
    assert_close(
        numbabn.ggnvp(c["x"], c["gamma"], c["u"], c["hz"], **args),
        dense["ggnvp"],
        np.float64,
        "ggnvp",
    )
    assert_close(
        numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], c["hz"], **args),
        dense["hvp"],
        np.float64,
        "hvp",
    )
