"""Bad arguments to numbabn.torch.batch_norm raise the error torch raises (same
exception type and, where torch has one, the same wording) before any kernel runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

F64 = torch.float64
X = torch.randn(5, 3, 4, dtype=F64)
C3 = torch.ones(3, dtype=F64)


def _theirs(x, weight=None, bias=None, eps=1e-5, running_mean=None, running_var=None,
            momentum=0.1):  # fmt: skip
    return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)


# (id, arguments, exception, message); torch raises the same exception type.
AS_TORCH = [
    ("weight size", dict(x=X, weight=torch.ones(4, dtype=F64)), RuntimeError,
     "weight should contain 3 elements not 4"),
    ("bias size", dict(x=X, bias=torch.ones(2, dtype=F64)), RuntimeError,
     "bias should contain 3 elements not 2"),
    ("weight dtype", dict(x=X, weight=torch.ones(3)), RuntimeError, "dtype"),
    ("weight device", dict(x=X, weight=torch.ones(3, dtype=F64, device="meta")), RuntimeError,
     "device"),
    ("one value per channel", dict(x=torch.randn(1, 3, dtype=F64)), ValueError,
     r"Expected more than 1 value per channel when training, got input size "
     r"torch\.Size\(\[1, 3\]\)"),
    ("one running statistic", dict(x=X, running_mean=torch.zeros(3, dtype=F64)), ValueError,
     "running_mean and running_var must either both be None or neither be None"),
    ("running statistics size", dict(x=X, running_mean=torch.zeros(4, dtype=F64),
                                     running_var=torch.ones(4, dtype=F64)), RuntimeError,
     "running_mean should contain 3 elements not 4"),
    ("running statistics dtype", dict(x=X, running_mean=torch.zeros(3),
                                      running_var=torch.ones(3)), RuntimeError, "dtype"),
    ("momentum None", dict(x=X, momentum=None), TypeError, "momentum must be float"),
    ("eps zero", dict(x=X, eps=0.0), ValueError,
     "batch_norm eps must be positive during training, but got 0.0"),
    ("eps negative", dict(x=X, eps=-1.0), ValueError, "eps must be positive"),
]  # fmt: skip

# (id, arguments, exception, message) where numbabn's type differs from torch's.
OWN = [
    # torch: IndexError
    ("1-D", dict(x=torch.randn(5, dtype=F64)), ValueError, r"expected at least 2D input \(got 1D"),
    ("0-D", dict(x=torch.tensor(1.0, dtype=F64)), ValueError, r"expected at least 2D input"),
    # torch: NotImplementedError for integers and complex; it runs float16 (numbabn does not)
    ("int64", dict(x=torch.ones(5, 3, dtype=torch.int64)), TypeError, "float32 and float64"),
    ("complex", dict(x=torch.ones(5, 3, dtype=torch.complex64)), TypeError, "float32 and float64"),
    ("float16", dict(x=torch.ones(5, 3, dtype=torch.float16)), TypeError, "float32 and float64"),
    ("not a tensor", dict(x=X.numpy()), TypeError, "x must be a torch.Tensor"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "exc", "match"), [c[1:] for c in AS_TORCH],
                         ids=[c[0] for c in AS_TORCH])  # fmt: skip
def test_errors_as_torch(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nbt.batch_norm(**kwargs)
    with pytest.raises(exc):
        _theirs(**kwargs)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [c[1:] for c in OWN],
                         ids=[c[0] for c in OWN])  # fmt: skip
def test_errors_of_unsupported_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nbt.batch_norm(**kwargs)


def test_more_than_one_value_per_channel_in_a_batch_of_one_is_fine():
    x = torch.randn(1, 3, 2, dtype=F64)  # torch accepts it too
    torch.testing.assert_close(nbt.batch_norm(x, C3), _theirs(x, C3))


def test_bad_call_leaves_running_statistics_alone():
    mean, var = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(RuntimeError):
        nbt.batch_norm(X, torch.ones(4, dtype=F64), running_mean=mean, running_var=var)
    assert torch.equal(mean, torch.zeros(3, dtype=F64)) and torch.equal(
        var, torch.ones(3, dtype=F64)
    )


def test_process_group_without_torch_distributed():
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        nbt.batch_norm(X, process_group=object())


def test_layers_check_their_input_as_torch():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        nbt.BatchNorm2d(3)(X)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nbt.BatchNorm1d(3, dtype=F64)(torch.randn(1, 3, dtype=F64))
