"""``python -m numbabn demo``: every operation on a CNN-shaped batch, checked
against the NumPy closed form, with a timing table."""

from __future__ import annotations

import numpy as np

from .. import batch_stats, forward, hvp, jvp, rvp
from . import closed_form
from .timing import compile_notice, median_seconds


def run(shape: tuple[int, ...] = (32, 64, 56, 56), dtype=np.float32, repeats: int = 5) -> bool:
    """Compute forward, JVP, RVP and HVP on a random batch, check them against
    the NumPy closed form and print a timing table. Returns True if all match."""
    rng = np.random.default_rng(0)
    x, dz, u = (rng.normal(size=shape).astype(dtype) for _ in range(3))
    hz = rng.uniform(0.5, 2.0, size=shape).astype(dtype)
    n_ch = shape[1]
    gamma = rng.normal(1.0, 0.2, size=n_ch).astype(dtype)
    beta = rng.normal(size=n_ch).astype(dtype)
    print(f"numbabn demo: batch {shape} {np.dtype(dtype).name}, channel axis 1")

    with compile_notice("the kernels of forward, jvp, rvp and hvp"):
        stats = batch_stats(x)
        forward(x, gamma, beta)
        jvp(x, gamma, u, stats)
        rvp(x, gamma, dz, u, stats)
        hvp(x, gamma, dz, u, hz, stats)
    ops = {
        "forward": (
            lambda: forward(x, gamma, beta)[0],
            lambda: closed_form.forward(x, gamma, beta),
        ),
        "jvp": (lambda: jvp(x, gamma, u, stats), lambda: closed_form.jvp(x, gamma, u)),
        "rvp": (lambda: rvp(x, gamma, dz, u, stats), lambda: closed_form.rvp(x, gamma, dz, u)),
        "hvp": (
            lambda: hvp(x, gamma, dz, u, hz, stats),
            lambda: closed_form.hvp(x, gamma, dz, u, hz),
        ),
    }
    tolerance = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
    ok = True
    rows = []
    for name, (fast, slow) in ops.items():
        got, want = fast(), slow()
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1.0))
        ok &= err <= tolerance
        t_fast = median_seconds(fast, repeats, warmup=0)
        t_slow = median_seconds(slow, max(1, repeats // 2), warmup=0)
        rows.append((name, err, t_fast, t_slow))

    print(f"{'operation':<10}{'max rel err':>12}{'numbabn ms':>12}{'NumPy ms':>12}{'speed-up':>10}")
    for name, err, t_fast, t_slow in rows:
        print(
            f"{name:<10}{err:>12.1e}{t_fast * 1e3:>12.2f}{t_slow * 1e3:>12.2f}"
            f"{t_slow / t_fast:>9.1f}x"
        )
    print("all results match the NumPy closed form" if ok else "MISMATCH against the closed form")
    return ok
