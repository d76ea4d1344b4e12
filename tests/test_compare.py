"""``attnbench compare``: speedups, a planted regression, a flipped verdict, one-sided cases,
JSON, different environments, and ``--backend A --vs B`` within one run (real CPU runs)."""

import json

import pandas as pd
import pytest

SUITE = """
name: cmp
rep_ms: 5
cases:
  - {batch: 1, heads_q: 2, seqlen: [48, 96], head_dim: 16, dtype: fp32, causal: [false, true]}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real CPU perf run: (folder, run id, rows)."""
    from typer.testing import CliRunner

    from attnbench.cli import app

    d = tmp_path_factory.mktemp("cmp")
    (d / "s.yaml").write_text(SUITE)
    args = ["perf", "--sweep", str(d / "s.yaml"), "--device", "cpu", "--out", str(d / "r")]
    res = CliRunner().invoke(app, args + ["--only", "naive,sdpa_math", "--modes", "fwd,bwd"])
    assert res.exit_code == 0, res.output
    (f,) = (d / "r").glob("*.parquet")
    return d / "r", f.stem, pd.read_parquet(f)


def _variant(run, tmp_path, edit) -> str:
    """A copy of the run with ``edit(df)`` applied, as a parquet file."""
    _, _, df = run
    df = edit(df.copy())
    f = tmp_path / "new.parquet"
    df.to_parquet(f)
    return str(f)


def _slow(df, backend="sdpa_math", case="B1-H2-S96-D16-fp32-causal", mode="fwd", by=1.5):
    sel = (df.backend == backend) & (df.case_id == case) & (df["mode"] == mode)
    df.loc[sel, "latency_ms"] *= by
    df.loc[sel, "tflops"] /= by
    df.loc[sel, "kernel_config"] = "another kernel"
    return df


def test_same_run_is_all_ones_and_passes_the_gate(cli, run):
    folder, rid, df = run
    res = cli("compare", rid, rid, "--results", folder, "--threshold", "3%", "--json")
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert len(j["cases"]) == len(df[df.status == "ok"]) == 16
    assert all(c["speedup"] == pytest.approx(1.0) for c in j["cases"])
    assert j["geomean_speedup"] == pytest.approx({"naive": 1.0, "sdpa_math": 1.0})
    assert j["accuracy_changes"] == [] and j["base_only"] == j["new_only"] == []
    assert j["env_differences"] == {} and j["failed"] is False
    assert j["agreement"][-1] == {
        "seqlen_q": "all", "pairs": 16, "within_2%": 16, "within_5%": 16, "worst": 0.0
    }  # fmt: skip
    assert [a["seqlen_q"] for a in j["agreement"]] == [48, 96, "all"]


def test_planted_regression_exits_1(cli, run, tmp_path):
    folder, rid, _ = run
    new = _variant(run, tmp_path, _slow)
    res = cli("compare", rid, new, "--results", folder, "--threshold", "3%", "--json")
    assert res.exit_code == 1
    j = json.loads(res.stdout)
    (slow,) = [c for c in j["cases"] if c["speedup"] < 0.99]
    assert slow["speedup"] == pytest.approx(1 / 1.5) and slow["ms_ratio"] == pytest.approx(1.5)
    assert j["regressions"] == ["sdpa_math fwd B1-H2-S96-D16-fp32-causal"]
    assert j["config_changed"] == j["regressions"]  # what ran differs: said, and marked *
    assert j["agreement"][1]["within_5%"] == 7 and j["agreement"][0]["within_2%"] == 8
    assert j["geomean_speedup"]["sdpa_math"] == pytest.approx((1 / 1.5) ** (1 / 8))
    # within a looser threshold, and without one, the same change passes
    assert cli("compare", rid, new, "--results", folder, "--threshold", "40%").exit_code == 0
    res = cli("compare", rid, new, "--results", folder)
    assert res.exit_code == 0
    assert "1 cases ran another kernel config" in res.output and "0.667 *" in res.output


def test_flipped_verdict_is_shown_first_and_fails(cli, run, tmp_path):
    folder, rid, _ = run

    def wrong(df):
        sel = (df.backend == "naive") & (df["mode"] == "bwd") & (df.case_id.str.endswith("full"))
        sel &= df.seqlen_q == 48
        df.loc[sel, ["status", "accuracy_ok"]] = ["accuracy_failed", False]
        df.loc[sel, "message"] = "accuracy failed: dq max err 1 vs torch same-dtype 1e-6"
        return _slow(df, by=1.01)

    new = _variant(run, tmp_path, wrong)
    res = cli("compare", rid, new, "--results", folder, "--threshold", "3%")
    assert res.exit_code == 1
    first = res.output.splitlines()[1]
    assert first.startswith("accuracy PASS (ok) -> FAIL (accuracy_failed): naive bwd B1-H2-S48")
    assert "dq max err" in first
    assert "0 cases slower by more than 3.0%, 1 lost their accuracy verdict" in res.output


def test_one_sided_cases_and_other_environment(cli, run, tmp_path):
    folder, rid, _ = run

    def edit(df):
        df = df[~((df.backend == "naive") & (df.seqlen_q == 96))].copy()
        df["gpu_name"] = "NVIDIA H200"
        return df

    new = _variant(run, tmp_path, edit)
    res = cli("compare", rid, new, "--results", folder, "--json")
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert len(j["base_only"]) == 4 and all("naive" in c and "S96" in c for c in j["base_only"])
    assert j["new_only"] == [] and len(j["cases"]) == 12
    assert j["env_differences"]["gpu_name"]["new"] == ["NVIDIA H200"]
    text = cli("compare", rid, new, "--results", folder).output
    assert "different gpu_name" in text.splitlines()[1] and "only in BASE" in text


def test_backend_vs_backend_within_one_run_and_plot(cli, run, tmp_path):
    folder, rid, df = run
    png = tmp_path / "speedup.png"
    res = cli(
        "compare", rid, "--backend", "sdpa_math", "--vs", "naive", "--results", folder,
        "--json", "--plot", png,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert {c["backend"] for c in j["cases"]} == {"sdpa_math vs naive"} and len(j["cases"]) == 8
    assert j["config_changed"] == []  # two backends run two kernels: not news
    ok = df[df.status == "ok"].set_index(["backend", "mode", "case_id"]).tflops
    c = j["cases"][0]
    want = ok["sdpa_math", c["mode"], c["case_id"]] / ok["naive", c["mode"], c["case_id"]]
    assert c["speedup"] == pytest.approx(want)
    assert png.stat().st_size > 5_000


@pytest.mark.parametrize(
    "args, msg",
    [
        (["nope-run", "nope2"], "no such file, folder or run id"),
        (["RID", "RID", "--threshold", "fast"], "expected a percentage"),
        (["RID", "--backend", "naive"], "--backend and --vs go together"),
        (["RID", "--backend", "naive", "--vs", "flash9"], "backend 'flash9' not in"),
        (["RID"], "compare needs BASE and NEW"),
    ],
    ids=["unknown-run", "bad-threshold", "backend-without-vs", "unknown-backend", "one-run"],
)
def test_bad_input_is_one_line_and_exit_2(cli, run, args, msg):
    folder, rid, _ = run
    res = cli("compare", *[rid if a == "RID" else a for a in args], "--results", folder)
    assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output


def test_folder_with_an_older_run_keeps_the_new_columns(run, tmp_path):
    from attnbench.results import load_results

    _, _, df = run
    old = df.drop(columns=["kernel_config", "repeats", "matmul_tflops"])
    old.to_parquet(tmp_path / "0-old.parquet")  # sorts first: its columns used to win
    df.assign(kernel_config="x").to_parquet(tmp_path / "1-new.parquet")
    both = load_results(tmp_path)
    assert len(both) == 2 * len(df)
    assert both.kernel_config.isna().sum() == len(df) and (both.kernel_config == "x").sum() == len(
        df
    )
    assert both.matmul_tflops.isna().all() and "repeat_spread" in both
