"""One exact HVP of a BatchNorm MLP (numbabn.hf) vs PyTorch double backward."""

from numbabn.bench.network import network_hvp_calls

from .common import SMALL


class NetworkHVP:
    params = (["numbabn", "torch"], [1024, 2048])
    param_names = ["implementation", "batch"]
    timeout = 300

    def setup(self, implementation, batch):
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
