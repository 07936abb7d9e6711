"""Every public function x shape x dtype x backend: time, peak memory, and the
achieved fraction of the memory-traffic floor (so the graphs show efficiency
across commits). ``NUMBABN_BENCH_SIZE=small`` swaps in tiny shapes (the smoke
run of `make test`)."""

import ast
import os

import numpy as np

import numbabn
from numbabn.bench import FLOOR_PASSES, make_inputs, median_seconds, numbabn_call, stream_bandwidth

SMALL = os.environ.get("NUMBABN_BENCH_SIZE") == "small"
SHAPES = (
    ["(64, 16)", "(4, 8, 6, 6)"]
    if SMALL
    else ["(4096, 1024)", "(256, 4096)", "(32768, 256)", "(32, 64, 56, 56)", "(32, 28, 28, 128)"]
)


def _cuda_usable() -> bool:
    try:
        from numba import cuda

        return cuda.is_available() and not os.environ.get("NUMBA_ENABLE_CUDASIM")
    except Exception:
        return False


class Layer:
    params = (list(FLOOR_PASSES), SHAPES, ["float32", "float64"], ["cpu", "cuda"])
    param_names = ["function", "shape", "dtype", "backend"]
    timeout = 300

    def setup(self, function, shape, dtype, backend):
        shape = ast.literal_eval(shape)
        self.axis = -1 if len(shape) == 4 and shape[-1] == 128 else 1
        d = make_inputs(shape, self.axis, np.dtype(dtype))
        self.sync = lambda: None
        if backend == "cuda":
            if not _cuda_usable():
                raise NotImplementedError("no usable CUDA device")
            import cupy

            d = {k: cupy.asarray(v) for k, v in d.items()}
            self.sync = cupy.cuda.runtime.deviceSynchronize
        self.inputs = d
        self.stats = numbabn.batch_stats(d["x"], axis=self.axis)
        out = d["u"].copy()  # the result goes into a preallocated array, as in the floor
        self.call = numbabn_call(function, d, self.axis, self.stats, out)
        self.call()  # compile (JIT) outside the timing
        self.sync()

    def time_call(self, function, shape, dtype, backend):
        self.call()
        self.sync()

    def peakmem_call(self, function, shape, dtype, backend):
        self.call()

    def track_floor_fraction(self, function, shape, dtype, backend):
        """Floor time / measured time: 1.0 is the memory-traffic floor."""
        x = self.inputs["x"]
        seconds = median_seconds(lambda: (self.call(), self.sync()), repeats=5)
        if backend == "cuda":
            from numbabn.bench_cuda import device_bandwidth

            bandwidth = device_bandwidth(x.size, x.dtype)  # the GPU's own triad
        else:
            bandwidth = stream_bandwidth(x.size, x.dtype, 5)
        floor = FLOOR_PASSES[function](1) * x.nbytes / bandwidth
        return floor / seconds

    track_floor_fraction.unit = "fraction of floor"


class SeveralDirections:
    """rvp with 16 directions: x and dz are read once for all of them."""

    params = (SHAPES[:2], ["float64"])
    param_names = ["shape", "dtype"]
    timeout = 300

    def setup(self, shape, dtype):
        shape = ast.literal_eval(shape)
        d = make_inputs(shape, 1, np.dtype(dtype), n_dir=16)
        stats = numbabn.batch_stats(d["x"])
        self.x, self.u = d["x"], d["u"]
        self.call = numbabn_call("rvp", d, 1, stats, d["u"].copy())
        self.call()

    def time_rvp(self, shape, dtype):
        self.call()

    def track_floor_fraction(self, shape, dtype):
        """Floor time / measured time; the floor's bandwidth is the triad's over
        arrays the size of the 16 directions (they stream from memory)."""
        seconds = median_seconds(self.call, repeats=3)
        bandwidth = stream_bandwidth(self.u.size, self.u.dtype)
        return FLOOR_PASSES["rvp"](16) * self.x.nbytes / bandwidth / seconds

    track_floor_fraction.unit = "fraction of floor"


class NetworkHVP:
    """One exact HVP of a BatchNorm MLP (numbabn.hf) vs PyTorch double backward."""

    params = (["numbabn", "torch"], [1024, 2048])
    param_names = ["implementation", "batch"]
    timeout = 300

    def setup(self, implementation, batch):
        from numbabn.bench import network_hvp_calls

        if SMALL:
            batch //= 16
        width = 32 if SMALL else 256
        ours, theirs = network_hvp_calls(batch=batch, width=width)
        self.call = ours if implementation == "numbabn" else theirs
        ours, theirs = network_hvp_calls(batch=batch, width=width, fixed_point=True)
        self.at_fixed_point = ours if implementation == "numbabn" else theirs
        if self.call is None:
            raise NotImplementedError("torch is not installed")
        self.call()
        self.at_fixed_point()

    def time_hvp(self, implementation, batch):
        self.call()

    def time_hvp_at_fixed_point(self, implementation, batch):
        """Forward pass and gradient reused: ``net.curvature`` vs a retained torch graph."""
        self.at_fixed_point()
