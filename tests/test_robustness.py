"""float32 accuracy on large offset batches, Numba's cache on a read-only
install, and index arithmetic past 2**31 elements."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import numbabn
from numbabn.bench import closed_form
from numbabn.kernels import cpu
from numbabn.kernels import formulas as f

from cases import relative_error

#: Documented bound: float32 results within this relative error of float64.
FLOAT32_BOUND = 1e-4


@pytest.mark.parametrize("shape", [(10_000_000, 1), (10, 1, 1_000_000)])
def test_float32_accuracy_far_from_zero(shape):
    """10**7 elements per channel, x = 1e4 + N(0, 1): two-pass statistics and
    float64 accumulators keep float32 results within 1e-4 of float64."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    dz, u = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    gamma = np.full(1, 1.5, np.float32)
    x64 = x.astype(np.float64)  # the reference sees the same rounded inputs
    st = numbabn.batch_stats(x)
    assert abs(st.mean[0] - x64.mean()) <= 1e-12 * 1e4
    assert abs(st.var[0] / x64.var() - 1) <= 1e-10
    g64, dz64, u64 = gamma.astype(np.float64), dz.astype(np.float64), u.astype(np.float64)
    errors = {
        "jvp": relative_error(numbabn.jvp(x, gamma, u, st), closed_form.jvp(x64, g64, u64)),
        "rvp": relative_error(
            numbabn.rvp(x, gamma, dz, u, st), closed_form.rvp(x64, g64, dz64, u64)
        ),
        "vjp": relative_error(numbabn.vjp(x, gamma, dz, st)[0], closed_form.jvp(x64, g64, dz64)),
    }
    assert max(errors.values()) <= FLOAT32_BOUND, errors


@pytest.mark.parametrize("first", [0.0, 1e4, -3e7])
@pytest.mark.parametrize("axis", [1, -1])
def test_statistics_with_an_outlier_first_element(first, axis):
    """Statistics are one pass about each channel's first element; an outlier
    there (up to dominating the variance) must not cost accuracy."""
    rng = np.random.default_rng(3)
    x = 1e6 + rng.standard_normal((4000, 3))
    x[0, :] = 1e6 + first  # the first element of every channel, for either axis
    x = x if axis == 1 else np.ascontiguousarray(x.T.reshape(1, 3, 4000).transpose(0, 2, 1))
    st = numbabn.batch_stats(x, axis=axis)
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(st.mean, flat.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(st.var, flat.var(axis=0), rtol=1e-10)


def test_cache_falls_back_when_package_and_home_are_not_writable(tmp_path):
    """A read-only install: a file where kernels/__pycache__ would go (so even
    root cannot write there), HOME unwritable, no NUMBA_CACHE_DIR."""
    package = Path(numbabn.__file__).parent
    copy = tmp_path / "site" / "numbabn"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "kernels" / "__pycache__").write_text("not a directory")
    for path in copy.rglob("*"):
        path.chmod(0o444 if path.is_file() else 0o555)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME="/dev/null", PYTHONPATH=str(copy.parent))
    script = (
        "import numpy as np, numba, numbabn; x = np.ones((4, 3)); x[0] = 2;"
        "r = numbabn.rvp(x, np.ones(3), x, x); assert np.isfinite(r).all();"
        "print(numbabn.__file__); print(numba.config.CACHE_DIR)"
    )
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    where, cache_dir = run.stdout.split()
    assert where.startswith(str(copy))
    assert cache_dir.startswith(tempfile.gettempdir())


def test_index_arithmetic_has_no_int32_overflow():
    pre = 2**40 + 7
    for task in (0, 17, 31):
        k, lo, hi, c0, c1 = cpu._task_bounds(task, 32, 1, pre, 3)
        assert (k, lo, hi, c0, c1) == (task, task * pre // 32, (task + 1) * pre // 32, 0, 3)
    k, lo, hi, c0, c1 = cpu._task_bounds(2**33 + 5, 2**34, 4, pre, 2**20)
    assert (k, c0, c1) == ((2**33 + 5) // 4, 1 * 2**18, 2 * 2**18)


def _available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(_available_memory_bytes() < 14 * 2**30, reason="needs ~9 GiB free")
def test_statistics_of_an_array_over_2_pow_31_elements():
    """A float32 array of 2**31 + 2048 elements (8.6 GB), in a fresh process."""
    script = """
import numpy as np, numbabn
n = 2**30 + 1024
x = np.empty((n, 2), np.float32)
x[:, 0] = 1.0
x[:, 1] = 0.0
x[-1, 0] = 3.0          # the very last elements lie past index 2**31
x[-1, 1] = float(n)
st = numbabn.batch_stats(x)
assert abs(st.mean[0] - (1 + 2 / n)) < 1e-12, st.mean
assert abs(st.mean[1] - 1.0) < 1e-9, st.mean
assert st.count == n
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr


@pytest.mark.parametrize(
    "terms",
    [
        f.TERM_PARAM,
        f.TERM_PROJ_U | f.TERM_PARAM,
        f.TERM_PROJ_W,
        f.TERM_RVP,
        f.TERM_RVP | f.TERM_CURV,
        f.TERM_RVP | f.TERM_PROJ_W | f.TERM_UG_PROJ_DZ,
        f.TERM_PROJ_U | f.TERM_PROJ_W | f.TERM_CURV,  # a combination no operation uses
    ],
)
def test_coefficients_compiled_per_terms_value_match_the_formulas(terms):
    """Each terms value has its own compiled coefficient kernel (the value is a
    compile-time constant); every one must give what the shared per-channel
    formulas give when run as plain Python."""
    rng = np.random.default_rng(terms)
    n_dir, n_ch, count = 3, 5, 7.0
    sums = rng.standard_normal((n_dir, f.N_SUMS, n_ch))
    gamma, invstd = rng.uniform(0.5, 1.5, (2, n_ch))
    ug, ub = rng.standard_normal((2, n_dir, n_ch))
    expected = np.empty((n_dir, f.N_COEF, n_ch))
    for v in range(n_dir):
        for c in range(n_ch):
            f.channel_coefficients(
                terms, sums, v, c, gamma[c], invstd[c], count, ug[v, c], ub[v, c], expected
            )
    got = cpu.coefficients(terms, sums, gamma, invstd, count, ug, ub)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)
    without_ub = cpu.coefficients(terms, sums, gamma, invstd, count, ug, None)
    expected_k1 = np.where(terms & f.TERM_PARAM, expected[:, f.K_1] - ub, expected[:, f.K_1])
    np.testing.assert_allclose(without_ub[:, f.K_1], expected_k1, rtol=1e-12, atol=1e-12)
