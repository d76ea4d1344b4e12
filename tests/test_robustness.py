"""Bad flags, bad files and runs that measure nothing, tried the way a user would (the CLI on
CPU): each ends in one line and the documented exit code, never a traceback or a green run."""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest

TINY = """
name: tiny
warmup_ms: 1
rep_ms: 5
modes: [fwd]
cases:
  - {batch: 1, heads_q: 2, seqlen: 32, head_dim: 16, dtype: fp32}
"""


@pytest.fixture
def tiny(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY)
    return f


def one_line(res) -> str:
    """The run's output, asserted to hold no traceback."""
    assert (
        "Traceback" not in res.output
        and res.exception is None
        or isinstance(res.exception, SystemExit)
    ), res.output
    return " ".join(res.output.split())


# ---- item 2: a run that measures nothing never exits 0 ------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--only", "sdpa_cudnn"], "nothing to run: no selected backend supports"),
        (["--only", "naive", "--skip", "naive"], "leave no backend to run"),
    ],
    ids=["all-unsupported", "only-minus-skip"],
)
def test_run_with_nothing_to_measure_exits_nonzero(cli, tiny, tmp_path, args, expected):
    out = tmp_path / "res"
    for cmd, flag in (("perf", "--sweep"), ("accuracy", "--suite")):
        res = cli(cmd, flag, tiny, "--device", "cpu", "--out", out, *args)
        assert res.exit_code == 2 and expected in one_line(res)
        assert ".parquet" not in res.output  # never a path that was not written
    assert not list(out.glob("*.parquet")) if out.exists() else True


def test_empty_cases_is_a_config_error(cli, tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("name: e\ncases: []\n")
    res = cli("perf", "--sweep", f, "--device", "cpu", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "cases: List should have at least 1 item" in one_line(res)


def test_run_whose_every_case_errors_names_no_unwritten_file(cli, tiny, tmp_path, tmp_backend):
    from attnbench.backends.base import Backend, Capabilities

    class Broken(Backend):
        name = "test_broken"
        caps = Capabilities(devices={"cpu"})

        def forward(self, p, case):
            raise RuntimeError("kaputt")

    tmp_backend(Broken())
    out = tmp_path / "res"
    res = cli("perf", "--sweep", tiny, "--device", "cpu", "--out", out, "--only", "test_broken")
    assert res.exit_code == 1
    (path,) = out.glob("*.parquet")
    assert str(path.name) in res.output and pd.read_parquet(path).status.eq("error").all()


# ---- item 3: kind, empty and repeated lists ----------------------------------------------------
def test_config_of_the_other_kind_is_refused(cli, tmp_path):
    res = cli("accuracy", "--suite", "seqlen", "--device", "cpu", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "kind: perf, not accuracy" in one_line(res)
    assert "attnbench perf --sweep" in one_line(res)
    res = cli("perf", "--sweep", "basic", "--device", "cpu", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "kind: accuracy, not perf" in one_line(res)


@pytest.mark.parametrize("flag", ["--only", "--skip", "--dtype", "--modes"])
def test_empty_list_flags_are_refused(cli, tiny, tmp_path, flag):
    res = cli("perf", "--sweep", tiny, "--device", "cpu", "--out", tmp_path / "r", flag, " , ")
    assert res.exit_code == 2 and f"{flag} given an empty list" in one_line(res)


def test_repeated_backend_runs_once(cli, tiny, tmp_path):
    out = tmp_path / "r"
    res = cli("perf", "--sweep", tiny, "--device", "cpu", "--out", out, "--only", "naive,naive")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == 1 and df.backend.tolist() == ["naive"]


# ---- item 4: nonsense in configs ---------------------------------------------------------------
CASE = "{batch: 1, heads_q: 2, seqlen: 32, head_dim: 16, dtype: fp32%s}"
NONSENSE = {
    "duplicate-key": ("name: x\nname: y\ncases: [" + CASE % "" + "]\n", "key 'name' given twice"),
    "duplicate-key-in-case": (
        "name: x\ncases:\n  - {batch: 1, batch: 2, heads_q: 2, seqlen: 32, head_dim: 16}\n",
        ":3: invalid YAML: key 'batch' given twice",
    ),
    "seqlen-and-seqlen_q": (
        "name: x\ncases: [" + CASE % ", seqlen_q: 16" + "]\n",
        "cases.0: give seqlen, or seqlen_q and seqlen_k, or seqlens; not two",
    ),
    "window": (
        "name: x\ncases: [" + CASE % ", window: [-5, -7]" + "]\n",
        "window sizes must be >= 0, or -1 for unbounded (got [-5, -7])",
    ),
    "negative-scale": (
        "name: x\ncases: [" + CASE % ", softmax_scale: -0.5" + "]\n",
        "cases.0: B1-H2-S32-D16-fp32-full-scale-0.5: softmax_scale must be a finite number > 0",
    ),
    "nan-scale": (
        "name: x\ncases: [" + CASE % ", softmax_scale: .nan" + "]\n",
        "softmax_scale must be a finite number > 0",
    ),
    "negative-softcap": (
        "name: x\ncases: [" + CASE % ", softcap: -1.0" + "]\n",
        "softcap must be a finite number >= 0",
    ),
    "negative-warmup": (
        "name: x\nwarmup_ms: -5\ncases: [" + CASE % "" + "]\n",
        "warmup_ms: Input should be greater than or equal to 0 (got -5)",
    ),
    "empty-seqlens": (
        "name: x\ncases:\n  - {heads_q: 2, seqlens: [[]], head_dim: 16}\n",
        "cases.0: seqlens: every entry needs at least one sequence length",
    ),
}


@pytest.mark.parametrize("name", NONSENSE)
def test_config_nonsense_exits_2_with_key_path(cli, tmp_path, name):
    text, expected = NONSENSE[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    res = cli("accuracy", "--suite", f, "--device", "cpu", "--out", tmp_path / "r")
    assert res.exit_code == 2, res.output
    assert expected in one_line(res) and str(f) in one_line(res)


# ---- item 5: --out that cannot be written --------------------------------------------------------
def test_out_is_a_file_or_inside_a_file(cli, tiny, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    for out, msg in ((f, "is a file, not a folder"), (f / "sub", "not a writable folder")):
        res = cli("perf", "--sweep", tiny, "--device", "cpu", "--out", out, "--only", "naive")
        assert res.exit_code == 2 and msg in one_line(res)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_read_only(cli, tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = cli("perf", "--sweep", tiny, "--device", "cpu", "--out", ro, "--only", "naive")
    finally:
        ro.chmod(0o700)
    assert res.exit_code == 2 and "not a writable folder" in one_line(res)


def test_disk_full_mid_run_keeps_written_rows(cli, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    f = tmp_path / "two.yaml"
    f.write_text(TINY.replace("seqlen: 32", "seqlen: [32, 48]"))
    real, calls = pq.write_table, []

    def fills_up(table, where, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", fills_up)
    out = tmp_path / "r"
    res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", "naive")
    text = one_line(res)
    assert res.exit_code == 1 and "No space left on device" in text and "1 rows kept in" in text
    (path,) = out.glob("*.parquet")
    assert len(pd.read_parquet(path)) == 1 and not list(out.glob(".*"))


# ---- item 6: --suite that is not a YAML file ----------------------------------------------------
def test_suite_folder_or_binary(cli, tmp_path):
    res = cli("accuracy", "--suite", tmp_path, "--device", "cpu")
    assert res.exit_code == 2 and "is a folder, not a YAML file" in one_line(res)
    b = tmp_path / "blob.yaml"
    b.write_bytes(bytes(range(256)))
    res = cli("accuracy", "--suite", b, "--device", "cpu")
    assert res.exit_code == 2 and "not a text (UTF-8) YAML file" in one_line(res)


# ---- item 7: a bad parquet file next to good ones ------------------------------------------------
def test_bad_parquet_files_are_skipped_with_a_warning(cli, tmp_path):
    from attnbench.results import load_results

    f = tmp_path / "two.yaml"
    f.write_text(TINY.replace("seqlen: 32", "seqlen: [32, 64]"))
    out = tmp_path / "res"
    res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", "sdpa_math")
    assert res.exit_code == 0, res.output
    (out / "empty.parquet").write_bytes(b"")
    (out / "junk.parquet").write_bytes(b"PAR1 not really")
    warnings = []
    df = load_results(out, warn=warnings.append)
    assert len(warnings) == 2 and all("skipping" in w for w in warnings)
    assert set(df.backend) == {"sdpa_math"} and (df.status == "ok").all()
    res = cli("plot", out)
    assert res.exit_code == 0, res.output
    assert "warning: skipping" in res.output and "empty.parquet" in res.output
    assert list((out / "_plots").glob("*/perf_*.png"))


def test_old_results_without_new_columns_still_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attnbench.results import COLUMNS, load_results

    pq.write_table(
        pa.table({"run_id": ["old"], "backend": ["naive"], "status": ["ok"]}),
        tmp_path / "a.parquet",
    )
    df = load_results(tmp_path)
    assert list(df.columns) == COLUMNS and df.tflops.isna().all()


# ---- item 1: plots never merge runs or shapes into one line --------------------------------------
def test_plot_keeps_runs_and_shapes_apart(cli, tmp_path, monkeypatch):
    import attnbench.views.plot as plot

    out = tmp_path / "res"
    for tokens in (256, 512):  # two sweeps, other batch sizes, same folder
        f = tmp_path / f"t{tokens}.yaml"
        f.write_text(
            TINY.replace(
                "{batch: 1, heads_q: 2, seqlen: 32,",
                f"{{tokens: {tokens}, heads_q: 2, seqlen: [64, 128],",
            )
        )
        res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", "naive")
        assert res.exit_code == 0, res.output
    drawn = []
    monkeypatch.setattr(
        plot, "_perf_plot", lambda g, x, series, title, path: drawn.append((series, title, path))
    )
    res = cli("plot", out)
    assert res.exit_code == 0, res.output
    runs = sorted({path.parent.name for _, _, path in drawn})
    assert len(drawn) == 2 and len(runs) == 2  # one figure per run
    for series, title, path in drawn:
        assert path.parent.name in title and "cpu" in title
        for _, rows in series:  # a line: one backend, one x per point
            assert not rows.duplicated(["backend", "seqlen_q"]).any()
        assert "tokens per batch" in title and "x: sequence length" in title
    assert {"tokens per batch 256", "tokens per batch 512"} <= {
        t.split("; ")[1].split(" (")[0] for _, t, _ in drawn
    }
    drawn.clear()
    res = cli("plot", out, "--latest")
    # the newest run by its rows' timestamps (two runs in one second: the ids alone can't say)
    newest = pd.read_parquet(out).groupby("run_id").timestamp.max().idxmax()
    assert res.exit_code == 0 and len(drawn) == 1 and drawn[0][2].parent.name == newest
    drawn.clear()
    res = cli("plot", out, "--run", runs[0][:15] + "x")
    assert res.exit_code == 2 and "no run match; runs here:" in one_line(res)


def test_plot_merge_draws_a_sweep_run_in_slices_as_one(cli, tmp_path, monkeypatch):
    import attnbench.views.plot as plot

    out = tmp_path / "res"
    f = tmp_path / "sweep.yaml"
    f.write_text(TINY.replace("seqlen: 32,", "seqlen: [32, 64, 128],"))
    for where in ("seqlen=32|64", "seqlen=128", "seqlen=64"):  # 64 twice: the newest counts
        res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", "naive",
                  "--where", where)  # fmt: skip
        assert res.exit_code == 0, res.output
    drawn = []
    monkeypatch.setattr(
        plot, "_perf_plot", lambda g, x, series, title, path: drawn.append((series, title, path))
    )
    res = cli("plot", out, "--merge")
    assert res.exit_code == 0, res.output
    assert "1 rows measured again in a later run; the newest kept" in res.output
    ((series, title, path),) = drawn  # one figure, not one per run
    assert path.parent.name == "merged" and "3 runs merged (" in title
    ((_, rows),) = series
    assert sorted(rows.seqlen_q) == [32, 64, 128]  # one point per length
    newest = pd.read_parquet(out).groupby("run_id").timestamp.max().idxmax()
    assert rows.set_index("seqlen_q").run_id[64] == newest
    assert "other attnbench commits" not in res.output  # one checkout
    # another commit: merged, and said; another machine or software: never merged
    drawn.clear()
    one = sorted(out.glob("*.parquet"))[0]
    df = pd.read_parquet(one)
    df.assign(run_id=df.run_id + "c", git_sha="0123abc").to_parquet(out / "commit.parquet")
    res = cli("plot", out, "--merge")
    assert res.exit_code == 0 and "the runs come from other attnbench commits (" in res.output
    assert "0123abc" in res.output
    (out / "commit.parquet").unlink()
    drawn.clear()
    df.assign(run_id=df.run_id + "b", torch_version="0.0.0").to_parquet(out / "other.parquet")
    res = cli("plot", out, "--merge")
    assert res.exit_code == 2 and not drawn
    assert "--merge: these runs ran on other machines or software:" in one_line(res)
    assert "0.0.0" in one_line(res)


def test_plot_gives_a_backend_one_color_in_every_figure(cli, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    out = tmp_path / "res"
    f = tmp_path / "sweep.yaml"
    f.write_text(TINY.replace("seqlen: 32, head_dim: 16,", "seqlen: [32, 64], head_dim: [16, 32],"))
    # sdpa_math alone at head dim 32: its figure would start the color cycle with it
    for only, where in (("naive,sdpa_math", "head_dim=16"), ("sdpa_math", "head_dim=32")):
        res = cli("perf", "--sweep", f, "--device", "cpu", "--out", out, "--only", only,
                  "--where", where)  # fmt: skip
        assert res.exit_code == 0, res.output
    drawn, real = [], Axes.plot

    def spy(self, *args, **kwargs):
        lines = real(self, *args, **kwargs)
        drawn.append((kwargs.get("label"), lines[0].get_color()))
        return lines

    monkeypatch.setattr(Axes, "plot", spy)
    res = cli("plot", out, "--merge")
    assert res.exit_code == 0, res.output
    colors = {}
    for label, color in drawn:
        colors.setdefault(label, set()).add(color)
    assert colors.keys() == {"naive", "sdpa_math"}
    assert all(len(c) == 1 for c in colors.values()), colors  # one color per backend
    assert colors["naive"] != colors["sdpa_math"]


def test_plot_ticks_read_as_sizes():
    from attnbench.views.plot import size_label

    assert [size_label(v) for v in (64, 512, 1024, 2048, 16384, 1000)] == [
        "64",
        "512",
        "1k",
        "2k",
        "16k",
        "1000",
    ]


def test_accuracy_plots_use_the_table_ratio(cli, tiny, tmp_path):
    import pandas as pd

    from attnbench.views.plot import rule_ratio

    acc = pd.DataFrame(
        {
            "tensor": ["out", "dq", "dv", "lse"],
            "max_abs_err": [2.0, 3.0, float("nan"), 0.0],
            "baseline_max_abs_err": [1.0, 2.0, 1.0, 0.0],
        }
    )
    assert rule_ratio(acc).tolist() == [1.0, 0.5, float("inf"), 0.0]
    out = tmp_path / "res"
    res = cli(
        "accuracy",
        "--suite",
        tiny,
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "naive",
    )
    assert res.exit_code == 0, res.output
    res = cli("plot", out)
    assert res.exit_code == 0 and "accuracy_cases.png" in res.output


# ---- items 8, 10-15: output a person can read ---------------------------------------------------
def test_env_device_checked_and_json_is_a_plain_flag(cli):
    res = cli("env", "--device", "tpu")
    assert res.exit_code == 2 and "--device must be cuda or cpu, got 'tpu'" in one_line(res)
    res = cli("perf", "--help")
    (line,) = [x for x in res.output.splitlines() if "--json" in x]
    assert res.exit_code == 0 and "<bool>" not in line


def test_env_names_the_cpu_model(cli):
    from attnbench.results.env import cpu_model

    res = cli("env", "--device", "cpu")
    line = next(x for x in res.output.splitlines() if x.startswith("cpu_name"))
    assert cpu_model() in line
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if "model name" in info:
        assert cpu_model() in info and cpu_model() != "x86_64"


def test_perf_output_without_a_terminal(cli, tiny, tmp_path, tmp_backend):
    """One line per finished case, times in ms and a readable throughput (GFLOP/s on a CPU),
    the backends that do not run here in one line, and the failed cases by name."""
    from attnbench.backends.base import Backend, Capabilities
    from attnbench.problems.attention.reference import attention_ref, case_kwargs

    class Wrong(Backend):
        name = "test_wrong"
        caps = Capabilities(devices={"cpu"}, lse=True)

        def forward(self, p, case):
            q, k, v = p.leaves
            return attention_ref(q, k * 1.5, v, upcast=False, **case_kwargs(case))

    tmp_backend(Wrong())
    f = tmp_path / "two.yaml"
    f.write_text(TINY.replace("seqlen: 32", "seqlen: [32, 48]"))
    only = "naive,test_wrong,sdpa_cudnn,sdpa_efficient"
    res = cli("perf", "--sweep", f, "--device", "cpu", "--out", tmp_path / "r", "--only", only)
    text = res.output
    assert res.exit_code == 1
    assert "B1-H2-S32-D16-fp32-full · naive: fwd " in text and " ms " in text
    assert "GFLOP/s" in text
    (line,) = [x for x in text.splitlines() if x.startswith("not run on cpu")]
    assert "sdpa_cudnn" in line and "sdpa_efficient" in line
    assert not [x for x in text.splitlines() if "does not run on cpu" in x]
    tail = text[text.index("2 cases failed:") :].splitlines()
    assert "test_wrong  B1-H2-S32-D16-fp32-full  fwd  accuracy failed: lse max err" in tail[1]
    assert "peak_mem_mb: measured on CUDA only" in text


def test_accuracy_failures_name_backend_case_and_tensor(cli, tiny, tmp_path, tmp_backend):
    from attnbench.backends.base import Backend, Capabilities
    from attnbench.problems.attention.reference import attention_ref, case_kwargs

    class WrongLse(Backend):
        name = "test_wrong_lse"
        caps = Capabilities(devices={"cpu"}, lse=True)

        def forward(self, p, case):
            out, lse = attention_ref(*p.leaves, upcast=False, **case_kwargs(case))
            return out, lse + 1

    tmp_backend(WrongLse())
    out = tmp_path / "r"
    res = cli(
        "accuracy",
        "--suite",
        tiny,
        "--device",
        "cpu",
        "--out",
        out,
        "--only",
        "naive,test_wrong_lse",
    )
    assert res.exit_code == 1
    assert "1 cases failed:" in res.output
    assert "test_wrong_lse  B1-H2-S32-D16-fp32-full  wrong lse" in res.output


def test_triton_fa2_says_how_to_run_on_cpu(monkeypatch):
    from attnbench.backends.base import REGISTRY
    from attnbench.problems.attention import AttentionCase as Case

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = REGISTRY["triton_fa2"].why_unsupported(Case(1, 2, 2, 32, 32, 16, "fp32"), "cpu")
    assert "set TRITON_INTERPRET=1" in why


def test_list_never_truncates_backend_names(monkeypatch, capsys):
    from rich.console import Console

    import attnbench.cli as cli_mod
    from attnbench.backends.base import REGISTRY

    monkeypatch.setattr(cli_mod, "make_console", lambda: Console(width=80, force_terminal=False))
    cli_mod.list_backends(device="cpu")
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out, name


def test_perf_numbers_keep_three_significant_figures():
    from attnbench.views.tables import perf_cell, throughput

    assert throughput(0.002) == "2.00 GFLOP/s" and throughput(0.000913) == "0.913 GFLOP/s"
    assert throughput(372.4) == "372 TFLOP/s" and throughput(1500.0) == "1,500 TFLOP/s"
    assert perf_cell({"latency_ms": 64.0, "tflops": 0.0105}) == "64.0 ms 10.5 GFLOP/s"


def test_failed_cases_count_cases_not_rows():
    from attnbench.views.tables import failed_cases

    def row(**kw):
        base = dict(kind="accuracy", backend="b", case_id="C1", mode="fwd_bwd", status="ok")
        return {**base, **kw}

    rows = [
        row(status="accuracy_failed", tensor="dk"),
        row(status="accuracy_failed", tensor="dv"),
        row(tensor="out"),
        row(case_id="C2", status="error", message="RuntimeError: boom"),
        row(kind="dist_accuracy", strategy="ring", rank=0, status="accuracy_failed", tensor="dq"),
        row(kind="dist_accuracy", strategy="ring", rank=1, status="accuracy_failed", tensor="dq"),
    ]
    lines = failed_cases(rows)
    assert lines[:4] == [
        "3 cases failed:",
        "  b  C1  wrong dk, dv",
        "  b  C2  error: RuntimeError: boom",
        "  ring · b  C1  wrong dq",
    ]
    # then in words: accuracy failures are findings about the backend, errors failures to run
    assert "a finding about that backend" in lines[4] and lines[4].startswith("exit 1: b ")
    assert lines[5] == "exit 1: b failed to run some cases (see above)"
    assert failed_cases([row()]) == []
