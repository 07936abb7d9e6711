"""Bad input gets a TypeError or ValueError that names the argument."""

import numpy as np
import pytest

import numbabn

from cases import make_case


@pytest.fixture
def c():
    return make_case((5, 3, 4))


def test_non_arrays_are_type_errors(c):
    with pytest.raises(TypeError, match="^x must be a NumPy array"):
        numbabn.batch_stats("not an array")
    with pytest.raises(TypeError, match="^x must be a NumPy array.*NoneType"):
        numbabn.forward(None, c["gamma"], c["beta"])
    with pytest.raises(TypeError, match="^gamma must be.*list"):
        numbabn.jvp(c["x"], [1.0, 2.0, 3.0], c["u"])
    with pytest.raises(TypeError, match="^dz must be.*NoneType"):
        numbabn.rvp(c["x"], c["gamma"], None, c["u"])
    with pytest.raises(TypeError, match="^u must be.*str"):
        numbabn.rvp(c["x"], c["gamma"], c["dz"], "u")
    with pytest.raises(TypeError, match="^hz must be an array shaped like x .* or a callable"):
        numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], None)
    with pytest.raises(TypeError, match="^stats must be a BatchStats"):
        numbabn.jvp(c["x"], c["gamma"], c["u"], stats={"mean": 0})


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex128, object, np.float16, bool])
def test_unsupported_dtypes(c, dtype):
    with pytest.raises(TypeError, match=r"^x has dtype .*float32 and float64"):
        numbabn.batch_stats(c["x"].astype(dtype))
    with pytest.raises(TypeError, match=r"^u has dtype"):
        numbabn.jvp(c["x"], c["gamma"], c["u"].astype(dtype))


def test_mixed_float_dtypes_name_both(c):
    with pytest.raises(TypeError, match="^gamma has dtype float32 but x has dtype float64"):
        numbabn.forward(c["x"], c["gamma"].astype(np.float32), c["beta"])
    with pytest.raises(TypeError, match="^dz has dtype float32 but x has dtype float64"):
        numbabn.vjp(c["x"], c["gamma"], c["dz"].astype(np.float32))
    with pytest.raises(TypeError, match="^hz has dtype float32"):
        numbabn.ggnvp(c["x"], c["gamma"], c["u"], c["hz"].astype(np.float32))
    with pytest.raises(TypeError, match="^u_gamma has dtype float32"):
        numbabn.jvp(c["x"], c["gamma"], c["u"], u_gamma=c["u_gamma"].astype(np.float32))


def test_shape_mismatches(c):
    with pytest.raises(ValueError, match=r"^gamma has shape \(4,\); expected \(3,\)"):
        numbabn.jvp(c["x"], np.ones(4), c["u"])
    with pytest.raises(ValueError, match=r"^beta has shape \(2,\)"):
        numbabn.forward(c["x"], c["gamma"], np.ones(2))
    with pytest.raises(ValueError, match=r"^u has shape \(5, 3, 5\)"):
        numbabn.rvp(c["x"], c["gamma"], c["dz"], np.ones((5, 3, 5)))
    with pytest.raises(ValueError, match=r"^dz has shape \(5, 3\)"):
        numbabn.rvp(c["x"], c["gamma"], np.ones((5, 3)), c["u"])
    with pytest.raises(ValueError, match=r"^u has shape \(2, 5, 3, 5\).*V directions"):
        numbabn.jvp(c["x"], c["gamma"], np.ones((2, 5, 3, 5)))
    with pytest.raises(ValueError, match="^u has zero directions"):
        numbabn.jvp(c["x"], c["gamma"], np.ones((0, 5, 3, 4)))
    with pytest.raises(ValueError, match=r"^u_gamma has shape \(2, 3\); expected \(3,\)"):
        numbabn.jvp(c["x"], c["gamma"], c["u"], u_gamma=np.ones((2, 3)))
    with pytest.raises(
        ValueError, match=r"^u_beta has shape \(3, 3\); expected \(3,\) or \(2, 3\)"
    ):
        numbabn.jvp(c["x"], c["gamma"], np.ones((2, 5, 3, 4)), u_beta=np.ones((3, 3)))
    with pytest.raises(ValueError, match="^hz has shape"):
        numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], np.ones((5, 3)))
    with pytest.raises(ValueError, match="^dz_dot has shape .* same directions"):
        numbabn.rop_backward(c["x"], c["gamma"], c["dz"], c["dz"], np.ones((2, 5, 3, 4)))


def test_ndim_and_axis(c):
    with pytest.raises(ValueError, match="^x must have at least 2 dimensions"):
        numbabn.batch_stats(np.ones(5))
    with pytest.raises(ValueError, match="^x must have at least 2 dimensions"):
        numbabn.jvp(np.ones(5), np.ones(5), np.ones(5), numbabn.batch_stats(c["x"]))
    with pytest.raises(ValueError, match="^axis 3 is out of bounds"):
        numbabn.forward(c["x"], c["gamma"], c["beta"], axis=3)
    with pytest.raises(ValueError, match="^axis -4 is out of bounds"):
        numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], axis=-4)
    with pytest.raises(TypeError, match="^axis must be an int"):
        numbabn.batch_stats(c["x"], axis=1.0)


@pytest.mark.parametrize("eps", [-1e-5, np.inf, np.nan])
def test_bad_eps(c, eps):
    with pytest.raises(ValueError, match="^eps must be finite and non-negative"):
        numbabn.forward(c["x"], c["gamma"], c["beta"], eps=eps)


def test_eps_type(c):
    with pytest.raises(TypeError, match="^eps must be a real number"):
        numbabn.batch_stats(c["x"], eps="1e-5")


def test_empty_batch_and_zero_channels():
    with pytest.raises(ValueError, match="^x has an empty batch"):
        numbabn.batch_stats(np.ones((0, 3)))
    with pytest.raises(ValueError, match="^x has an empty batch"):
        numbabn.batch_stats(np.ones((4, 3, 0)))
    with pytest.raises(ValueError, match="^x has no channels"):
        numbabn.batch_stats(np.ones((4, 0, 2)))


def test_zero_variance_with_zero_eps(c):
    x = c["x"].copy()
    x[:, 1] = 2.5
    with pytest.raises(ValueError, match=r"^x has zero variance in channel\(s\) \[1\] and eps=0"):
        numbabn.batch_stats(x, eps=0.0)
    st = numbabn.batch_stats(x, eps=1e-5)  # fine with eps > 0
    assert st.invstd[1] == pytest.approx(1 / np.sqrt(1e-5))


def test_stats_of_another_batch(c):
    st = numbabn.batch_stats(c["x"])
    with pytest.raises(ValueError, match=r"^stats belong to a batch of shape \(5, 3, 4\)"):
        numbabn.rvp(c["x"][:4], c["gamma"], c["dz"][:4], c["u"][:4], st)
    with pytest.raises(ValueError, match="^stats were computed with axis=1, but axis=-1"):
        numbabn.jvp(c["x"], c["gamma"], c["u"], st, axis=-1)
    with pytest.raises(ValueError, match="^stats were computed with eps=1e-05, but eps=0.1"):
        numbabn.jvp(c["x"], c["gamma"], c["u"], st, eps=0.1)


def test_hz_callable_wrong_output(c):
    with pytest.raises(ValueError, match=r"^hz\(t\) has shape \(5, 3\)"):
        numbabn.hvp(c["x"], c["gamma"], c["dz"], c["u"], lambda t: t[:, :, 0])
    with pytest.raises(TypeError, match=r"^hz\(t\) must be a NumPy array.*list"):
        numbabn.ggnvp(c["x"], c["gamma"], c["u"], lambda t: t.tolist())


def test_backend_argument(c):
    with pytest.raises(ValueError, match="^backend must be one of"):
        numbabn.batch_stats(c["x"], backend="gpu")
    with pytest.raises(ValueError, match="^backend='cuda' was requested but the arrays are NumPy"):
        numbabn.batch_stats(c["x"], backend="cuda")
    assert numbabn.batch_stats(c["x"], backend="cpu").count == 20
