"""What the asv benchmarks share: the bench cases by label, and backend checks.

``NUMBABN_BENCH_SIZE=small`` swaps in tiny shapes (the smoke run of `make test`).
"""

import os

from numbabn.bench.cases import CASES, SMALL_CASES

SMALL = os.environ.get("NUMBABN_BENCH_SIZE") == "small"
#: The bench cases by their readable label, e.g. ``"32x28x28x128 ch-last"``.
CASES_BY_LABEL = {case.label: case for case in (SMALL_CASES if SMALL else CASES)}


def requires_cuda() -> None:
    """Skip the benchmark (asv's NotImplementedError in setup) without a usable GPU."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM"):
        raise NotImplementedError("the CUDA simulator is not timed")
    try:
        from numba import cuda

        usable = cuda.is_available()
    except Exception:
        usable = False
    if not usable:
        raise NotImplementedError("no usable CUDA device")
