"""CUDA tests: run on a real GPU, or on Numba's CUDA simulator when the pytest
process starts with NUMBA_ENABLE_CUDASIM=1 (what `make test` does); skipped
otherwise."""

import pytest
from numba import cuda

from device_helpers import SIMULATED

if not cuda.is_available():
    pytest.skip("no CUDA device and no CUDA simulator", allow_module_level=True)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """The simulator runs each GPU thread as a Python thread: keep blocks tiny."""
    from numbabn import config

    if SIMULATED:
        monkeypatch.setattr(config, "CUDA_BLOCK", 8)
        monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 4)
        monkeypatch.setattr(config, "CUDA_CONTIGUOUS_CHANNELS", 2)  # 4 row lanes a block
        monkeypatch.setattr(config, "CUDA_ELEMENTS_PER_THREAD", 1)  # several slices
