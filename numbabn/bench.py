"""Speed measurements: the memory-traffic floor, numbabn's operations, and the
peers a user would otherwise use (NumPy closed form, autograd, PyTorch double
backward, JAX jit). Used by ``python -m numbabn bench`` and the asv suite.

The floor of an operation is the bytes it must move (array passes x array
size) divided by the streaming bandwidth of a Numba triad ``c = a + s*b`` over
arrays of the same size and dtype, measured in the same process with the same
threads.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

import numbabn

from . import closed_form

#: Array passes (reads + writes of x-sized arrays) with statistics given, and
#: V directions where the operation takes them (DESIGN.md §2).
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


@njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        c[i] = a[i] + s * b[i]


def median_seconds(fn: Callable[[], Any], repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def stream_bandwidth(n: int, dtype: Any, repeats: int = 7) -> float:
    """Bytes per second of the triad ``c = a + s*b`` over ``n`` elements."""
    a, b, c = (np.full(n, 1.0, dtype) for _ in range(3))
    seconds = median_seconds(lambda: _triad(a, b, c, 2.0), repeats)
    return 3 * a.nbytes / seconds


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


# --- peers: rvp and hvp with the statistics computed inside the call -----------------
def numpy_peer(op: str, d: dict, axis: int):
    x, g, dz, u, hz = d["x"], d["gamma"], d["dz"], d["u"], d["hz"]
    if op == "rvp":
        return lambda: closed_form.rvp(x, g, dz, u, axis=axis)
    return lambda: closed_form.hvp(x, g, dz, u, hz, axis=axis)


def autograd_peer(op: str, d: dict, axis: int):
    import autograd.numpy as anp
    from autograd import grad

    x, g, dz, u, hz = d["x"], d["gamma"], d["dz"], d["u"], d["hz"]
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1
    gb = g.reshape(shape)

    def z(x_):
        mean = anp.mean(x_, axis=axes, keepdims=True)
        var = anp.mean((x_ - mean) ** 2, axis=axes, keepdims=True)
        return gb * (x_ - mean) / anp.sqrt(var + 1e-5)

    z0 = z(x)

    def loss(x_):
        out = z(x_)
        value = anp.sum(dz * out)
        return value if op == "rvp" else value + 0.5 * anp.sum(hz * (out - z0) ** 2)

    return lambda: grad(lambda x_: anp.sum(grad(loss)(x_) * u))(x)


def torch_peer(op: str, d: dict, axis: int, device: str = "cpu"):
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in d.items()}
    move = axis % d["x"].ndim != 1  # F.batch_norm wants channels on axis 1

    def z(x_):
        x1 = x_.movedim(axis, 1) if move else x_
        out = F.batch_norm(x1, None, None, t["gamma"], None, training=True, eps=1e-5)
        return out.movedim(1, axis) if move else out

    z0 = z(t["x"]).detach()

    def run():
        x_ = t["x"].detach().requires_grad_(True)
        out = z(x_)
        loss = (t["dz"] * out).sum()
        if op == "hvp":
            loss = loss + 0.5 * (t["hz"] * (out - z0) ** 2).sum()
        (g,) = torch.autograd.grad(loss, x_, create_graph=True)
        (h,) = torch.autograd.grad(g, x_, grad_outputs=t["u"])
        return h

    return run


def jax_peer(op: str, d: dict, axis: int):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    x, g, dz, u, hz = (jnp.asarray(d[k]) for k in ("x", "gamma", "dz", "u", "hz"))
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1

    def z(x_):
        mean = jnp.mean(x_, axis=axes, keepdims=True)
        var = jnp.mean((x_ - mean) ** 2, axis=axes, keepdims=True)
        return g.reshape(shape) * (x_ - mean) / jnp.sqrt(var + 1e-5)

    z0 = z(x)

    def loss(x_):
        out = z(x_)
        value = jnp.sum(dz * out)
        return value if op == "rvp" else value + 0.5 * jnp.sum(hz * (out - z0) ** 2)

    hvp_fn = jax.jit(lambda x_, u_: jax.jvp(jax.grad(loss), (x_,), (u_,))[1])
    return lambda: hvp_fn(x, u).block_until_ready()


PEERS = {"numpy": numpy_peer, "autograd": autograd_peer, "torch": torch_peer, "jax": jax_peer}


# --- a whole network: exact HVP, numbabn.hf vs PyTorch double backward ----------------
def network_hvp_calls(
    batch: int = 1024, width: int = 256, seed: int = 0, fixed_point=False, device: str = "cpu"
):
    """(numbabn call, torch call or None) of one exact network HVP on the same net and batch.

    ``device="cuda"`` runs both on the GPU: numbabn.hf on CuPy arrays, torch on CUDA.

    With ``fixed_point``, both reuse the forward pass and gradient, as the
    conjugate gradient of Hessian-free training can: numbabn through
    ``net.curvature``, torch by keeping the graph of the gradient
    (``retain_graph=True``).
    """
    from .hf import BatchNorm, Linear, Sequential, Tanh

    layers = [Linear(64, width), BatchNorm(width), Tanh(), Linear(width, width),
              BatchNorm(width), Tanh(), Linear(width, 10)]  # fmt: skip
    net = Sequential(layers)
    rng = np.random.default_rng(seed)
    theta, v = net.init(seed), rng.standard_normal(net.size)
    X, y = rng.standard_normal((batch, 64)), rng.integers(0, 10, batch)
    if device == "cuda":
        import cupy

        theta, v, X, y = (cupy.asarray(a) for a in (theta, v, X, y))
    ours = lambda: net.hvp(theta, X, y, v)  # noqa: E731
    if fixed_point:
        ours = functools.partial(net.curvature(theta, X, y, kind="hessian"), v)
    try:
        import torch
    except ImportError:
        return ours, None
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width), torch.nn.BatchNorm1d(width), torch.nn.Tanh(),
        torch.nn.Linear(width, width), torch.nn.BatchNorm1d(width), torch.nn.Tanh(),
        torch.nn.Linear(width, 10),
    ).double().to(device)  # fmt: skip
    params = list(model.parameters())
    tX, ty, tv, ttheta = (torch.as_tensor(a, device=device) for a in (X, y, v, theta))
    torch.nn.utils.vector_to_parameters(ttheta, params)

    def gradient():
        loss = torch.nn.functional.cross_entropy(model(tX), ty)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return torch.cat([g.reshape(-1) for g in grads])

    def theirs(flat=None):
        flat = gradient() if flat is None else flat
        hvp = torch.autograd.grad(flat @ tv, params, retain_graph=fixed_point)
        return torch.cat([h.reshape(-1) for h in hvp])

    return ours, (functools.partial(theirs, gradient()) if fixed_point else theirs)


def _progress(items, desc):
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc)
    except ImportError:
        return items


CASES = [((4096, 1024), 1), ((256, 4096), 1), ((32768, 256), 1), ((32, 64, 56, 56), 1),
         ((32, 28, 28, 128), -1)]  # fmt: skip


def efficiency_table(dtypes=(np.float32, np.float64), repeats: int = 7, n_dir: int = 16):
    """Time over the bandwidth floor of every operation (statistics given, results
    written into a preallocated ``out``, as the floor's triad does).

    The rvp with ``n_dir`` directions streams arrays ``n_dir`` times larger; its
    floor takes the triad's bandwidth at that size (from memory, where a
    single array of 8 MB is read from cache 1.3-3x faster).
    """
    rows = []
    cases = [(s, a, dt) for s, a in CASES for dt in dtypes]
    for shape, axis, dtype in _progress(cases, "efficiency"):
        d = make_inputs(shape, axis, dtype)
        st = numbabn.batch_stats(d["x"], axis=axis)
        bw = stream_bandwidth(d["x"].size, dtype, repeats)
        array_seconds = d["x"].nbytes / bw
        out = np.empty_like(d["u"])
        for op in FLOOR_PASSES:
            seconds = median_seconds(numbabn_call(op, d, axis, st, out), repeats)
            rows.append((shape, np.dtype(dtype).name, op, 1, seconds,
                         FLOOR_PASSES[op](1) * array_seconds))  # fmt: skip
        if n_dir:
            dv = make_inputs(shape, axis, dtype, n_dir=n_dir)
            dv["x"], dv["dz"] = d["x"], d["dz"]
            call = numbabn_call("rvp", dv, axis, st, np.empty_like(dv["u"]))
            seconds = median_seconds(call, max(3, repeats // 2))
            bw_dir = stream_bandwidth(dv["u"].size, dtype, max(3, repeats // 2))
            rows.append((shape, np.dtype(dtype).name, "rvp", n_dir, seconds,
                         FLOOR_PASSES["rvp"](n_dir) * d["x"].nbytes / bw_dir))  # fmt: skip
    return rows


def peer_table(shapes=CASES, dtype=np.float64, repeats: int = 5, peers=tuple(PEERS)):
    """rvp and hvp with statistics computed inside the call: numbabn vs each peer."""
    rows, missing = [], {}
    cases = [(s, a, op) for s, a in shapes for op in ("rvp", "hvp")]
    for shape, axis, op in _progress(cases, "peers"):
        d = make_inputs(shape, axis, dtype)
        bw = stream_bandwidth(d["x"].size, dtype, repeats)
        floor = (FLOOR_PASSES[op](1) + 2) * d["x"].nbytes / bw  # + the statistics' 2 reads
        ours = median_seconds(numbabn_call(op, d, axis), repeats)
        times = {}
        for name in peers:
            try:
                fn = PEERS[name](op, d, axis)
            except ImportError as exc:
                missing[name] = str(exc)
                continue
            slow = name == "autograd"
            times[name] = median_seconds(fn, 1 if slow else max(2, repeats // 2))
        rows.append((shape, op, ours, floor, times))
    return rows, missing


def compare(plot_path: str | None = "bench.png", repeats: int = 5, quick: bool = False) -> None:
    """Print the efficiency and peer tables (and the network HVP row); save a plot."""
    import numba

    print(f"threads: {numba.get_num_threads()}, threading layer after first call below")
    eff = efficiency_table(repeats=repeats, n_dir=0 if quick else 16)
    print(f"\nnumbabn vs its memory-traffic floor (threads: {numba.get_num_threads()}, "
          f"layer: {numba.threading_layer()}; statistics given, out= preallocated)")  # fmt: skip
    print(f"{'shape':<20}{'dtype':<9}{'op':<14}{'V':>3}{'ms':>10}{'floor ms':>10}{'x floor':>9}")
    for shape, dt, op, v, seconds, floor in eff:
        print(f"{str(shape):<20}{dt:<9}{op:<14}{v:>3}{seconds * 1e3:>10.2f}{floor * 1e3:>10.2f}"
              f"{seconds / floor:>9.2f}")  # fmt: skip
    shapes = CASES[:2] if quick else CASES
    rows, missing = peer_table(shapes, repeats=repeats)
    for name, why in missing.items():
        print(f"(skipped {name}: {why})")
    names = [n for n in PEERS if n not in missing]
    print("\nrvp and hvp, float64, statistics computed inside the call: ms and peer/numbabn")
    print(
        f"{'shape':<20}{'op':<5}{'numbabn':>9}{'x floor':>8}" + "".join(f"{n:>16}" for n in names)
    )
    for shape, op, ours, floor, times in rows:
        cells = "".join(f"{times[n] * 1e3:>9.1f} ({times[n] / ours:>4.0f}x)" for n in names)
        print(f"{str(shape):<20}{op:<5}{ours * 1e3:>9.2f}{ours / floor:>8.2f}{cells}")
    ours, theirs = network_hvp_calls()
    network_repeats = max(15, repeats)  # a ~25 ms call on a noisy machine: more samples
    t_ours = median_seconds(ours, network_repeats, warmup=3)
    line = "\nnetwork HVP (64-256-BN-tanh-256-BN-tanh-10, batch 1024, float64): "
    line += f"numbabn.hf {t_ours * 1e3:.1f} ms"
    if theirs is not None:
        t_theirs = median_seconds(theirs, network_repeats, warmup=3)
        line += f", torch double backward {t_theirs * 1e3:.1f} ms ({t_theirs / t_ours:.1f}x)"
    print(line)
    ours, theirs = network_hvp_calls(fixed_point=True)
    t_ours = median_seconds(ours, network_repeats, warmup=3)
    line = f"the same at a fixed point (forward pass and gradient reused): {t_ours * 1e3:.1f} ms"
    if theirs is not None:
        t_theirs = median_seconds(theirs, network_repeats, warmup=3)
        line += f", torch, graph retained {t_theirs * 1e3:.1f} ms ({t_theirs / t_ours:.1f}x)"
    print(line)
    if plot_path:
        scaling_plot(plot_path, names, repeats)
        print(f"plot: {plot_path}")


def scaling_plot(path: str, names, repeats: int) -> None:
    """Time of rvp (float64, statistics inside) against problem size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [2**k for k in range(8, 15, 2)]
    series: dict[str, list[float]] = {"numbabn": [], "floor": [], **{n: [] for n in names}}
    for n in _progress(sizes, "scaling"):
        d = make_inputs((n, 256), 1, np.float64)
        series["numbabn"].append(median_seconds(numbabn_call("rvp", d, 1), repeats))
        series["floor"].append(9 * d["x"].nbytes / stream_bandwidth(d["x"].size, np.float64))
        for name in names:
            reps = 1 if name == "autograd" else 3
            series[name].append(median_seconds(PEERS[name]("rvp", d, 1), reps))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    elements = [n * 256 for n in sizes]
    for name, times in series.items():
        style = {"ls": "--", "color": "gray"} if name == "floor" else {"marker": "o", "ms": 3}
        ax.loglog(elements, times, label=name, **style)
    ax.set_xlabel("elements of x (N x 256, float64)")
    ax.set_ylabel("seconds per rvp (statistics inside)")
    ax.set_title("BatchNorm residual-vector product")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
