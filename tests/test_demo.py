"""The demo's checks pass, the NumPy closed forms and the autodiff peers it is
compared with match numbabn, the bench tables format, and the README's images exist."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import numbabn
from numbabn.__main__ import main
from numbabn.bench import closed_form
from numbabn.bench.cases import SMALL_CASES, make_inputs
from numbabn.bench.cpu import efficiency_table
from numbabn.bench.peers import PEERS
from numbabn.bench.report import Report, Table

from cases import assert_close, make_case

ROOT = Path(__file__).parents[1]


def test_demo_runs_on_a_small_batch(capsys):
    assert main(["demo", "--shape", "4", "3", "5", "5", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "all results match" in out
    for op in ("forward", "jvp", "rvp", "hvp"):
        assert op in out


def test_gpu_bench_without_a_gpu_says_why(capsys):
    from numbabn.bench.cuda import unavailable

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
    text = (ROOT / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["Hu"].shape == (4, 32, 64, 28, 28)
    assert namespace["dgamma"].shape == (64,)


def test_every_image_the_readme_shows_is_tracked_by_git():
    images = re.findall(r"!\[[^]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert images, "the README shows no image"
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", *images], cwd=ROOT, capture_output=True, text=True
    )
    assert tracked.returncode == 0, tracked.stderr


@pytest.mark.parametrize("peer", ["numpy", "autograd"])
@pytest.mark.parametrize("op", ["rvp", "hvp"])
def test_peers_compute_what_numbabn_computes(peer, op):
    pytest.importorskip(peer)
    d = make_inputs((6, 3, 4), axis=1, dtype=np.float64, seed=3)
    want = (
        numbabn.rvp(d["x"], d["gamma"], d["dz"], d["u"])
        if op == "rvp"
        else numbabn.hvp(d["x"], d["gamma"], d["dz"], d["u"], d["hz"])
    )
    got = np.asarray(PEERS[peer](op, d, 1)())
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_table_prints_aligned_text_and_markdown(tmp_path, capsys):
    table = Table("title", ["shape", "ms"], notes=["a note"])
    table.add("4x3", "1.50")
    table.add("4096x1024", "12.25")
    assert table.text().splitlines() == [
        "title", "shape         ms", "4x3         1.50", "4096x1024  12.25", "a note"
    ]  # fmt: skip
    report = Report("heading")
    report.show(table)
    assert "4096x1024  12.25" in capsys.readouterr().out
    path = tmp_path / "perf.md"
    report.write_markdown(str(path), "preamble\n")
    text = path.read_text()
    assert text.startswith("# heading\n\npreamble\n")
    assert "| shape | ms |\n|---|---|\n| 4x3 | 1.50 |\n| 4096x1024 | 12.25 |" in text
    assert text.endswith("- a note\n")


def test_efficiency_rows_carry_the_floor_of_each_operation():
    rows = efficiency_table(SMALL_CASES[:1], dtypes=(np.float64,), repeats=1, n_dir=2)
    ops = [(op, v) for _, _, op, v, _, _ in rows]
    assert ops[-1] == ("rvp", 2) and ("hvp", 1) in ops
    for _, _, _, _, seconds, floor in rows:
        assert seconds > 0 and floor > 0
