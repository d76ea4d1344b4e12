"""Adding a problem is one module (tests/toy_problem.py) + a backend + one registration: the
toy problem runs through accuracy, perf, plot and compare on the CPU with no change to attnbench."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from toy_problem import TOY, TorchSoftmax  # tests/ is on sys.path

from attnbench.backends.base import REGISTRY, register
from attnbench.problems import PROBLEMS, register_problem
from attnbench.results import row_schema

SUITE = """
name: toy
problem: toy_softmax
modes: [fwd, fwd_bwd]
rep_ms: 5
warmup_ms: 1
cases:
  - {batch: 2, heads_q: 2, head_dim: 8, seqlen_q: [64, 128], temperature: [1.0, 2.0], dtype: fp32}
"""


@pytest.fixture
def toy(tmp_path):
    register_problem(TOY)
    register(TorchSoftmax)
    f = tmp_path / "toy.yaml"
    f.write_text(SUITE)
    yield f
    PROBLEMS.pop(TOY.name)
    REGISTRY.pop(TorchSoftmax.name)


def test_a_new_problem_runs_through_every_command(cli, toy, tmp_path):
    out = tmp_path / "res"
    res = cli(
        "accuracy", "--suite", toy, "--device", "cpu", "--only", "toy_softmax_torch", "--out", out
    )
    assert res.exit_code == 0, res.output
    assert "temperature" in row_schema().names  # the schema took the new field from the case type
    for _ in range(2):  # two perf runs, to compare
        res = cli(
            "perf", "--sweep", toy, "--device", "cpu", "--only", "toy_softmax_torch", "--out", out
        )
        assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    perf = df[df.kind == "perf"]
    assert set(perf.temperature) == {1.0, 2.0} and (perf.status == "ok").all()
    assert perf.bytes.notna().all() and perf.gbps.gt(0).all()
    acc = df[df.kind == "accuracy"]
    assert set(acc.tensor) == {"out", "lse", "dx"} and acc.accuracy_ok.all()

    res = cli("show", out, "--latest")  # the stored runs' tables
    assert res.exit_code == 0 and "toy_softmax_torch" in res.output and "perf" in res.output
    runs = sorted(perf.run_id.unique())
    res = cli("plot", out, "--out", tmp_path / "png", "--run", runs[0])
    assert res.exit_code == 0, res.output
    pngs = sorted(p.name for p in (tmp_path / "png").rglob("*.png"))
    # one figure per temperature and mode: a line never mixes two temperatures; the default
    # temperature is not named, the other is
    fwd = [p for p in pngs if p.startswith("perf_toy_softmax_fwd_full")]
    assert fwd == ["perf_toy_softmax_fwd_full_d8_fp32_h2.png",
                   "perf_toy_softmax_fwd_full_d8_fp32_h2_temperature2.png"], pngs  # fmt: skip

    res = cli("plot", out, "--out", tmp_path / "roof", "--run", runs[0], "--roofline")
    assert res.exit_code == 0 and "roofline.png" in res.output, res.output  # bytes -> placed

    res = cli("compare", runs[0], runs[1], "--results", out, "--json")
    assert res.exit_code == 0, res.output
    comp = json.loads(res.stdout)
    assert len(comp["cases"]) == 8 and all(c["speedup"] for c in comp["cases"])  # 4 cases x 2 modes
    assert not comp["env_differences"]


PIECEWISE_SWEEP = """
name: pw
problem: piecewise
modes: [fwd]
rep_ms: 5
warmup_ms: 1
cases:
  - {batch: 1, heads_q: 2, seqlen: [32, 64], head_dim: 16, dtype: fp32, dist_threshold: [8, 16]}
"""


def test_piecewise_thresholds_draw_one_line_each_and_compare_matches(cli, tmp_path, monkeypatch):
    """The issue's reproduction: a threshold sweep drew one line through both thresholds."""
    from attnbench.views import plot

    sweep = tmp_path / "pw.yaml"
    sweep.write_text(PIECEWISE_SWEEP)
    out = tmp_path / "res"
    for _ in range(2):
        res = cli(
            "perf", "--sweep", sweep, "--device", "cpu", "--only", "piecewise_naive", "--out", out
        )
        assert res.exit_code == 0, res.output
    drawn = []
    real = plot._perf_plot
    monkeypatch.setattr(
        plot, "_perf_plot", lambda g, x, series, title, path: drawn.append((g, x, series, title)) or real(g, x, series, title, path)
    )  # fmt: skip
    runs = sorted(pd.read_parquet(out).run_id.unique())
    res = cli("plot", out, "--out", tmp_path / "png", "--run", runs[0])
    assert res.exit_code == 0, res.output
    assert len(drawn) == 2, [t for *_, t in drawn]  # one figure per threshold
    for g, x, series, title in drawn:
        assert (
            g.dist_threshold.nunique() == 1
            and f"dist_threshold {g.dist_threshold.iloc[0]}" in title
        )
        for _, rows in series:
            for _, line in rows.groupby("backend"):
                assert line[x].is_unique, title  # never two points at one x
    res = cli("compare", runs[0], runs[1], "--results", out, "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["cases"]) == 4  # 2 lengths x 2 thresholds, one backend


def test_a_threshold_that_grows_with_the_length_stays_one_line(cli, tmp_path, monkeypatch):
    """w = S/2 along a seqlen sweep co-varies with x: one line, the title says so."""
    from attnbench.views import plot

    sweep = tmp_path / "pw.yaml"
    sweep.write_text(PIECEWISE_SWEEP.replace("dist_threshold: [8, 16]", "dist_threshold_frac: 0.5"))
    out = tmp_path / "res"
    res = cli(
        "perf", "--sweep", sweep, "--device", "cpu", "--only", "piecewise_naive", "--out", out
    )
    assert res.exit_code == 0, res.output
    drawn = []
    monkeypatch.setattr(plot, "_perf_plot", lambda g, x, series, title, path: drawn.append(title))
    assert cli("plot", out, "--out", tmp_path / "png").exit_code == 0
    assert len(drawn) == 1 and "dist_threshold 16-32 along x" in drawn[0], drawn


def test_roofline_draws_both_measured_roofs(tmp_path, monkeypatch):
    """Rows of two problems by FLOP/byte under the run's matmul and bandwidth roofs."""
    from attnbench.views import plot_roofline

    drawn = {}
    real = plot_roofline.plt.Axes.plot

    def spy(ax, *args, **kw):
        drawn.setdefault("roof", []).append((args, kw))
        return real(ax, *args, **kw)

    monkeypatch.setattr(plot_roofline.plt.Axes, "plot", spy)
    base = dict(kind="perf", status="ok", dtype="bf16", matmul_tflops=800.0, bw_gbps=4000.0,
                run_id="r", device="cuda", gpu_name="H200", timestamp=pd.Timestamp.now())  # fmt: skip
    df = pd.DataFrame([
        {**base, "backend": "fa", "problem": "attention", "flops": 1e12, "bytes": 1e9, "tflops": 600.0},
        {**base, "backend": "dec", "problem": "decode", "flops": 1e9, "bytes": 1e9, "tflops": 3.5},
    ])  # fmt: skip
    (path,) = plot_roofline.roofline_plot(df, tmp_path)
    assert path.name == "roofline.png" and path.stat().st_size > 0
    (args, kw), = drawn["roof"]  # fmt: skip
    x, y = args[0], args[1]
    assert y.max() == 800.0 and abs(y[0] - 4000.0 * x[0] / 1e3) < 1e-9  # flat roof, then the slope
    assert "4000 GB/s" in kw["label"] and "800 TFLOP/s" in kw["label"]
