"""Sharded batches over MPI: `mpiexec -n 2` and `-n 3` with uneven shards give
every function's unsharded result (tests/mpi_worker.py), and the communicator
argument is validated."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbabn

from cases import make_case

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
WORKER = Path(__file__).with_name("mpi_worker.py")


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_results_equal_unsharded(ranks):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, str(WORKER)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    ok_ranks = sorted(int(r) for r in re.findall(r"OK (\d+)", run.stdout))  # lines may interleave
    assert ok_ranks == list(range(ranks)), run.stdout


class SingleRank:
    """The allreduce_sum protocol with one rank: sums are already global."""

    calls = 0

    def allreduce_sum(self, buffer):
        assert buffer.dtype == np.float64 and buffer.flags.c_contiguous
        SingleRank.calls += 1


def test_allreduce_protocol_messages_per_phase():
    c = make_case((5, 3, 4))
    comm = SingleRank()
    st = numbabn.batch_stats(c["x"], comm=comm)
    assert SingleRank.calls == 2 and st.comm is comm  # two passes: mean, centred squares
    got = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"], st)
    assert SingleRank.calls == 3  # one message for the five rvp sums
    # A sharded call shifts by the global mean, an unsharded one by a sample: equal
    # up to rounding.
    want = numbabn.rvp(c["x"], c["gamma"], c["dz"], c["u"])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_bad_comm():
    c = make_case((5, 3))
    with pytest.raises(TypeError, match="^comm must be an mpi4py communicator"):
        numbabn.batch_stats(c["x"], comm="world")
    st = numbabn.batch_stats(c["x"], comm=SingleRank())
    with pytest.raises(ValueError, match="^comm differs"):
        numbabn.jvp(c["x"], c["gamma"], c["u"], st, comm=SingleRank())


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_readme_mpi_example_runs(tmp_path):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    example = next(b.split("```", 1)[0] for b in text.split("```python\n")[1:] if "mpiexec" in b)
    script = tmp_path / "train.py"
    script.write_text(example + "\nassert Hu.shape == x.shape and dgamma.shape == (64,)\n")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(script)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
