"""Run under ``mpiexec -n K``: each rank holds an uneven shard of one batch along
axis 0 (one rank a single row), and every function's sharded result must equal
the unsharded result on the whole batch. Prints one "OK <rank>" per rank."""

import sys

import numpy as np
from mpi4py import MPI

import numbabn

from cases import make_case

COMM = MPI.COMM_WORLD
SHARD_ROWS = {1: [3], 2: [1, 5], 3: [3, 1, 2]}[COMM.size]
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


class AllreduceSumOnly:
    """A communicator reached only through the ``allreduce_sum`` protocol."""

    def allreduce_sum(self, buffer):
        COMM.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)


def my_rows(a, lead=0):
    start = sum(SHARD_ROWS[: COMM.rank])
    index = [slice(None)] * a.ndim
    index[lead] = slice(start, start + SHARD_ROWS[COMM.rank])
    return a[tuple(index)]


def check(name, got, want, dtype, sharded=True, lead=0):
    want = my_rows(want, lead) if sharded else want
    scale = max(np.abs(want).max(), 1.0)
    err = np.abs(np.asarray(got, np.float64) - want).max() / scale
    if not err <= TOLERANCE[np.dtype(dtype)]:
        raise AssertionError(f"rank {COMM.rank}: {name}: relative error {err:.2e}")


def run_case(shape, axis, dtype, n_dir, comm):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    lead = 0 if n_dir is None else 1
    s = {k: my_rows(v, lead if k in ("u", "dz_dot") else 0) for k, v in c.items()}
    for k in ("gamma", "beta", "u_gamma", "u_beta"):
        s[k] = c[k]
    x, g, cx = s["x"], s["gamma"], c["x"]

    z, st = numbabn.forward(x, g, s["beta"], axis=axis, comm=comm)
    z_full, st_full = numbabn.forward(cx, g, c["beta"], axis=axis)
    check("forward", z, z_full, dtype)
    assert st.count == st_full.count and st.comm is comm
    check("mean", st.mean, st_full.mean, np.float64, sharded=False)
    check("invstd", st.invstd, st_full.invstd, np.float64, sharded=False)

    kw = {"u_gamma": s["u_gamma"], "u_beta": s["u_beta"]}
    got = numbabn.jvp(x, g, s["u"], st, **kw)  # reduces over st.comm
    want = numbabn.jvp(cx, g, c["u"], st_full, u_gamma=c["u_gamma"], u_beta=c["u_beta"])
    check("jvp", got, want, dtype, lead=lead)
    for got, want, name, sharded in zip(
        numbabn.vjp(x, g, s["dz"], axis=axis, comm=comm),
        numbabn.vjp(cx, g, c["dz"], axis=axis),
        ("dx", "dgamma", "dbeta"),
        (True, False, False),
        strict=True,
    ):
        check(name, got, want, dtype, sharded)
    check("rvp", numbabn.rvp(x, g, s["dz"], s["u"], st),
          numbabn.rvp(cx, g, c["dz"], c["u"], st_full), dtype, lead=lead)  # fmt: skip
    check("hvp", numbabn.hvp(x, g, s["dz"], s["u"], s["hz"], st),
          numbabn.hvp(cx, g, c["dz"], c["u"], c["hz"], st_full), dtype, lead=lead)  # fmt: skip
    double = lambda t: 2 * t  # noqa: E731
    check("hvp callable", numbabn.hvp(x, g, s["dz"], s["u"], double, st),
          numbabn.hvp(cx, g, c["dz"], c["u"], double, st_full), dtype, lead=lead)  # fmt: skip
    check("ggnvp", numbabn.ggnvp(x, g, s["u"], s["hz"], st),
          numbabn.ggnvp(cx, g, c["u"], c["hz"], st_full), dtype, lead=lead)  # fmt: skip
    got = numbabn.rop_backward(x, g, s["dz"], s["dz_dot"], s["u"], st, u_gamma=s["u_gamma"])
    want = numbabn.rop_backward(cx, g, c["dz"], c["dz_dot"], c["u"], st_full, u_gamma=c["u_gamma"])
    check("dx_dot", got[0], want[0], dtype, lead=lead)
    check("dgamma_dot", got[1], want[1], dtype, sharded=False)
    check("dbeta_dot", got[2], want[2], dtype, sharded=False)
    got = numbabn.vjp_backward(x, g, s["dz"], s["u"], st, a_gamma=s["u_gamma"],
                               a_beta=s["u_beta"])  # fmt: skip
    want = numbabn.vjp_backward(cx, g, c["dz"], c["u"], st_full, a_gamma=c["u_gamma"],
                                a_beta=c["u_beta"])  # fmt: skip
    check("dz_bar", got[0], want[0], dtype, lead=lead)
    check("x_bar", got[1], want[1], dtype, lead=lead)
    check("gamma_bar", got[2], want[2], dtype, sharded=False)


def main():
    n = sum(SHARD_ROWS)
    cases = [((n, 3), 1), ((n, 4, 3), -1), ((n, 3, 2, 2), 1), ((n, 2, 2, 3), -1)]
    for shape, axis in cases:
        for dtype in (np.float64, np.float32):
            for n_dir in (None, 2):
                run_case(shape, axis, dtype, n_dir, COMM)
    run_case(cases[2][0], 1, np.float64, None, AllreduceSumOnly())
    print(f"OK {COMM.rank}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        COMM.Abort(1)
