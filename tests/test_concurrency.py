"""Concurrent callers and reproducibility: 8 Python threads get exactly the
single-threaded results, and results are bitwise identical across repeated
calls and across NUMBA_NUM_THREADS (fixed chunking), checked in fresh processes.
The parallel kernels run even on these small shapes (no serial twins), and they
agree with the serial twins."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import numbabn
from numbabn import config

from cases import make_case

SHAPES = [((64, 8, 3, 5), 1), ((300, 16), 1), ((20, 4, 4, 6), -1)]


def all_results(c, axis):
    x, g = c["x"], c["gamma"]
    st = numbabn.batch_stats(x, axis=axis)
    return [
        st.mean, st.invstd,
        numbabn.forward(x, g, c["beta"], axis=axis)[0],
        numbabn.jvp(x, g, c["u"], st, u_gamma=c["u_gamma"]),
        *numbabn.vjp(x, g, c["dz"], st),
        numbabn.rvp(x, g, c["dz"], c["u"], st),
        numbabn.hvp(x, g, c["dz"], c["u"], c["hz"], st),
        numbabn.ggnvp(x, g, c["u"], c["hz"], st),
        *numbabn.rop_backward(x, g, c["dz"], c["dz_dot"], c["u"], st),
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def parallel_kernels_only(monkeypatch):
    monkeypatch.setattr(config, "SERIAL_MAX_ELEMENTS", 0)


def test_eight_threads_match_single_threaded_results():
    jobs = [(make_case(shape, axis, dtype, seed=s, n_dir=2 if s % 2 else None), axis)
            for s, ((shape, axis), dtype) in enumerate(
                [(sa, dt) for sa in SHAPES for dt in (np.float32, np.float64)] * 2)]  # fmt: skip
    expected = [all_results(c, axis) for c, axis in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            got = list(pool.map(lambda job: all_results(*job), jobs))
            for want_list, got_list in zip(expected, got, strict=True):
                for want, have in zip(want_list, got_list, strict=True):
                    np.testing.assert_array_equal(have, want)


def test_repeated_calls_are_bitwise_identical():
    c = make_case((1000, 37), seed=5)
    first = all_results(c, 1)
    for _ in range(3):
        for a, b in zip(first, all_results(c, 1), strict=True):
            assert a.tobytes() == b.tobytes()


#: Reductions with several row chunks and, in the rows layouts, several row tiles
#: per chunk (narrow blocks), wide channel blocks, planes and channels-last.
DIRECTION_SHAPES = [((1200, 200), 1), ((600, 1100), 1), ((40, 3, 7, 9), 1),
                    ((300, 5, 5, 48), -1)]  # fmt: skip


@pytest.mark.parametrize(("shape", "axis"), DIRECTION_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_several_directions_give_the_bits_of_one_at_a_time(shape, axis, dtype):
    """A batch of V directions is V single-direction calls: every per-direction
    sum adds up the same rows in the same order, whatever the tiling."""
    n_dir = 3
    c = make_case(shape, axis, dtype, seed=7, n_dir=n_dir)
    x, g, dz, hz = c["x"], c["gamma"], c["dz"], c["hz"]
    st = numbabn.batch_stats(x, axis=axis)
    calls = {
        "jvp": lambda u, ug, w: numbabn.jvp(x, g, u, st, u_gamma=ug),
        "rvp": lambda u, ug, w: numbabn.rvp(x, g, dz, u, st),
        "hvp": lambda u, ug, w: numbabn.hvp(x, g, dz, u, hz, st),
        "ggnvp": lambda u, ug, w: numbabn.ggnvp(x, g, u, hz, st),
        "rop_backward": lambda u, ug, w: numbabn.rop_backward(x, g, dz, w, u, st, u_gamma=ug)[0],
    }
    for name, call in calls.items():
        batched = call(c["u"], c["u_gamma"], c["dz_dot"])
        for v in range(n_dir):
            one = call(c["u"][v], c["u_gamma"][v], c["dz_dot"][v])
            np.testing.assert_array_equal(batched[v], one, err_msg=f"{name}, v={v}")


_SCRIPT = """
import sys, numpy as np, numba
from numbabn import config
config.SERIAL_MAX_ELEMENTS = 0  # the parallel kernels, whatever the size
sys.path.insert(0, {tests!r})
from cases import make_case
from test_concurrency import all_results, SHAPES
out = {{}}
for k, (shape, axis) in enumerate(SHAPES + [((4096, 64), 1), ((16, 32, 40, 40), 1)]):
    for dt in (np.float32, np.float64):
        for i, r in enumerate(all_results(make_case(shape, axis, dt, seed=k), axis)):
            out[f"{{k}}_{{dt.__name__}}_{{i}}"] = r
np.savez({path!r}, layer=numba.threading_layer(), **out)
"""


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    runs = {}
    for threads in ("1", "2"):
        path = tmp_path / f"threads{threads}.npz"
        script = _SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=900)
        runs[threads] = dict(np.load(path))
    assert str(runs["1"].pop("layer")) in ("omp", "tbb")  # a thread-safe layer
    runs["2"].pop("layer")
    assert runs["1"].keys() == runs["2"].keys()
    for key, a in runs["1"].items():
        assert a.tobytes() == runs["2"][key].tobytes(), key


@pytest.mark.parametrize(("shape", "axis"), SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_dir", [None, 3])
def test_serial_twins_agree_with_parallel_kernels(shape, axis, dtype, n_dir, monkeypatch):
    c = make_case(shape, axis, dtype, n_dir=n_dir)
    parallel = all_results(c, axis)
    monkeypatch.setattr(config, "SERIAL_MAX_ELEMENTS", 2**62)
    serial = all_results(c, axis)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for k, (p, s) in enumerate(zip(parallel, serial, strict=True)):
        np.testing.assert_allclose(s, p, rtol=tol, atol=tol, err_msg=f"result {k}")


_POLICY_SCRIPT = """
import os, numpy as np
from numba.np.ufunc import parallel
seen = []
launch = parallel._launch_threads
at_launch = lambda: [os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")]
parallel._launch_threads = lambda: (seen.append(at_launch()), launch())
import numbabn
from numbabn import hf
x = np.random.default_rng(0).normal(size=(64, 8))
if {entry!r} == "layer":
    numbabn.rvp(x, np.ones(8), x, x)
else:  # hf runs numbabn on one Numba thread: the pool must still start numbabn's way
    net = hf.Sequential([hf.BatchNorm(8)], loss="mse")
    net.loss(net.init(), x, x)
print(*seen[0], *at_launch())
"""


@pytest.mark.parametrize("entry", ["layer", "hf"])
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, f"{config.OMP_SPIN_COUNT} None None None"),  # at launch, then after
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE None ACTIVE"),
        ({"GOMP_SPINCOUNT": "5"}, "5 None 5 None"),
    ],
)
def test_thread_pool_starts_with_a_short_spin_without_touching_the_environment(
    entry, user, expected
):
    """Numba's OpenMP pool starts with idle threads spinning config.OMP_SPIN_COUNT
    times before they sleep; the process environment (read by other OpenMP
    runtimes, e.g. PyTorch's, when they load) is restored, and a policy or
    spin count the user chose wins."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user)
    script = _POLICY_SCRIPT.format(entry=entry)
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == expected.split()
