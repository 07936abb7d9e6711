"""BackPACK's BatchNorm curvature products: numbabn's residual against BackPACK's,
and BatchNorm's share of a whole Hessian-matrix-product (HMP) pass.

* :func:`residual_rows` — ``_residual_mat_prod`` with V directions, numbabn's
  (:class:`numbabn.backpack.NumbaBatchNormDerivatives`) and BackPACK's own
  (2-D input only);
* :func:`hmp_pass_rows` — one forward pass, one backward pass under
  ``backpack(HMP())`` and ``p.hmp(mat)`` for every parameter, on a Conv-BN
  network and on the same network without BatchNorm (and on a Linear-BN1d
  network, where BackPACK has its own BatchNorm extension to compare with).

``python -m numbabn.bench.backpack_residual [--small]`` prints both tables.
Needs torch and backpack-for-pytorch.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from .report import Table

#: The residual cases: a wide 2-D batch (BatchNorm1d) and an image batch (BatchNorm2d).
RESIDUAL_SHAPES = ((4096, 1024), (32, 64, 56, 56))
SMALL_RESIDUAL_SHAPES = ((64, 16), (4, 8, 6, 6))


@dataclass(frozen=True)
class ResidualRow:
    """One timing of ``_residual_mat_prod``."""

    shape: tuple[int, ...]
    implementation: str
    n_dir: int
    dtype: str
    seconds: float

    @property
    def per_direction(self) -> float:
        """Seconds per direction."""
        return self.seconds / self.n_dir


@dataclass(frozen=True)
class PassRow:
    """One timing of a whole HMP pass."""

    network: str
    implementation: str
    n_dir: int
    seconds: float


def interleaved_medians(calls: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each call, timed in rounds that run every call once.

    One untimed call of each first (it compiles). On a shared machine the load
    drifts; rounds expose every call to the same drift, unlike back-to-back medians.
    """
    for call in calls:
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, record in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def residual_calls(shape: tuple[int, ...], n_dir: int = 16, dtype=None, seed: int = 0):
    """Zero-argument calls of ``_residual_mat_prod`` on one random problem, by implementation.

    Parameters
    ----------
    shape : tuple of int
        Input shape (N, C, ...); 2-D to 5-D.
    n_dir : int
        Directions V (the leading axis of ``mat``).
    dtype : torch.dtype, default torch.float32
    seed : int

    Returns
    -------
    dict of str to callable
        ``"numbabn"`` always, ``"backpack"`` for 2-D input (BackPACK has no other).
    """
    import torch
    from backpack.core.derivatives.batchnorm_nd import BatchNormNdDerivatives

    from numbabn.backpack import NumbaBatchNormDerivatives

    dtype = torch.float32 if dtype is None else dtype
    gen = torch.Generator().manual_seed(seed)
    module_class = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}
    module = module_class.get(len(shape), torch.nn.BatchNorm3d)(shape[1]).to(dtype)
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5, generator=gen)
        module.input0 = torch.randn(shape, generator=gen).to(dtype)
    g_out = (torch.randn(shape, generator=gen).to(dtype),)
    mat = torch.randn((n_dir, *shape), generator=gen).to(dtype)
    calls = {"numbabn": NumbaBatchNormDerivatives()}
    if len(shape) == 2:
        calls["backpack"] = BatchNormNdDerivatives()
    return {
        name: (lambda d=d: d._residual_mat_prod(module, None, g_out, mat))
        for name, d in calls.items()
    }


def residual_rows(
    shapes=RESIDUAL_SHAPES, n_dir: int = 16, dtype=None, repeats: int = 5
) -> list[ResidualRow]:
    """Median time of ``_residual_mat_prod`` per shape and implementation.

    Parameters
    ----------
    shapes : sequence of tuple of int
    n_dir : int
        Directions per call.
    dtype : torch.dtype, default torch.float32
    repeats : int
        Timed calls per median (after one untimed call, which also compiles).

    Returns
    -------
    list of ResidualRow
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    rows = []
    for shape in shapes:
        for name, call in residual_calls(shape, n_dir, dtype).items():
            # Alone, not in turns: BackPACK's gigabytes of temporaries would leave
            # numbabn's next output allocation to fault its pages in afresh.
            (seconds,) = interleaved_medians([call], repeats)
            rows.append(ResidualRow(tuple(shape), name, n_dir, str(dtype), seconds))
    return rows


def conv_net(batchnorm: bool, channels: int, image: int):
    """Conv2d-[BN2d]-ReLU-Conv2d-[BN2d]-Sigmoid-Flatten-Linear, 10 outputs."""
    from torch import nn

    norm = (lambda c: [nn.BatchNorm2d(c)]) if batchnorm else (lambda c: [])
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        *norm(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        *norm(channels),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(channels * image * image, 10),
    )


def mlp(batchnorm: bool, width: int):
    """Linear-[BN1d]-ReLU-Linear-[BN1d]-Sigmoid-Linear, 10 outputs."""
    from torch import nn

    norm = (lambda c: [nn.BatchNorm1d(c)]) if batchnorm else (lambda c: [])
    return nn.Sequential(
        nn.Linear(width, width),
        *norm(width),
        nn.ReLU(),
        nn.Linear(width, width),
        *norm(width),
        nn.Sigmoid(),
        nn.Linear(width, 10),
    )


def conv_problem(batchnorm: bool, small: bool = False, seed: int = 0):
    """``(net, x, y)``: :func:`conv_net` (16 channels) on a batch of 32 3x32x32 images.

    ``small`` gives 3 channels and a batch of 4 6x6 images. Float32.
    """
    import torch

    batch, image, channels = (4, 6, 3) if small else (32, 32, 16)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3, image, image), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return conv_net(batchnorm, channels, image), x, y


def mlp_problem(batchnorm: bool, small: bool = False, seed: int = 0):
    """``(net, x, y)``: :func:`mlp` of width 512 on a batch of 1024 (``small``: 16 and 128)."""
    import torch

    batch, width = (128, 16) if small else (1024, 512)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, width), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    return mlp(batchnorm, width), x, y


def hmp_pass_call(net, x, y, n_dir: int, numbabn_batchnorm: bool, seed: int = 0) -> Callable:
    """A call running one whole HMP pass of ``net`` (extended in place) on ``(x, y)``.

    The pass: forward, backward under ``backpack(HMP())`` (with
    :func:`numbabn.backpack.support_batchnorm` when ``numbabn_batchnorm``),
    then ``p.hmp(mat)`` with ``n_dir`` directions for every parameter.
    """
    import torch
    from backpack import backpack, extend
    from backpack.extensions import HMP

    from numbabn.backpack import support_batchnorm

    model, loss_fn = extend(net), extend(torch.nn.CrossEntropyLoss())
    gen = torch.Generator().manual_seed(seed)
    mats = [torch.randn((n_dir, *p.shape), generator=gen) for p in model.parameters()]

    def run() -> None:
        extension = support_batchnorm(HMP()) if numbabn_batchnorm else HMP()
        with backpack(extension):
            loss_fn(model(x), y).backward()
        for p, mat in zip(model.parameters(), mats, strict=True):
            p.hmp(mat)

    return run


def hmp_pass_rows(small: bool = False, n_dir: int = 16, repeats: int = 3) -> list[PassRow]:
    """Median time of a whole HMP pass, with and without BatchNorm.

    Networks (float32): ``conv_bn`` (batch 32 of 3x32x32 images, 16 channels)
    with numbabn's BatchNorm2d extension, and ``conv`` the same without
    BatchNorm; ``mlp_bn`` (batch 1024, width 512) with numbabn's and with
    BackPACK's own BatchNorm1d extension, and ``mlp`` without BatchNorm.

    Parameters
    ----------
    small : bool
        Tiny sizes (smoke runs).
    n_dir : int
        Directions of every ``p.hmp(mat)``.
    repeats : int

    Returns
    -------
    list of PassRow
    """
    cases = [  # network, implementation, (net, x, y), numbabn's BatchNorm extension
        ("conv_bn", "numbabn", conv_problem(True, small), True),
        ("conv", "no BatchNorm", conv_problem(False, small), False),
        ("mlp_bn", "numbabn", mlp_problem(True, small), True),
        ("mlp_bn", "backpack", mlp_problem(True, small), False),
        ("mlp", "no BatchNorm", mlp_problem(False, small), False),
    ]
    with warnings.catch_warnings():
        # The first layer's input needs no gradient; torch warns about its full backward hook.
        warnings.simplefilter("ignore", UserWarning)
        calls = [hmp_pass_call(net, x, y, n_dir, ours) for _, _, (net, x, y), ours in cases]
        seconds = interleaved_medians(calls, repeats)
    return [
        PassRow(network, implementation, n_dir, t)
        for (network, implementation, *_), t in zip(cases, seconds, strict=True)
    ]


def residual_table(rows: list[ResidualRow]) -> Table:
    """The residual timings as a :class:`~numbabn.bench.report.Table`."""
    table = Table(
        "_residual_mat_prod, V directions per call (median)",
        ["shape", "implementation", "dtype", "V", "ms per call", "ms per direction"],
    )
    for r in rows:
        shape = "x".join(map(str, r.shape))
        table.add(shape, r.implementation, r.dtype.replace("torch.", ""), r.n_dir,
                  f"{r.seconds * 1e3:.2f}", f"{r.per_direction * 1e3:.3f}")  # fmt: skip
    return table


def pass_table(rows: list[PassRow]) -> Table:
    """The HMP-pass timings, with BatchNorm's share of each BatchNorm network."""
    table = Table(
        "Whole HMP pass: forward, backward, p.hmp(mat) for every parameter (median)",
        ["network", "BatchNorm", "V", "seconds", "BatchNorm share"],
    )
    without = {r.network: r.seconds for r in rows if r.implementation == "no BatchNorm"}
    for r in rows:
        base = without.get(r.network.removesuffix("_bn"))
        share = "" if r.network not in {"conv_bn", "mlp_bn"} or base is None else (
            f"{1.0 - base / r.seconds:.0%}"
        )  # fmt: skip
        table.add(r.network, r.implementation, r.n_dir, f"{r.seconds:.3f}", share)
    return table


def main(argv: list[str] | None = None) -> None:
    """Print the residual and whole-pass tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    shapes = SMALL_RESIDUAL_SHAPES if args.small else RESIDUAL_SHAPES
    print(residual_table(residual_rows(shapes, repeats=args.repeats)).text(), flush=True)
    print()
    print(pass_table(hmp_pass_rows(args.small, repeats=args.repeats)).text())


if __name__ == "__main__":
    main()
