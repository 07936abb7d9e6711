"""Tunables. Changing them changes speed, and may change the last bits of results
(the order of sums), never their meaning: results are bitwise reproducible for a
fixed configuration.

``REDUCE_CHUNKS`` fixes how the batch axis is split for the CPU reductions; the
split depends only on the shape and this number, never on the thread count, so
results are bitwise reproducible across ``NUMBA_NUM_THREADS``.
"""

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
#: serially: below it, waking the thread pool costs more than it saves
#: (measured crossover of rvp on 2 cores, threads asleep: about 2**16).
SERIAL_MAX_ELEMENTS = 2**16

#: Spins of an idle OpenMP thread before it sleeps (libgomp's ``GOMP_SPINCOUNT``),
#: read once when numbabn starts Numba's thread pool: long enough to span the
#: kernels of one call, short enough not to starve BLAS threads afterwards.
OMP_SPIN_COUNT = 10000

#: Threads per block of the CUDA kernels (a power of 2, at most 1024).
CUDA_BLOCK = 256

#: Elements per thread that a CUDA reduction block aims at (fewer blocks, less
#: merging). With channels contiguous every block writes partial sums for its
#: channels: at 64 rows a thread, those are about a tenth of x's bytes (float32).
CUDA_ELEMENTS_PER_THREAD = 64

#: Channels a CUDA reduction block covers when channels are contiguous (post == 1,
#: as in BN1d and channels-last): a warp reads 32 consecutive values of a row, and
#: the block's other warps take other rows.
CUDA_CONTIGUOUS_CHANNELS = 32

#: Upper bound on the number of blocks of a CUDA reduction (its partial buffers).
CUDA_MAX_BLOCKS = 1024
