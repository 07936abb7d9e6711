"""The benchmark cases: shapes with their channel axis, random inputs, the
memory-traffic floor of each operation and one numbabn call per operation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import numbabn


@dataclass(frozen=True)
class Case:
    """A batch shape and its channel axis, with a readable label."""

    shape: tuple[int, ...]
    axis: int = 1

    @property
    def label(self) -> str:
        """``"4096x1024"``, with ``" ch-last"`` for a last channel axis."""
        dims = "x".join(map(str, self.shape))
        return dims + (" ch-last" if self.axis % len(self.shape) != 1 else "")


#: The five bench shapes: BN1d wide, very wide and narrow, BN2d planes and channels-last.
CASES = [Case((4096, 1024)), Case((256, 4096)), Case((32768, 256)), Case((32, 64, 56, 56)),
         Case((32, 28, 28, 128), -1)]  # fmt: skip
#: Tiny cases for smoke runs (``NUMBABN_BENCH_SIZE=small``).
SMALL_CASES = [Case((64, 16)), Case((4, 8, 6, 6)), Case((4, 3, 3, 8), -1)]

#: Array passes (reads + writes of x-sized arrays) with statistics given, and
#: V directions where the operation takes them (docs/design.md §4).
FLOOR_PASSES: dict[str, Callable[[int], int]] = {
    "batch_stats": lambda v: 2,
    "forward": lambda v: 4,  # statistics (2 reads) + read x, write z
    "jvp": lambda v: 3 * v + 2,  # x twice, u twice, out once
    "vjp": lambda v: 5,
    "rvp": lambda v: 3 * v + 4,  # x, dz twice; each u twice, each out once
    "ggnvp": lambda v: 3 * v + 4,  # x, hz twice; each u twice, each out once
    "hvp": lambda v: 3 * v + 6,  # x, dz, hz twice; each u twice, each out once
    "rop_backward": lambda v: 5 * v + 4,  # x, dz twice; u, dz_dot twice, out once
}


def make_inputs(shape, axis: int = 1, dtype: Any = np.float64, n_dir: int | None = None, seed=0):
    """Random x, dz, hz, u, dz_dot, gamma, beta for one benchmark case."""
    rng = np.random.default_rng(seed)
    dshape = shape if n_dir is None else (n_dir, *shape)
    n_ch = shape[axis]
    d = {
        "x": rng.standard_normal(shape),
        "dz": rng.standard_normal(shape),
        "hz": rng.uniform(0.5, 2.0, shape),
        "u": rng.standard_normal(dshape),
        "dz_dot": rng.standard_normal(dshape),
        "gamma": rng.uniform(0.5, 1.5, n_ch),
        "beta": rng.standard_normal(n_ch),
    }
    return {k: v.astype(dtype) for k, v in d.items()}


def numbabn_call(name: str, d: dict, axis: int, stats=None, out=None) -> Callable[[], Any]:
    """A zero-argument call of numbabn's ``name`` on the inputs ``d``; ``out``, when
    given, receives the x-shaped result (it must be shaped like ``d["u"]``)."""
    x, g = d["x"], d["gamma"]
    kw = {"axis": axis} if stats is None else {}
    if out is not None:
        kw["out"] = out
    calls = {
        "batch_stats": lambda: numbabn.batch_stats(x, axis=axis),
        "forward": lambda: numbabn.forward(x, g, d["beta"], axis=axis, out=out),
        "jvp": lambda: numbabn.jvp(x, g, d["u"], stats, **kw),
        "vjp": lambda: numbabn.vjp(x, g, d["dz"], stats, **kw),
        "rvp": lambda: numbabn.rvp(x, g, d["dz"], d["u"], stats, **kw),
        "ggnvp": lambda: numbabn.ggnvp(x, g, d["u"], d["hz"], stats, **kw),
        "hvp": lambda: numbabn.hvp(x, g, d["dz"], d["u"], d["hz"], stats, **kw),
        "rop_backward": lambda: numbabn.rop_backward(
            x, g, d["dz"], d["dz_dot"], d["u"], stats, **kw
        ),
    }  # fmt: skip
    return calls[name]
