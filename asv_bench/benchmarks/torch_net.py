"""Exact HVP (double backward, and torch.func's jvp(grad)) of a VGG-style conv net in
PyTorch: numbabn's BatchNorm layers against torch's, and the net without BatchNorm,
whose difference is BatchNorm's share (numbabn.bench.torch_net)."""

from numbabn.bench.torch_net import PAIRS, SMALL_CHANNELS, hvp_calls

from .common import SMALL

VARIANTS = sorted(set(PAIRS) | set(PAIRS.values()))


class TorchNetHVP:
    params = (VARIANTS,)
    param_names = ["variant"]
    timeout = 600

    def setup(self, variant):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        sizes = {"batch": 8, "channels": SMALL_CHANNELS} if SMALL else {}
        self.call = hvp_calls(**sizes)[variant]
        self.call()  # compile or load numbabn's kernels outside the timing

    def time_hvp(self, variant):
        self.call()
