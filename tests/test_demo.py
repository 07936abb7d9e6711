"""The demo's checks pass, and the NumPy closed forms it compares with match numbabn."""

import numpy as np
import pytest

import numbabn
from numbabn import closed_form
from numbabn.__main__ import main

from cases import assert_close, make_case


def test_demo_runs_on_a_small_batch(capsys):
    assert main(["demo", "--shape", "4", "3", "5", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "all results match" in out
    for op in ("forward", "jvp", "rvp", "hvp"):
        assert op in out


def test_gpu_bench_without_a_gpu_says_why(capsys):
    from numbabn.bench_cuda import unavailable

    reason = unavailable()
    if reason is None:
        pytest.skip("a GPU is usable here")
    assert main(["bench", "--backend", "cuda"]) == 1
    assert capsys.readouterr().err == f"bench --backend cuda: {reason}\n"


def test_closed_form_baseline_matches_numbabn():
    c = make_case((4, 3, 5), axis=-1)
    x, g = c["x"], c["gamma"]
    kw = {"eps": 1e-5, "axis": -1}
    assert_close(
        numbabn.forward(x, g, c["beta"], **kw)[0],
        closed_form.forward(x, g, c["beta"], **kw),
        np.float64,
    )
    assert_close(numbabn.jvp(x, g, c["u"], **kw), closed_form.jvp(x, g, c["u"], **kw), np.float64)
    assert_close(
        numbabn.rvp(x, g, c["dz"], c["u"], **kw),
        closed_form.rvp(x, g, c["dz"], c["u"], **kw),
        np.float64,
    )
    assert_close(
        numbabn.hvp(x, g, c["dz"], c["u"], c["hz"], **kw),
        closed_form.hvp(x, g, c["dz"], c["u"], c["hz"], **kw),
        np.float64,
    )


def test_readme_usage_example_runs():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["Hu"].shape == (4, 32, 64, 28, 28)
    assert namespace["dgamma"].shape == (64,)
