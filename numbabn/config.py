"""Tunables. Changing them changes speed, and may change the last bits of results
(the order of sums), never their meaning: results are bitwise reproducible for a
fixed configuration.

``REDUCE_CHUNKS`` fixes how the batch axis is split for the CPU reductions; the
split depends only on the shape and this number, never on the thread count, so
results are bitwise reproducible across ``NUMBA_NUM_THREADS``.

Assigning any tunable (``numbabn.config.CUDA_BLOCK = 128``) bumps ``version``:
the plans that calls cache (layouts, kernel choices, launch configurations) are
keyed on it, so they follow the new value.
"""

import sys
import types

#: Most row chunks (partial-sum buffers) of a CPU reduction.
REDUCE_CHUNKS = 32

#: Fewest rows (times post) in one chunk of a CPU reduction.
MIN_CHUNK_ROWS = 256

#: Channels per task of a CPU reduction when the channel axis is contiguous.
CHANNEL_BLOCK = 1024

#: Elements of x per task of the CPU apply pass (whole rows, at least one): the
#: directions of a tile run back to back while its rows of x are in cache.
APPLY_TILE_ELEMENTS = 8192

#: Largest work (elements of x times directions) that the CPU kernels process
#: serially: below it, waking the thread pool costs more than it saves (the
#: measured crossover of rvp with the threads asleep).
SERIAL_MAX_ELEMENTS = 2**16

#: Spins of an idle OpenMP thread before it sleeps (libgomp's ``GOMP_SPINCOUNT``),
#: read once when numbabn starts Numba's thread pool: long enough to span the
#: kernels of one call, short enough not to starve BLAS threads afterwards.
OMP_SPIN_COUNT = 10000

#: Threads per block of the CUDA kernels (a power of 2, at most 1024).
CUDA_BLOCK = 256

#: Elements per thread that a CUDA reduction block aims at (fewer blocks, less
#: merging). With channels contiguous every block writes partial sums for its
#: channels, so fewer, longer blocks keep the partials small next to x.
CUDA_ELEMENTS_PER_THREAD = 64

#: Channels a CUDA reduction block covers when channels are contiguous (post == 1,
#: as in BN1d and channels-last): a warp reads 32 consecutive values of a row, and
#: the block's other warps take other rows.
CUDA_CONTIGUOUS_CHANNELS = 32

#: Upper bound on the number of blocks of a CUDA reduction (its partial buffers).
CUDA_MAX_BLOCKS = 1024

#: How the CUDA backend launches its kernels: ``"direct"`` passes the arguments'
#: device pointers straight to the compiled kernel of each signature (no array
#: views, no argument typing per call); ``"numba"`` launches through Numba's
#: dispatcher with array views, Numba's own route (the CUDA simulator always
#: takes it).
CUDA_LAUNCH = "direct"

#: Bumped on every assignment to an attribute of this module.
version = 0


class _Tunables(types.ModuleType):
    """This module's type: an assignment bumps ``version``."""

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name != "version":
            super().__setattr__("version", self.version + 1)


sys.modules[__name__].__class__ = _Tunables
