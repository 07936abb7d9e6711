"""Every CPU reduction path fills exactly the sum slots that
``formulas.SUM_SLOTS_OF_INPUTS`` names for its inputs, each equal to a NumPy sum."""

import numpy as np
import pytest

from numbabn.kernels import cpu
from numbabn.kernels import formulas as f

from reference import slot_sum

#: The inputs of each operation's reduction.
INPUT_SETS = {
    "jvp": ("u",),
    "vjp": ("w",),
    "rvp": ("dz", "u"),
    "ggnvp": ("h", "u"),
    "hvp": ("dz", "h", "u"),
    "hvp, callable hz": ("dz", "u", "w"),
    "rop_backward": ("dz", "u", "w"),
}

#: The canonical layouts and the path each takes: channel blocks of at least
#: WIDE_BLOCK channels go to the wide-rows reduction; narrower ones merge the
#: loops of h's sums from MERGED_MIN_CHANNELS channels, and join them to those
#: of h*u (hvp) up to JOINED_MAX_CHANNELS.
LAYOUTS = {
    "plane": ((5, 3, 7), 2),
    "rows": ((23, 6), 2),
    "rows, merged loops": ((23, cpu.MERGED_MIN_CHANNELS), 2),
    "rows, merged loops, h apart": ((23, cpu.JOINED_MAX_CHANNELS + 1), 2),
    "wide rows": ((9, cpu.WIDE_BLOCK + 3), 1),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("operation", INPUT_SETS)
def test_reduction_fills_the_slots_of_its_inputs(layout, operation):
    shape, n_chunks = LAYOUTS[layout]
    n_dir = 2
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, shape)
    reduced = tuple(i for i in range(x.ndim) if i != 1)
    mean = x.mean(axis=reduced)
    invstd = 1.0 / x.std(axis=reduced)
    channel = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (x - mean.reshape(channel)) * invstd.reshape(channel)
    names = INPUT_SETS[operation]
    arrays = {
        name: rng.normal(size=(n_dir, *shape) if name in ("u", "w") else shape) for name in names
    }
    sums = cpu.moment_sums(
        x, mean, invstd, arrays.get("dz"), arrays.get("h"), arrays.get("u"), arrays.get("w"),
        n_dir, n_chunks, 1,
    )  # fmt: skip
    once, per_direction = f.filled_sum_slots(*(name in names for name in ("dz", "h", "u", "w")))
    assert sums.shape == (n_dir, f.N_SUMS, shape[1])
    for v in range(n_dir):
        for slot in range(f.N_SUMS):
            if slot in once or slot in per_direction:
                want = slot_sum(slot, xhat, arrays, v)
                np.testing.assert_allclose(sums[v, slot], want, rtol=1e-12, atol=1e-11)
            else:
                assert not sums[v, slot].any(), f"slot {slot} filled without its inputs"


def test_the_table_lists_every_slot_once():
    slots = [s for group in f.SUM_SLOTS_OF_INPUTS.values() for s in group]
    assert sorted(slots) == list(range(f.N_SUMS))
    once, per_direction = f.filled_sum_slots(True, True, True, True)
    assert sorted(once) == sorted(f.DIRECTION_INDEPENDENT_SLOTS)
    assert sorted(once + per_direction) == list(range(f.N_SUMS))
    assert f.filled_sum_slots(False, True, False, False) == ([f.S_H, f.S_HX, f.S_HXX], [])
