"""Speed against error: perf rows carry the same-case error of out (cos_sim, rel_l1, rmse, max and
mean abs error; ``tensor`` null), a lossy backend's quantization is timed apart (``quant_ms``,
:meth:`Backend.quant_fn`), ``attnbench plot --tradeoff`` draws TFLOP/s against rel L1 per case,
and the accuracy figures draw lossy rows by their lossy rule. CPU only."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from attnbench.backends.base import Backend, Capabilities, Prepared
from attnbench.problems.attention.reference import attention_ref, case_kwargs
from attnbench.results import COLUMNS
from attnbench.results.schema import METRIC
from attnbench.rule import LOSSY_DEFAULTS

QUANT = "test_quant_int8"
COARSE = "test_coarse_fp8"

SWEEP = """
name: tradeoff_test
modes: [fwd]
rep_ms: 2
warmup_ms: 1
cases:
  - {batch: 1, heads_q: 2, seqlen: 64, head_dim: 32, dtype: fp32, causal: [false, true]}
"""


def _round(x: torch.Tensor, levels: int) -> torch.Tensor:
    """x rounded to ``levels`` symmetric steps per side with one scale per tensor, dequantized."""
    x = x.detach().float()
    scale = x.abs().max().clamp(min=1e-12) / levels
    return torch.round(x / scale).clamp(-levels, levels) * scale


class QuantInt8(Backend):
    """prepare() quantizes q and k to int8 (per-tensor scales); forward is attention on them; the
    quantization is its quant_fn, timed apart."""

    name = QUANT
    description = "q, k quantized to int8 in prepare (test only)"
    caps = Capabilities(devices={"cpu"}, backward=False, lse=True, precision="int8")
    quant_calls = 0

    def prepare(self, inp, case):
        p = super().prepare(inp, case)
        q, k, _ = p.leaves
        p.args["qk"] = (_round(q, 127), _round(k, 127))
        return p

    def quant_fn(self, p: Prepared, case):
        q, k, _ = p.leaves

        def quantize():
            type(self).quant_calls += 1
            return _round(q, 127), _round(k, 127)

        return quantize

    def forward(self, p, case):
        q, k = p.args["qk"]
        v = p.leaves[2]
        out, lse = attention_ref(q, k, v.detach().float(), **case_kwargs(case))
        return out.to(v.dtype), lse.float()


class CoarseFp8(Backend):
    """Declares fp8, rounds q, k and v to 3 levels: far outside the lossy tolerance (fails)."""

    name = COARSE
    description = "q, k, v rounded to 3 levels (test only)"
    caps = Capabilities(devices={"cpu"}, backward=False, lse=True, precision="fp8")

    def forward(self, p, case):
        q, k, v = (_round(t, 3) for t in p.leaves)
        out, lse = attention_ref(q, k, v, **case_kwargs(case))
        return out.to(p.leaves[0].dtype), lse.float()


@pytest.fixture(scope="module")
def perf_run(tmp_path_factory):
    """One real perf run on the CPU through the command line: naive, sdpa_math and the two fake
    lossy backends on two cases (fwd)."""
    from typer.testing import CliRunner

    from attnbench.backends.base import REGISTRY, register
    from attnbench.cli import app

    tmp = tmp_path_factory.mktemp("tradeoff")
    sweep = tmp / "sweep.yaml"
    sweep.write_text(SWEEP)
    out = tmp / "res"
    register(QuantInt8)
    register(CoarseFp8)
    try:
        only = f"naive,sdpa_math,{QUANT},{COARSE}"
        args = ["perf", "--sweep", sweep, "--device", "cpu", "--only", only, "--out", out]
        res = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        REGISTRY.pop(QUANT, None)
        REGISTRY.pop(COARSE, None)
    return res, out, pd.read_parquet(out), tmp


# ---- perf rows: out's error and quant_ms --------------------------------------------------------
def test_perf_rows_carry_the_error_of_out(perf_run):
    res, _, rows, _ = perf_run
    assert res.exit_code == 1, res.output  # the coarse backend fails its check: a finding
    assert len(rows) == 2 * 4 and (rows.kind == "perf").all()
    assert rows.tensor.isna().all()  # a perf row is never an accuracy row
    for c in ("cos_sim", "rel_l1", "rmse", "max_abs_err", "mean_abs_err"):
        assert rows[c].notna().all(), c
    assert rows.baseline_max_abs_err.isna().all()
    by = rows.set_index(["backend", "case_id"])
    for case in rows.case_id.unique():
        exact = by.loc[("naive", case)]
        quant, coarse = by.loc[(QUANT, case)], by.loc[(COARSE, case)]
        assert exact.rel_l1 < 1e-5 and exact.cos_sim > 0.999999 and exact.status == "ok"
        assert exact.rel_l1 < quant.rel_l1 < LOSSY_DEFAULTS["int8"].rel_l1 < coarse.rel_l1
        assert quant.status == "ok" and quant.precision == "int8"
        assert coarse.status == "accuracy_failed" and coarse.precision == "fp8"
        assert 0 <= exact.mean_abs_err <= exact.max_abs_err and exact.rmse >= 0


def test_quant_ms_is_timed_apart_for_a_backend_that_quantizes(perf_run):
    _, _, rows, _ = perf_run
    assert "quant_ms" in COLUMNS
    names = [n for n, _ in METRIC]
    assert names.index("quant_ms") == names.index("plan_ms") + 1
    mine = rows[rows.backend == QUANT]
    assert mine.quant_ms.notna().all() and (mine.quant_ms > 0).all()
    assert (mine.quant_ms < mine.wall_s * 1e3).all()  # a median of its own reps, not the run
    assert rows[rows.backend != QUANT].quant_ms.isna().all()
    assert QuantInt8.quant_calls > 2  # warm-up and reps of the timer, not one call


def test_a_failing_quantization_is_the_rows_error(tmp_path, tmp_backend, cli):
    class BadQuant(QuantInt8):
        name = "test_bad_quant"

        def quant_fn(self, p, case):
            def boom():
                raise RuntimeError("quantize failed")

            return boom

    tmp_backend(BadQuant)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.replace("causal: [false, true]", "causal: false"))
    out = tmp_path / "r"
    res = cli("perf", "--sweep", sweep, "--device", "cpu", "--only", BadQuant.name, "--out", out)
    assert res.exit_code == 1
    (row,) = pd.read_parquet(out).to_dict("records")
    assert row["status"] == "error" and "quantize failed" in row["message"]
    assert row["accuracy_ok"] and row["rel_l1"] > 0  # the check ran: its error is kept


def test_out_error_columns_of_a_check():
    from attnbench.run.check import TensorError
    from attnbench.run.runner import out_error_columns

    lse = TensorError("lse", 9.0, 9.0, 1.0, 1.0, True, 0.5, 0.5, 0.5)
    out = TensorError("out", 0.1, 0.01, 1.0, 1.0, True, 0.99, 0.02, 0.03)
    cols = out_error_columns([lse, out])
    assert cols == dict(
        max_abs_err=0.1, mean_abs_err=0.01, cos_sim=0.99, rel_l1=0.02, rmse=0.03,
        tol_cos_sim=None, tol_rel_l1=None,
    )  # fmt: skip
    from attnbench.rule import LossyTolerance

    lossy = TensorError("out", 0.1, 0.01, 1.0, 1.0, True, 0.99, 0.02, 0.03, "int8",
                        LossyTolerance(0.98, 0.1))  # fmt: skip
    assert out_error_columns([lossy])["tol_rel_l1"] == 0.1  # its rule's limits ride along
    assert "tensor" not in cols and out_error_columns([lse]) == {}


# ---- plot --tradeoff ---------------------------------------------------------------------------
def test_plot_tradeoff_draws_one_figure_per_case(perf_run, cli, monkeypatch):
    from attnbench.views import plot_tradeoff

    _, out, rows, tmp = perf_run
    drawn = []
    real = plot_tradeoff._draw
    monkeypatch.setattr(plot_tradeoff, "_draw", lambda g, *a: drawn.append(g) or real(g, *a))
    res = cli("plot", out, "--out", tmp / "png", "--tradeoff")
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp / "png").rglob("tradeoff_*.png"))
    cases = sorted(rows.case_id.unique())
    assert [p.name for p in pngs] == [f"tradeoff_fwd_{c}.png" for c in cases], res.output
    assert all(p.stat().st_size > 0 and str(p) in res.output.replace("\n", "") for p in pngs)
    assert len(drawn) == len(cases)
    for g in drawn:
        assert g.case_id.nunique() == 1 and set(g.backend) == set(rows.backend)
        assert set(g.precision) == {"exact", "int8", "fp8"}
        assert (g[g.backend == COARSE].status == "accuracy_failed").all()
        lossy = g[g.precision != "exact"]
        assert dict(zip(lossy.precision, lossy.rel_tol)) == {
            p: LOSSY_DEFAULTS[p].rel_l1 for p in ("int8", "fp8")
        }
    # without the flag: no trade-off figures
    res = cli("plot", out, "--out", tmp / "plain")  # one length, no accuracy rows: nothing
    assert res.exit_code == 2 and not list((tmp / "plain").rglob("tradeoff_*.png"))


def test_tradeoff_of_rows_without_the_error_of_out_is_one_line(perf_run, cli, tmp_path):
    _, out, rows, _ = perf_run
    old = tmp_path / "old.parquet"  # a perf run written before perf rows carried out's error
    rows.assign(rel_l1=None, cos_sim=None, rmse=None).to_parquet(old)
    res = cli("plot", old, "--out", tmp_path / "png", "--tradeoff")
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --tradeoff:"), res.output
    assert "rel_l1" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "png").exists()  # nothing written

    acc = tmp_path / "acc.parquet"  # no perf rows at all
    rows.assign(kind="accuracy", tensor="out").to_parquet(acc)
    res = cli("plot", acc, "--out", tmp_path / "png2", "--tradeoff")
    assert res.exit_code == 2 and "no perf rows" in res.output and "Traceback" not in res.output

    broken = tmp_path / "broken.parquet"  # measured nothing
    rows.assign(status="error", tflops=None).to_parquet(broken)
    res = cli("plot", broken, "--out", tmp_path / "png3", "--tradeoff")
    assert res.exit_code == 2 and "no perf row was measured" in res.output


# ---- the figure's parts, on rows made up here -----------------------------------------------------
def _rows(**over):
    base = dict(kind="perf", status="ok", mode="fwd", problem="attention", case_id="c1",
                run_id="r1", device="cpu", cpu_name="x", gpu_name=None, message=None,
                timestamp=pd.Timestamp("2026-01-01", tz="UTC"))  # fmt: skip
    pts = [
        dict(backend="exact0", precision="exact", rel_l1=0.0, tflops=1.0),
        dict(backend="exact1", precision="exact", rel_l1=1e-6, tflops=2.0),
        dict(backend="int8", precision="int8", rel_l1=2e-3, tflops=4.0, tol_cos_sim=0.999,
             tol_rel_l1=0.001),
        dict(backend="fp8", precision="fp8", rel_l1=math.inf, tflops=8.0,
             status="accuracy_failed", message="accuracy failed: out ..."),
    ]  # fmt: skip
    return pd.DataFrame([{**base, **p, **over} for p in pts])


def test_tradeoff_figure_floor_ceiling_tolerances(tmp_path, monkeypatch):
    from attnbench.views import plot_tradeoff

    lines, points = [], []
    real_v, real_s = plot_tradeoff.plt.Axes.axvline, plot_tradeoff.plt.Axes.scatter

    def vline(ax, x=0, *a, **kw):
        lines.append((x, kw.get("ls")))
        return real_v(ax, x, *a, **kw)

    def scatter(ax, x, y, *a, **kw):
        points.append((x[0], y[0], kw.get("facecolors"), kw.get("edgecolors"), kw.get("marker")))
        return real_s(ax, x, y, *a, **kw)

    monkeypatch.setattr(plot_tradeoff.plt.Axes, "axvline", vline)
    monkeypatch.setattr(plot_tradeoff.plt.Axes, "scatter", scatter)
    (path,) = plot_tradeoff.tradeoff_plot(_rows(), tmp_path)
    assert path.name == "tradeoff_fwd_c1.png" and path.stat().st_size > 0
    # a decade below the least error, above the largest error or tolerance (fp8's default)
    floor, ceil = 1e-7, 10 * LOSSY_DEFAULTS["fp8"].rel_l1
    xs = {round(p[1]): p for p in points}
    assert xs[1][0] == pytest.approx(floor) and xs[8][0] == pytest.approx(ceil)
    assert xs[8][2] == "none" and xs[8][3] == "red"  # failed: hollow, red edge
    assert xs[4][2] != "none" and len({p[4] for p in points}) == 3  # exact, int8, fp8 markers
    dashed = [x for x, ls in lines if ls == "--"]
    # the int8 row carries its (overridden) rule: 0.001; the fp8 row none (an old row): the default
    assert sorted(dashed) == [0.001, LOSSY_DEFAULTS["fp8"].rel_l1]
    dotted = [x for x, ls in lines if ls == ":"]
    assert dotted == [pytest.approx(floor), pytest.approx(ceil)]  # 0 and inf, labelled


def test_tradeoff_modes_and_names(tmp_path):
    from attnbench.views.plot_tradeoff import tradeoff_plot

    both = pd.concat([_rows(), _rows(mode="bwd")])
    assert [p.name for p in tradeoff_plot(both, tmp_path)] == ["tradeoff_fwd_c1.png"]
    only_bwd = _rows(mode="bwd", problem="decode", case_id="a b/c")
    assert [p.name for p in tradeoff_plot(only_bwd, tmp_path)] == ["tradeoff_decode_bwd_a_b_c.png"]
    assert tradeoff_plot(_rows(rel_l1=None), tmp_path) == []


# ---- the accuracy figures: lossy rows by their own rule ------------------------------------------
def test_accuracy_figures_draw_lossy_rows_by_their_rule(tmp_path, monkeypatch):
    from attnbench.views import plot_accuracy

    base = dict(kind="accuracy", status="ok", accuracy_ok=True, case_id="c", run_id="r",
                device="cpu", cpu_name="x", gpu_name=None, message=None,
                timestamp=pd.Timestamp("2026-01-01", tz="UTC"))  # fmt: skip
    acc = pd.DataFrame([
        # exact: err / (2 x baseline) = 0.5
        {**base, "backend": "naive", "precision": "exact", "tensor": "out", "max_abs_err": 1e-6,
         "baseline_max_abs_err": 1e-6, "rel_l1": 1e-7, "cos_sim": 1.0},
        # lossy, passing: no message, the default tolerances; rL1 0.025 / 0.05 = 0.5,
        # (1 - 0.9998) / (1 - 0.999) = 0.2 -> 0.5, where the exact rule would say 5000
        {**base, "backend": "q8", "precision": "int8", "tensor": "out", "max_abs_err": 1e-2,
         "baseline_max_abs_err": 1e-6, "rel_l1": 0.025, "cos_sim": 0.9998},
        # lossy, failing its overridden rule (its tolerance columns): 0.002 / 0.001 = 2
        {**base, "backend": "q8", "precision": "int8", "tensor": "lse", "max_abs_err": 1e-3,
         "baseline_max_abs_err": 1e-6, "rel_l1": 0.002, "cos_sim": 0.99999, "accuracy_ok": False,
         "status": "accuracy_failed", "tol_cos_sim": 0.999, "tol_rel_l1": 0.001},
        {**base, "backend": "q8", "precision": "int8", "tensor": "dq", "max_abs_err": math.nan,
         "baseline_max_abs_err": 1e-6, "rel_l1": math.nan, "cos_sim": math.nan},
    ])  # fmt: skip
    r = plot_accuracy.accuracy_ratio(acc.drop(index=2))  # no tolerance columns: the defaults
    assert r.tolist() == [pytest.approx(0.5), pytest.approx(0.5), math.inf]  # NaN fails
    # a row with its rule's limits is drawn against them; the others against the defaults
    tol = plot_accuracy.lossy_tolerances(acc)
    assert tol.rel_tol.tolist()[1:] == [0.05, 0.001, 0.05] and math.isnan(tol.rel_tol[0])
    r = plot_accuracy.accuracy_ratio(acc)
    assert r.tolist()[:3] == [pytest.approx(0.5), pytest.approx(0.5), pytest.approx(2.0)]

    labels = []
    real = plot_accuracy.plt.Axes.set_xticks
    monkeypatch.setattr(
        plot_accuracy.plt.Axes,
        "set_xticks",
        lambda ax, ticks, lab=None, **kw: labels.append(list(lab or [])) or real(ax, ticks, lab, **kw),
    )  # fmt: skip
    files = plot_accuracy.accuracy_plot(acc, tmp_path)
    assert [f.name for f in files] == ["accuracy.png", "accuracy_cases.png"]
    assert labels and all(lab == ["naive", "q8 (lossy int8)"] for lab in labels)


def test_a_quantization_timed_apart_gets_its_end_to_end_point(tmp_path, monkeypatch):
    """A row with quant_ms gets a second, small hollow marker at its TFLOP/s with the
    quantization counted; rows without it (and NaN) get none."""
    from attnbench.views import plot_tradeoff

    points = []
    real = plot_tradeoff.plt.Axes.scatter

    def scatter(ax, x, y, *a, **kw):
        points.append((y[0], kw.get("s"), kw.get("facecolors")))
        return real(ax, x, y, *a, **kw)

    monkeypatch.setattr(plot_tradeoff.plt.Axes, "scatter", scatter)
    rows = _rows(latency_ms=1.0, quant_ms=math.nan)
    rows.loc[rows.backend == "int8", "quant_ms"] = 0.25  # 4 TFLOP/s over 1 ms -> 3.2 over 1.25
    (path,) = plot_tradeoff.tradeoff_plot(rows, tmp_path)
    small = [p for p in points if p[1] == 22]
    assert len(points) == 5 and len(small) == 1
    assert small[0][0] == pytest.approx(3.2) and small[0][2] == "none"
