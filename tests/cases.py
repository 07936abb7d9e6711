"""Shared test data, the tolerance table and comparison helpers."""

from __future__ import annotations

import numpy as np

#: Relative tolerance (max abs error / max(max abs reference, 1)) by dtype, against
#: a float64 reference computed from the same (rounded) inputs. The floor of 1 (the
#: scale of the test inputs) keeps exact zeros, e.g. one element per channel, fair.
TOLERANCE = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 2e-4}


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), 1.0)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


def assert_close(actual, expected, dtype, what: str = "") -> None:
    """Assert ``actual`` (in ``dtype``) matches ``expected`` within TOLERANCE."""
    assert np.dtype(actual.dtype) == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {dtype}"
    err = relative_error(actual, expected)
    assert err <= TOLERANCE[np.dtype(dtype)], f"{what}: relative error {err:.3e}"


def make_case(shape, axis=1, dtype=np.float64, seed=0, n_dir=None):
    """Random inputs of one BatchNorm call; ``n_dir`` adds a direction axis to u-like arrays."""
    rng = np.random.default_rng(seed)
    n_ch = shape[axis]
    dir_shape = shape if n_dir is None else (n_dir, *shape)
    d = {
        "x": rng.normal(1.5, 2.0, size=shape),
        "gamma": rng.normal(1.0, 0.5, size=n_ch),
        "beta": rng.normal(size=n_ch),
        "dz": rng.normal(size=shape),
        "u": rng.normal(size=dir_shape),
        "dz_dot": rng.normal(size=dir_shape),
        "hz": rng.uniform(0.5, 2.0, size=shape),
        "u_gamma": rng.normal(size=n_ch if n_dir is None else (n_dir, n_ch)),
        "u_beta": rng.normal(size=n_ch if n_dir is None else (n_dir, n_ch)),
    }
    return {k: v.astype(dtype) for k, v in d.items()}


def symmetric_curvature(size: int, seed: int = 1) -> np.ndarray:
    """A random symmetric positive definite (size, size) matrix."""
    a = np.random.default_rng(seed).normal(size=(size, size))
    return a @ a.T / size + np.eye(size)
