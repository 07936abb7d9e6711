"""The CUDA reduction fills, for every combination of inputs, exactly the sum slots
that ``formulas.filled_sum_slots`` names (each equal to a NumPy float64 sum, for
every direction) and leaves the others zero."""

import itertools

import numpy as np
import pytest
from numba import cuda

from numbabn._dispatch import cuda_backend
from numbabn.kernels import formulas as f

from device_helpers import to_host
from reference import slot_sum

#: Canonical (pre, C, post) layouts: channels along post (a block per channel), and
#: channels contiguous (several channels a block), each with several slices.
LAYOUTS = {"planes": (5, 3, 7), "rows": (23, 5, 1)}

#: Every combination of (dz, h, u, w) with at least one input.
COMBINATIONS = [c for c in itertools.product((False, True), repeat=4) if any(c)]


def _label(present) -> str:
    return "+".join(n for n, p in zip(("dz", "h", "u", "w"), present, strict=True) if p)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("present", COMBINATIONS, ids=_label)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reduction_fills_the_slots_of_its_inputs(layout, present, dtype):
    dims, n_dir = LAYOUTS[layout], 2
    rng = np.random.default_rng(3)
    x = rng.normal(3.0, 2.0, dims).astype(dtype)
    x64 = x.astype(np.float64)
    mean, invstd = x64.mean(axis=(0, 2)), 1.0 / x64.std(axis=(0, 2))
    xhat = (x64 - mean[None, :, None]) * invstd[None, :, None]
    names = [n for n, p in zip(("dz", "h", "u", "w"), present, strict=True) if p]
    arrays = {n: rng.normal(size=(n_dir, *dims) if n in "uw" else dims).astype(dtype)
              for n in names}  # fmt: skip
    be = cuda_backend()
    dev = {n: be.view(cuda.to_device(a), a.shape) for n, a in arrays.items()}
    sums = be.moment_sums(
        be.view(cuda.to_device(x), dims), be.stat_arg(cuda.to_device(mean)),
        be.stat_arg(cuda.to_device(invstd)), dev.get("dz"), dev.get("h"), dev.get("u"),
        dev.get("w"), n_dir,
    )  # fmt: skip
    got = to_host(sums.view())
    assert got.shape == (n_dir, f.N_SUMS, dims[1])
    once, per_direction = f.filled_sum_slots(*present)
    wide = {n: a.astype(np.float64) for n, a in arrays.items()}
    for v in range(n_dir):
        for slot in range(f.N_SUMS):
            if slot in once or slot in per_direction:
                want = slot_sum(slot, xhat, wide, v)
                np.testing.assert_allclose(got[v, slot], want, rtol=1e-12, atol=1e-11,
                                           err_msg=f"slot {slot}, v={v}")  # fmt: skip
            else:
                assert not got[v, slot].any(), f"slot {slot} filled without its inputs"


def test_last_blocks_merge_several_slices_and_reset_the_counters():
    """With several blocks per channel group (slices) and several groups, the last
    block of each group merges the slices; every counter is back at zero after the
    launch, ready for the next one on the stream."""
    be = cuda_backend()
    x = np.random.default_rng(0).normal(size=(40, 4, 1))
    x3 = be.view(cuda.to_device(x), x.shape)
    plan = be._stats_plan(x3.shape, x3.dtype)
    (slices, groups, _), _ = plan.reduce_grid
    assert slices > 1 and groups > 1
    for _ in range(2):
        mean, var, _, _ = be.batch_stats(x3, 40, 1e-5)
        np.testing.assert_allclose(to_host(mean), x.mean(axis=(0, 2)), rtol=1e-12)
        np.testing.assert_allclose(to_host(var), x.var(axis=(0, 2)), rtol=1e-12)
        counter = be._slot(x3.kind, x3.base).counter(groups, x3.kind, x3.base)
        assert not to_host(counter.view()).any()
