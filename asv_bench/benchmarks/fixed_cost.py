"""The fixed cost of a call: every public function on a tiny batch, where the
kernels take next to nothing and what is timed is the Python around them."""

import numpy as np

import numbabn
from numbabn.bench.cases import make_inputs, numbabn_call
from numbabn.bench.fixed_cost import OPERATIONS


class FixedCost:
    params = (list(OPERATIONS),)
    param_names = ["function"]
    timeout = 120

    def setup(self, function):
        d = make_inputs((4, 3, 2), 1, np.float64)
        computed = function in ("batch_stats", "forward")
        stats = None if computed else numbabn.batch_stats(d["x"])
        self.call = numbabn_call(function, d, 1, stats)
        self.call()  # compile and plan outside the timing

    def time_call(self, function):
        self.call()
