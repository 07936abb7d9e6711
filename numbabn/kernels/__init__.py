"""Numba kernels: ``cpu`` (``@njit``), ``cuda`` (``@cuda.jit``), and the scalar
``formulas`` they share. Imported lazily by the dispatch layer."""
