"""``python -m numbabn bench``: numbabn on the CPU against its memory-traffic
floor and against the autodiff peers, side by side in one process."""

from __future__ import annotations

import numpy as np

import numbabn

from .cases import CASES, FLOOR_PASSES, Case, make_inputs, numbabn_call
from .network import network_hvp_calls
from .peers import PEERS
from .report import Report, Table
from .timing import median_seconds, progress, stream_bandwidth


def efficiency_table(cases=CASES, dtypes=(np.float32, np.float64), repeats=7, n_dir=16):
    """Rows ``(case, dtype, op, V, seconds, floor seconds)``: statistics given,
    results written into a preallocated ``out``, as the floor's triad does.

    The rvp with ``n_dir`` directions streams arrays ``n_dir`` times larger; its
    floor takes the triad's bandwidth at that size, since a single array small
    enough to stay in cache is read faster than memory allows.
    """
    rows = []
    for case, dtype in progress([(c, dt) for c in cases for dt in dtypes], "efficiency"):
        d = make_inputs(case.shape, case.axis, dtype)
        st = numbabn.batch_stats(d["x"], axis=case.axis)
        array_seconds = d["x"].nbytes / stream_bandwidth(d["x"].size, dtype, repeats)
        out = np.empty_like(d["u"])
        name = np.dtype(dtype).name
        for op in FLOOR_PASSES:
            seconds = median_seconds(numbabn_call(op, d, case.axis, st, out), repeats)
            rows.append((case, name, op, 1, seconds, FLOOR_PASSES[op](1) * array_seconds))
        if n_dir:
            dv = make_inputs(case.shape, case.axis, dtype, n_dir=n_dir)
            dv["x"], dv["dz"] = d["x"], d["dz"]
            fewer = max(3, repeats // 2)
            seconds = median_seconds(
                numbabn_call("rvp", dv, case.axis, st, np.empty_like(dv["u"])), fewer
            )
            floor = FLOOR_PASSES["rvp"](n_dir) * d["x"].nbytes
            floor /= stream_bandwidth(dv["u"].size, dtype, fewer)
            rows.append((case, name, "rvp", n_dir, seconds, floor))
    return rows


def peer_table(cases=CASES, dtype=np.float64, repeats: int = 5, peers=tuple(PEERS)):
    """Rows ``(case, op, seconds, floor seconds, {peer: seconds})`` for rvp and hvp
    with statistics computed inside the call, and ``{peer: why}`` for peers missing."""
    rows, missing = [], {}
    for case, op in progress([(c, op) for c in cases for op in ("rvp", "hvp")], "peers"):
        d = make_inputs(case.shape, case.axis, dtype)
        bw = stream_bandwidth(d["x"].size, dtype, repeats)
        floor = (FLOOR_PASSES[op](1) + 2) * d["x"].nbytes / bw  # + the statistics' 2 reads
        ours = median_seconds(numbabn_call(op, d, case.axis), repeats)
        times = {}
        for name in peers:
            try:
                fn = PEERS[name](op, d, case.axis)
            except ImportError as exc:
                missing[name] = str(exc)
                continue
            times[name] = median_seconds(fn, 1 if name == "autograd" else max(2, repeats // 2))
        rows.append((case, op, ours, floor, times))
    return rows, missing


def network_lines(repeats: int) -> list[str]:
    """The network HVP against torch, in full and at a fixed point."""
    lines = []
    for fixed_point in (False, True):
        ours, theirs = network_hvp_calls(fixed_point=fixed_point)
        reps = max(15, repeats)  # a call of tens of ms on a noisy machine: more samples
        t_ours = median_seconds(ours, reps, warmup=3)
        what = "at a fixed point (forward and gradient reused)" if fixed_point else "in full"
        line = f"network HVP {what}: numbabn.hf {t_ours * 1e3:.1f} ms"
        if theirs is not None:
            t_theirs = median_seconds(theirs, reps, warmup=3)
            line += f", torch {t_theirs * 1e3:.1f} ms ({t_theirs / t_ours:.1f}x)"
        lines.append(line)
    return lines


def compare(
    plot_path: str | None = "docs/bench.png",
    repeats: int = 5,
    quick: bool = False,
    markdown: str | None = None,
    extras: tuple[str, ...] = (),
) -> None:
    """Print the fixed-cost, efficiency, peer and network tables, then those of
    ``extras`` ("torch": numbabn.torch in a network HVP; "backpack": BackPACK's
    residual and HMP pass); save the plot and the Markdown."""
    import numba

    from . import fixed_cost

    report = Report("numbabn performance on the CPU")
    report.show(fixed_cost.table(fixed_cost.rows()))
    cases = CASES[:2] if quick else CASES
    eff = efficiency_table(cases, repeats=repeats, n_dir=0 if quick else 16)
    table = Table(
        f"numbabn vs its memory-traffic floor ({numba.get_num_threads()} threads, "
        f"{numba.threading_layer()} layer; statistics given, out= preallocated)",
        ["shape", "dtype", "op", "V", "ms", "floor ms", "x floor"],
    )
    for case, dt, op, v, seconds, floor in eff:
        table.add(case.label, dt, op, v, f"{seconds * 1e3:.2f}", f"{floor * 1e3:.2f}",
                  f"{seconds / floor:.2f}")  # fmt: skip
    report.show(table)

    rows, missing = peer_table(cases, repeats=repeats)
    names = [n for n in PEERS if n not in missing]
    table = Table(
        "rvp and hvp, float64, statistics computed inside the call: ms (peer / numbabn)",
        ["shape", "op", "numbabn ms", "x floor", *names],
        notes=[f"skipped {name}: {why}" for name, why in missing.items()],
    )
    for case, op, ours, floor, times in rows:
        cells = [f"{times[n] * 1e3:.1f} ({times[n] / ours:.0f}x)" for n in names]
        table.add(case.label, op, f"{ours * 1e3:.2f}", f"{ours / floor:.2f}", *cells)
    report.show(table)

    table = Table("network (64-256-BN-tanh-256-BN-tanh-10, batch 1024, float64)", ["row"])
    for line in network_lines(repeats):
        table.add(line)
    report.show(table)
    for extra in extras:
        for extra_table in EXTRAS[extra](quick, repeats):
            report.show(extra_table)
    if plot_path:
        scaling_plot(plot_path, names, repeats)
        print(f"plot: {plot_path}")
    if markdown:
        report.write_markdown(markdown, _machine_line())
        print(f"tables: {markdown}")


def _backpack_tables(quick: bool, repeats: int) -> list[Table]:
    from . import backpack_residual as b

    shapes = b.SMALL_RESIDUAL_SHAPES if quick else b.RESIDUAL_SHAPES
    return [
        b.residual_table(b.residual_rows(shapes, repeats=repeats)),
        b.pass_table(b.hmp_pass_rows(quick, repeats=max(3, repeats // 2))),
    ]


def _torch_tables(quick: bool, repeats: int) -> list[Table]:
    from . import torch_net

    return torch_net.tables(small=quick, repeats=max(repeats, 7))


#: Optional sections of the report, by name: (quick, repeats) -> tables.
EXTRAS = {"torch": _torch_tables, "backpack": _backpack_tables}


def _machine_line() -> str:
    import os
    import platform

    import numba

    cpu = platform.processor() or platform.machine()
    return (
        f"Written by `python -m numbabn bench --markdown`: {cpu}, {os.cpu_count()} logical "
        f"CPUs, numba {numba.__version__}, numbabn {numbabn.__version__}. Times are medians; "
        "single runs on a shared machine move by up to 2x.\n"
    )


def scaling_plot(path: str, names, repeats: int) -> None:
    """Time of rvp (float64, statistics inside) against problem size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [2**k for k in range(8, 15, 2)]
    series: dict[str, list[float]] = {"numbabn": [], "floor": [], **{n: [] for n in names}}
    for n in progress(sizes, "scaling"):
        case = Case((n, 256))
        d = make_inputs(case.shape, 1, np.float64)
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
