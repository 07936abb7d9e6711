"""Every public function x shape x dtype x backend: time, peak memory, and the
achieved fraction of the memory-traffic floor (so the graphs show efficiency
across commits)."""

import numpy as np

import numbabn
from numbabn.bench.cases import FLOOR_PASSES, make_inputs, numbabn_call
from numbabn.bench.timing import median_seconds, stream_bandwidth

from .common import CASES_BY_LABEL, requires_cuda


class Layer:
    params = (list(FLOOR_PASSES), list(CASES_BY_LABEL), ["float32", "float64"], ["cpu", "cuda"])
    param_names = ["function", "shape", "dtype", "backend"]
    timeout = 300

    def setup(self, function, shape, dtype, backend):
        case = CASES_BY_LABEL[shape]
        self.axis = case.axis
        d = make_inputs(case.shape, case.axis, np.dtype(dtype))
        self.sync = lambda: None
        if backend == "cuda":
            requires_cuda()
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
            from numbabn.bench.cuda import device_bandwidth

            bandwidth = device_bandwidth(x.size, x.dtype)  # the GPU's own triad
        else:
            bandwidth = stream_bandwidth(x.size, x.dtype, 5)
        floor = FLOOR_PASSES[function](1) * x.nbytes / bandwidth
        return floor / seconds

    track_floor_fraction.unit = "fraction of floor"


class SeveralDirections:
    """rvp with 16 directions: x and dz are read once for all of them."""

    params = (list(CASES_BY_LABEL)[:2], ["float64"])
    param_names = ["shape", "dtype"]
    timeout = 300

    def setup(self, shape, dtype):
        case = CASES_BY_LABEL[shape]
        d = make_inputs(case.shape, case.axis, np.dtype(dtype), n_dir=16)
        stats = numbabn.batch_stats(d["x"], axis=case.axis)
        self.x, self.u = d["x"], d["u"]
        self.call = numbabn_call("rvp", d, case.axis, stats, d["u"].copy())
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


class DoubleBackward:
    """The backward of the vjp (double backward): numbabn.vjp_backward against the
    jvp and the rop_backward (without dz_dot) it fuses, statistics given."""

    params = (list(CASES_BY_LABEL), ["float32", "float64"], ["vjp_backward", "jvp + rop_backward"])
    param_names = ["shape", "dtype", "implementation"]
    timeout = 300

    def setup(self, shape, dtype, implementation):
        case = CASES_BY_LABEL[shape]
        d = make_inputs(case.shape, case.axis, np.dtype(dtype))
        x, g, dz, a = d["x"], d["gamma"], d["dz"], d["u"]
        st = numbabn.batch_stats(x, axis=case.axis)
        if implementation == "vjp_backward":
            self.call = lambda: numbabn.vjp_backward(x, g, dz, a, st, a_gamma=g, a_beta=g)
        else:
            self.call = lambda: (
                numbabn.jvp(x, g, a, st, u_gamma=g, u_beta=g),
                numbabn.rop_backward(x, g, dz, None, a, st, u_gamma=g),
            )
        self.call()  # compile (JIT) outside the timing

    def time_call(self, shape, dtype, implementation):
        self.call()
