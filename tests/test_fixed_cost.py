"""Plans: a call whose key (operation, array type, dtype, shapes, axis, configuration)
was checked before runs without the checks, and gives the bits of the checked
call; anything else is checked again, errors included. (Speed itself is measured
by ``numbabn.bench.fixed_cost``, not asserted here.)"""

import dataclasses

import numpy as np
import pytest

import numbabn
from numbabn import _pipeline, config

from cases import make_case


@pytest.fixture
def checked(monkeypatch):
    """A list that gets one entry per call that takes the full checks."""
    calls = []
    original = _pipeline._checked

    def spy(op, *args, **kwargs):
        calls.append(op)
        return original(op, *args, **kwargs)

    monkeypatch.setattr(_pipeline, "_checked", spy)
    monkeypatch.setattr(_pipeline, "_PLANS", {})
    return calls


def _operations(c, st):
    x, g, dz, u, hz, dzd = (c[k] for k in ("x", "gamma", "dz", "u", "hz", "dz_dot"))
    return {
        "jvp": lambda: numbabn.jvp(x, g, u, st),
        "jvp, tangents": lambda: numbabn.jvp(x, g, u, st, u_gamma=c["u_gamma"], u_beta=c["u_beta"]),
        "vjp": lambda: numbabn.vjp(x, g, dz, st),
        "rvp": lambda: numbabn.rvp(x, g, dz, u, st),
        "ggnvp": lambda: numbabn.ggnvp(x, g, u, hz, st),
        "hvp": lambda: numbabn.hvp(x, g, dz, u, hz, st),
        "rop_backward": lambda: numbabn.rop_backward(x, g, dz, dzd, u, st, u_gamma=c["u_gamma"]),
    }


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


#: (shape, axis, statistics given); statistics computed inside take the default axis.
CASES = [((4, 3, 2), 1, True), ((6, 5), 1, True), ((3, 2, 4), -1, True), ((4, 3, 2), 1, False),
         ((6, 5), 1, False)]  # fmt: skip


@pytest.mark.parametrize(("shape", "axis", "given"), CASES)
@pytest.mark.parametrize("n_dir", [None, 2])
def test_planned_calls_give_the_bits_of_checked_calls(checked, shape, axis, given, n_dir):
    c = make_case(shape, axis, np.float32, n_dir=n_dir)
    st = numbabn.batch_stats(c["x"], axis=axis) if given else None
    for name, call in _operations(c, st).items():
        checked.clear()
        first = _flat(call())
        assert len(checked) == 1, name
        again = _flat(call())
        assert len(checked) == 1, f"{name}: the second call was checked again"
        for a, b in zip(first, again, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes(), name


def test_forward_plans(checked):
    c = make_case((5, 4, 3), -1)
    z, st = numbabn.forward(c["x"], c["gamma"], c["beta"], axis=-1)
    z2, st2 = numbabn.forward(c["x"], c["gamma"], c["beta"], axis=-1)
    assert len(checked) == 0  # forward has a checked path of its own
    assert z.tobytes() == z2.tobytes() and st2.mean.tobytes() == st.mean.tobytes()
    assert st2.axis == 2 and not st2.mean.flags.writeable
    with pytest.raises(ValueError, match="^eps must be finite"):
        numbabn.forward(c["x"], c["gamma"], c["beta"], eps=float("nan"), axis=-1)
    with pytest.raises(TypeError, match="^axis must be an int"):
        numbabn.forward(c["x"], c["gamma"], c["beta"], axis=True)
    with pytest.raises(ValueError, match=r"^beta has shape \(2,\)"):
        numbabn.forward(c["x"], c["gamma"], c["beta"][:2], axis=-1)


def test_anything_new_is_checked_again(checked):
    c = make_case((4, 3, 2))
    x, g, dz, u = c["x"], c["gamma"], c["dz"], c["u"]
    st = numbabn.batch_stats(x)
    numbabn.rvp(x, g, dz, u, st)
    numbabn.rvp(x, g, dz, u, st)
    assert len(checked) == 1
    with pytest.raises(ValueError, match=r"^dz has shape \(4, 3\)"):
        numbabn.rvp(x, g, dz[..., 0], u, st)
    with pytest.raises(TypeError, match="^dz has dtype float32"):
        numbabn.rvp(x, g, dz.astype(np.float32), u, st)
    with pytest.raises(ValueError, match=r"^stats belong to a batch of shape \(4, 3, 2\)"):
        numbabn.rvp(x[:3], g, dz[:3], u[:3], st)
    with pytest.raises(TypeError, match="^dz must be a NumPy array"):
        numbabn.rvp(x, g, dz.tolist(), u, st)
    numbabn.rvp(x, g, dz, u, st, eps=st.eps)  # explicit eps, out, backend: checked
    numbabn.rvp(x, g, dz, u, st, out=np.empty_like(u))
    numbabn.rvp(x, g, dz, u, st, backend="cpu")
    numbabn.rvp(np.asfortranarray(x), g, dz, u, st)  # same key: planned, copied once
    assert len(checked) == 8


def test_configuration_changes_take_new_plans(checked, monkeypatch):
    c = make_case((64, 8, 3, 5))
    st = numbabn.batch_stats(c["x"])
    serial = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], st)
    monkeypatch.setattr(config, "SERIAL_MAX_ELEMENTS", 0)
    parallel = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], st)
    assert len(checked) == 2
    np.testing.assert_allclose(parallel, serial, rtol=1e-12, atol=1e-12)


def test_statistics_made_elsewhere(checked):
    """BatchStats built by hand are checked on first use, then planned; a float32
    mean is converted for each call; dataclasses.replace makes new statistics."""
    c = make_case((4, 3, 2))
    x, g, dz, u = c["x"], c["gamma"], c["dz"], c["u"]
    st = numbabn.batch_stats(x)
    want = numbabn.rvp(x, g, dz, u, st)
    fields = {k: getattr(st, k) for k in ("mean", "var", "invstd", "count", "eps", "axis", "shape")}
    by_hand = numbabn.BatchStats(**{**fields, "mean": st.mean.copy()})
    np.testing.assert_array_equal(numbabn.rvp(x, g, dz, u, by_hand), want)
    np.testing.assert_array_equal(numbabn.rvp(x, g, dz, u, by_hand), want)
    single = numbabn.BatchStats(**{**fields, "mean": st.mean.astype(np.float32)})
    got = numbabn.rvp(x, g, dz, u, single)
    np.testing.assert_allclose(got, numbabn.rvp(x, g, dz, u, by_hand), rtol=1e-5, atol=1e-6)
    shifted = dataclasses.replace(st, mean=st.mean + 1.0)
    assert shifted._prepared is None
    assert not np.array_equal(numbabn.rvp(x, g, dz, u, shifted), want)


@pytest.mark.parametrize("given", [True, False])
@pytest.mark.parametrize("n_dir", [None, 2])
def test_vjp_backward_plans(monkeypatch, given, n_dir):
    """vjp_backward remembers its plan too: the second call makes no checked Call and
    gives the same bits; a bad argument is still caught after a planned call."""
    monkeypatch.setattr(_pipeline, "_PLANS", {})
    made = []

    class CountedCall(_pipeline.Call):
        def __init__(self, *args, **kwargs):
            made.append(args[0].shape)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(_pipeline, "Call", CountedCall)
    c = make_case((4, 3, 2), 1, np.float32, n_dir=n_dir)
    x, g, dz, a = c["x"], c["gamma"], c["dz"], c["u"]
    st = numbabn.batch_stats(x) if given else None
    first = numbabn.vjp_backward(x, g, dz, a, st, a_gamma=c["u_gamma"])
    assert len(made) == 1
    again = numbabn.vjp_backward(x, g, dz, a, st, a_gamma=c["u_gamma"])
    assert len(made) == 1, "the second call was checked again"
    for p, q in zip(first, again, strict=True):
        assert p.dtype == q.dtype and p.shape == q.shape and p.tobytes() == q.tobytes()
    with pytest.raises(ValueError, match="a_gamma has shape"):
        numbabn.vjp_backward(x, g, dz, a, st, a_gamma=c["u_gamma"][..., :2])
