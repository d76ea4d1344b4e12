"""The ``repro`` column and ``attnbench repro``: every single-device row carries the command that
runs its case and backend (and mode) again, and that command runs that row's case alone."""

import shlex

import pandas as pd
import pytest

SWEEP = """
name: repro_tiny
modes: [fwd, fwd_bwd]
warmup_ms: 1
rep_ms: 2
cases:
  - {batch: [1, 2], heads_q: 2, seqlen: 16, head_dim: 16, dtype: fp32, causal: [false, true]}
  - {batch: 1, heads_q: 2, seqlen: 24, head_dim: 16, dtype: fp32}
"""

# cases the expressible fields alone do not tell apart: a softmax_scale of None (not writable)
# next to 0.5, and two varlen cases that differ only in their lengths (tuples: not writable)
AWKWARD = """
name: repro_awkward
modes: [fwd]
warmup_ms: 1
rep_ms: 2
cases:
  - {batch: 1, heads_q: 2, seqlen: 16, head_dim: 16, dtype: fp32}
  - {batch: 1, heads_q: 2, seqlen: 16, head_dim: 16, dtype: fp32, softmax_scale: 0.5}
  - {heads_q: 2, seqlens: [[3, 9], [5, 9]], head_dim: 16, dtype: fp32}
"""


def _rows(out) -> pd.DataFrame:
    return pd.read_parquet(out)


def _one_run(cli, *args, out):
    r = cli(*args, "--out", out)
    assert r.exit_code == 0, r.output
    df = _rows(out)
    assert df.run_id.nunique() == 1
    return df


def _rerun(cli, monkeypatch, command: str, out):
    """Run a repro command in-process: leading ``VAR=value`` words as the environment, the
    ``attnbench`` word dropped, ``--out`` added."""
    words = shlex.split(command)
    while "=" in words[0] and words[0] != "attnbench":
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    assert words[0] == "attnbench"
    r = cli(*words[1:], "--out", out)
    return r, (_rows(out) if out.exists() and any(out.glob("*.parquet")) else None)


def _key(df) -> set:
    return set(zip(df.case_id, df.backend, df["mode"]))


@pytest.fixture(scope="module")
def perf_run(tmp_path_factory):
    """One perf run of 5 cases x (naive, sdpa_math) x (fwd, fwd_bwd), shared by the module."""
    from typer.testing import CliRunner

    from attnbench.cli import app

    runner = CliRunner()
    tmp = tmp_path_factory.mktemp("perf_run")
    sweep = tmp / "sweep.yaml"
    sweep.write_text(SWEEP)
    df = _one_run(
        lambda *a: runner.invoke(app, [str(x) for x in a]),
        "perf", "--sweep", sweep, "--only", "naive,sdpa_math", "--device", "cpu",
        out=tmp / "first",
    )  # fmt: skip
    return sweep, df, tmp / "first"


def test_repro_command_reruns_exactly_its_row(cli, tmp_path, monkeypatch, perf_run):
    sweep, df, _ = perf_run
    assert len(_key(df)) == 5 * 2 * 2 and df.repro.notna().all()
    words = shlex.split(df.iloc[0].repro)
    at = words.index("attnbench")
    assert words[at + 1 : at + 4] == ["perf", "--sweep", str(sweep.resolve())]
    assert words[words.index("--device") + 1] == "cpu"
    # one command per (case, backend, mode): distinct rows, distinct commands
    assert df.groupby(["case_id", "backend", "mode"]).repro.nunique().eq(1).all()
    assert df.repro.nunique() == len(_key(df))
    picks = [
        df[(df.backend == "naive") & (df["mode"] == "fwd")].iloc[0],
        df[(df.backend == "sdpa_math") & (df["mode"] == "fwd_bwd")].iloc[-1],
        df[(df.backend == "sdpa_math") & (df.causal) & (df.batch == 2)].iloc[0],
    ]
    for i, row in enumerate(picks):
        r, again = _rerun(cli, monkeypatch, row.repro, tmp_path / f"again{i}")
        assert r.exit_code == 0, r.output
        assert _key(again) == {(row.case_id, row.backend, row["mode"])}
        assert (again.repro == row.repro).all()  # the rerun's row names the same command


def test_repro_prints_the_commands_of_a_run(cli, perf_run):
    _, df, first = perf_run
    run_id = df.run_id.iloc[0]
    r = cli("repro", run_id, "--results", first)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == list(dict.fromkeys(df.repro))
    # a prefix of the id, a filter, a parquet file
    row = df[(df.backend == "sdpa_math") & (df["mode"] == "fwd")].iloc[0]
    r = cli(
        "repro", run_id[:-3], "--results", first, "--backend", "sdpa_math",
        "--case", row.case_id, "--mode", "fwd",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [row.repro]
    (file,) = first.glob("*.parquet")
    r = cli("repro", file, "--backend", "naive")
    assert r.output.splitlines() == list(dict.fromkeys(df[df.backend == "naive"].repro))
    # nothing matches: one line, exit 2
    r = cli("repro", run_id, "--results", first, "--case", "B9-nope")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "no row" in r.output
    r = cli("repro", "20990101-no-such-run", "--results", first)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_shipped_config_repro_names_it(cli, tmp_path, monkeypatch):
    df = _one_run(
        cli, "accuracy", "--suite", "basic", "--only", "naive", "--device", "cpu",
        "--where", "head_dim=32,dtype=fp32,causal=true", out=tmp_path / "first",
    )  # fmt: skip
    (cmd,) = set(df.repro)
    words = shlex.split(cmd)
    at = words.index("attnbench")
    assert words[at + 1 : at + 4] == ["accuracy", "--suite", "basic"]
    assert "/" not in cmd and "--modes" not in words
    r, again = _rerun(cli, monkeypatch, cmd, tmp_path / "again")
    assert r.exit_code == 0, r.output
    assert _key(again) == _key(df) and len(again) == len(df)


def test_settings_and_dtype_show_up(cli, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP)
    monkeypatch.setenv("ATTNBENCH_FLEX_DYNAMIC", "1")
    df = _one_run(
        cli, "perf", "--sweep", sweep, "--only", "naive", "--device", "cpu", "--modes", "fwd",
        "--where", "batch=1,seqlen=16,causal=false", "--dtype", "fp16", "--retune",
        out=tmp_path / "first",
    )  # fmt: skip
    (cmd,) = set(df.repro)
    words = shlex.split(cmd)
    assert "--retune" in words and "ATTNBENCH_FLEX_DYNAMIC=1" in words
    assert words.index("ATTNBENCH_FLEX_DYNAMIC=1") < words.index("attnbench")
    assert words[words.index("--dtype") + 1] == "fp16"
    monkeypatch.delenv("ATTNBENCH_FLEX_DYNAMIC")
    r, again = _rerun(cli, monkeypatch, cmd, tmp_path / "again")
    assert r.exit_code == 0, r.output
    assert _key(again) == _key(df)
    assert set(again.settings) == set(df.settings)  # {"flex_dynamic": true, "retune": true}


def test_cases_where_cannot_tell_apart_are_null_or_excluded(cli, tmp_path, monkeypatch):
    cfg = tmp_path / "awkward.yaml"
    cfg.write_text(AWKWARD)
    df = _one_run(cli, "perf", "--sweep", cfg, "--only", "naive", "--device", "cpu", out=tmp_path / "first")  # fmt: skip
    assert df.case_id.nunique() == 4
    varlen = df[df.varlen]
    assert len(varlen) == 2 and varlen.repro.isna().all()  # never a command that runs both
    r = cli("repro", df.run_id.iloc[0], "--results", tmp_path / "first", "--case", varlen.case_id.iloc[0])  # fmt: skip
    assert r.exit_code == 2 and "no repro command" in r.output
    # the default scale is no value --where can write: the case is told apart by != the other's
    plain = df[~df.varlen & ~df.case_id.str.contains("scale")].iloc[0]
    assert "softmax_scale!=0.5" in plain.repro
    scaled = df[df.case_id.str.contains("scale")].iloc[0]
    assert "softmax_scale=0.5" in scaled.repro
    for i, row in enumerate((plain, scaled)):
        r, again = _rerun(cli, monkeypatch, row.repro, tmp_path / f"again{i}")
        assert r.exit_code == 0, r.output
        assert _key(again) == {(row.case_id, row.backend, row["mode"])}
