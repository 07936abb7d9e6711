"""BackPACK's BatchNorm curvature products (numbabn.backpack): the residual
product with 16 directions against BackPACK's own (2-D input only), and a whole
HMP pass of a Conv-BN network against the same network without BatchNorm.
Timed in float32."""

from .common import SMALL


def _requires_backpack() -> None:
    """Skip (asv's NotImplementedError in setup) without torch and BackPACK."""
    try:
        import backpack  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise NotImplementedError("torch and backpack-for-pytorch are not installed") from err


class BackpackResidual:
    """``_residual_mat_prod`` with 16 directions; seconds per call (divide by 16 per direction)."""

    params = (
        ["64x16", "4x8x6x6"] if SMALL else ["4096x1024", "32x64x56x56"],
        ["numbabn", "backpack"],
    )
    param_names = ["shape", "implementation"]
    timeout = 300

    def setup(self, shape, implementation):
        _requires_backpack()
        from numbabn.bench.backpack_residual import residual_calls

        calls = residual_calls(tuple(int(n) for n in shape.split("x")), n_dir=16)
        if implementation not in calls:
            raise NotImplementedError(f"BackPACK has no residual for {shape} input")
        self.call = calls[implementation]
        self.call()  # compile (JIT) outside the timing

    def time_residual_mat_prod(self, shape, implementation):
        self.call()

    def peakmem_residual_mat_prod(self, shape, implementation):
        self.call()


class BackpackHMPPass:
    """Forward, backward under ``backpack(HMP())`` and ``p.hmp(mat)`` (16 directions) for
    every parameter: Conv2d-BN2d-ReLU-Conv2d-BN2d-Sigmoid-Flatten-Linear with numbabn's
    BatchNorm extension, and the same network without BatchNorm."""

    params = ["conv_bn", "conv"]
    param_names = ["network"]
    timeout = 300

    def setup(self, network):
        _requires_backpack()
        import warnings

        from numbabn.bench.backpack_residual import conv_problem, hmp_pass_call

        batchnorm = network == "conv_bn"
        net, x, y = conv_problem(batchnorm, SMALL)
        warnings.filterwarnings("ignore", "Full backward hook", UserWarning)
        self.call = hmp_pass_call(net, x, y, n_dir=16, numbabn_batchnorm=batchnorm)
        self.call()

    def time_hmp_pass(self, network):
        self.call()
