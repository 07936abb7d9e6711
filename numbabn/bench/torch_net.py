"""Hessian-vector products of a VGG-style convolutional net in PyTorch, with
numbabn's BatchNorm layers against torch's, and without BatchNorm.

The same net (Conv-BN-ReLU blocks, then a linear classifier) is built three
times in one process: with torch's BatchNorm2d, with numbabn's (through
:func:`numbabn.torch.convert_batchnorm`, same parameters), and with the
BatchNorm layers removed. An HVP is the exact Hessian of the cross-entropy with
respect to all parameters applied to one vector, by double backward
(``torch.autograd.grad`` twice) or by ``torch.func.jvp(grad)``. BatchNorm's share
of an HVP is the time of the net with BatchNorm minus the time without it.

``python -m numbabn.bench.torch_net`` prints the table.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: Channels of the blocks; a 2x2 max-pool follows every second block.
CHANNELS = (32, 32, 64, 64)
SMALL_CHANNELS = (4, 4, 8, 8)
#: The variants with and without BatchNorm whose difference is BatchNorm's share.
PAIRS = {
    "torch BN": "no BN",
    "numbabn BN": "no BN",
    "numbabn BN, torch.func": "no BN, torch.func",
}


def vgg(channels=CHANNELS, n_classes: int = 10):
    """A VGG-style net for 3x32x32 images: blocks of Conv3x3-BatchNorm2d-ReLU, a 2x2
    max-pool after every second block, then a linear classifier."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    width = 3
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i % 2 else []
        width = out
    side = 32 // 2 ** (len(channels) // 2)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * side * side, n_classes))


def without_batchnorm(net):
    """A copy of a Sequential ``net`` with its BatchNorm layers replaced by identities."""
    import torch.nn as nn

    plain = copy.deepcopy(net)
    for i, layer in enumerate(plain):
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            plain[i] = nn.Identity()
    return plain


def hvp_calls(
    batch: int = 64, channels=CHANNELS, dtype: str = "float32", seed: int = 0, device: str = "cpu"
) -> dict[str, Callable[[], Any]]:
    """Zero-argument HVP calls on one batch and one direction, by variant name.

    ``torch BN`` and ``numbabn BN`` are double backward through the net with
    torch's and with numbabn's BatchNorm layers, ``no BN`` the same net without
    them (training mode: running statistics are updated). ``numbabn BN,
    torch.func`` is ``jvp(grad)`` through ``functional_call`` with numbabn's
    layers (their running statistics are left alone inside the transform), and
    ``no BN, torch.func`` its counterpart without BatchNorm. On ``device="cuda"``
    each call waits for the GPU to finish.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp

    import numbabn.torch as nbt

    torch.manual_seed(seed)
    theirs = vgg(channels).to(getattr(torch, dtype)).train().to(device)
    nets = {
        "torch BN": theirs,
        "numbabn BN": nbt.convert_batchnorm(copy.deepcopy(theirs)),
        "no BN": without_batchnorm(theirs),
    }
    x = torch.randn(batch, 3, 32, 32, dtype=theirs[0].weight.dtype, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    finish = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def double_backward(net):
        params = list(net.parameters())
        v = [torch.randn_like(p) for p in params]

        def call():
            g = torch.autograd.grad(F.cross_entropy(net(x), y), params, create_graph=True)
            hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v, strict=True)), params)
            finish()
            return hv

        return call

    def func_hvp(net):
        params = {k: p.detach() for k, p in net.named_parameters()}
        buffers = dict(net.named_buffers())
        v = {k: torch.randn_like(p) for k, p in params.items()}

        def loss(p):
            return F.cross_entropy(functional_call(net, (p, buffers), (x,)), y)

        def call():
            hv = jvp(grad(loss), (params,), (v,))[1]
            finish()
            return hv

        return call

    calls = {name: double_backward(net) for name, net in nets.items()}
    calls["numbabn BN, torch.func"] = func_hvp(nets["numbabn BN"])
    calls["no BN, torch.func"] = func_hvp(nets["no BN"])
    return calls


def torch_func_error(batch: int = 8, channels=SMALL_CHANNELS) -> str | None:
    """The error of torch.func's jvp(grad) through torch's own BatchNorm layers in
    training mode with running statistics (None if it runs)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp

    net = vgg(channels).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    params = {k: p.detach() for k, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    v = {k: torch.randn_like(p) for k, p in params.items()}

    def loss(p):
        return F.cross_entropy(functional_call(net, (p, buffers), (x,)), y)

    try:
        jvp(grad(loss), (params,), (v,))
    except RuntimeError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def measure(calls: dict[str, Callable[[], Any]], repeats: int = 7) -> list[dict]:
    """Median wall time of each call, the calls interleaved round by round (so a
    slow spell of a shared machine hits every variant alike), after one warm-up
    call each (Numba compiles or loads its kernels there). Also the fastest wall
    time and the median CPU time of the process (with one thread per library, the
    work itself: other processes on the machine do not count in it)."""
    for call in calls.values():
        call()
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return [
        {
            "variant": name,
            "seconds": float(np.median(wall[name])),
            "min_seconds": float(np.min(wall[name])),
            "cpu_seconds": float(np.median(cpu[name])),
        }
        for name in calls
    ]


def host_overhead(shape=(8, 4, 4, 4), repeats: int = 200) -> list[dict]:
    """Per-call time on a tiny float32 batch (so almost all host work) of numbabn's
    functions on NumPy arrays and of the numbabn.torch leaves that run them."""
    import torch

    import numbabn
    from numbabn.torch import _functions as fn
    from numbabn.torch._kernels import Spec

    from .timing import median_seconds

    gen = torch.Generator().manual_seed(0)
    x, dz, u = (torch.randn(shape, generator=gen) for _ in range(3))
    w, b = torch.rand(shape[1], generator=gen) + 0.5, torch.randn(shape[1], generator=gen)
    xn, dzn, un, wn, bn = (t.numpy() for t in (x, dz, u, w, b))
    spec = Spec(1e-5)
    stats = fn.BatchNormFn.apply(x, w, b, spec)[1]
    st = numbabn.batch_stats(xn)
    pairs = {
        "forward": (lambda: numbabn.forward(xn, wn, bn),
                    lambda: fn.BatchNormFn.apply(x, w, b, spec)),
        "vjp": (lambda: numbabn.vjp(xn, wn, dzn, st),
                lambda: fn.Backward.apply(dz, x, w, stats, spec)),
        "jvp": (lambda: numbabn.jvp(xn, wn, un, st, u_gamma=wn, u_beta=bn),
                lambda: fn.Tangent.apply(x, w, stats, u, w, b, spec)),
        "rop_backward": (lambda: numbabn.rop_backward(xn, wn, dzn, dzn, un, st, u_gamma=wn),
                         lambda: fn.Rop.apply(x, w, stats, dz, dz, u, w, spec)),
        "vjp_backward": (lambda: numbabn.vjp_backward(xn, wn, dzn, un, st, a_gamma=wn, a_beta=bn),
                         lambda: fn.TangentAndRop.apply(x, w, stats, dz, u, w, b, spec)),
    }  # fmt: skip
    rows = []
    for name, (raw, leaf) in pairs.items():
        rows.append(
            {
                "operation": name,
                "numbabn_us": 1e6 * median_seconds(raw, repeats),
                "leaf_us": 1e6 * median_seconds(leaf, repeats),
            }
        )
    return rows


def batchnorm_shares(rows: list[dict], key: str = "seconds") -> dict[str, float]:
    """BatchNorm's share of each HVP: its time minus that of the net without BatchNorm
    (``key``: "seconds" for medians, "min_seconds" for the fastest calls)."""
    by_name = {r["variant"]: r[key] for r in rows}
    return {a: by_name[a] - by_name[b] for a, b in PAIRS.items() if a in by_name and b in by_name}


def table(rows: list[dict]):
    """The rows as a :class:`numbabn.bench.report.Table`: ms by median wall time, by
    fastest wall time and by median CPU time, BatchNorm's share in parentheses, and
    the ratios torch / numbabn of the share and of the whole HVP."""
    from .report import Table

    keys = {"median": "seconds", "min": "min_seconds", "cpu": "cpu_seconds"}
    shares = {label: batchnorm_shares(rows, key) for label, key in keys.items()}
    t = Table(
        "HVP of a VGG-style net (batch 64, 3x32x32, float32): ms (BatchNorm's share)",
        ["variant", *(f"{label} ms" for label in keys)],
    )
    for r in rows:
        cells = []
        for label, key in keys.items():
            share = shares[label].get(r["variant"])
            cells.append(f"{1e3 * r[key]:.1f}" + ("" if share is None else f" ({1e3 * share:.1f})"))
        t.add(r["variant"], *cells)
    for label, key in keys.items():
        by_name = {r["variant"]: r[key] for r in rows}
        if "torch BN" in shares[label] and "numbabn BN" in shares[label]:
            share = shares[label]["torch BN"] / shares[label]["numbabn BN"]
            whole = by_name["torch BN"] / by_name["numbabn BN"]
            t.notes.append(
                f"{label}: BN share torch / numbabn {share:.1f}x, whole HVP {whole:.2f}x"
            )
    t.notes.append(f"torch BN under torch.func: {torch_func_error() or 'runs'}")
    return t


def host_table(rows: list[dict]):
    """:func:`host_overhead`'s rows as a :class:`numbabn.bench.report.Table`."""
    from .report import Table

    t = Table("per-call host time on an (8, 4, 4, 4) batch", ["operation", "numbabn us", "leaf us"])
    for r in rows:
        t.add(r["operation"], f"{r['numbabn_us']:.0f}", f"{r['leaf_us']:.0f}")
    return t


def tables(small: bool = False, repeats: int = 9, device: str = "cpu") -> list:
    """The HVP table, and on the CPU the host-time table."""
    size = {"batch": 8, "channels": SMALL_CHANNELS} if small else {}
    calls = hvp_calls(**size, device=device)
    hvp = table(measure(calls, repeats=3 if small else repeats))
    if device != "cpu":
        hvp.title += f" on {device}"
        return [hvp]
    return [hvp, host_table(host_overhead())]


def main(argv: list[str] | None = None) -> None:
    """Print the tables (``NUMBABN_BENCH_SIZE=small``: tiny net and batch;
    ``--device cuda``: the nets and the batch on the GPU)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m numbabn.bench.torch_net")
    parser.add_argument("--device", default="cpu", help="torch device of the nets and batch")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    small = os.environ.get("NUMBABN_BENCH_SIZE") == "small"
    for t in tables(small, args.repeats, args.device):
        print(t.text(), end="\n\n")


if __name__ == "__main__":
    main()
