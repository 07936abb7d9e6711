"""Moving test data to and from the device."""

import os

import numpy as np
from numba import cuda

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def to_device(case: dict) -> dict:
    return {k: cuda.to_device(np.ascontiguousarray(v)) for k, v in case.items()}


def to_host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a.get())
